// The emulator's test module (see emulator_test_support.hpp for what it tests, the sources
// its tests cite and the files it is made of): main() starts MPI, reads the device count,
// runs the Boost.Test suites under a watchdog and combines the ranks' results.

#define BOOST_TEST_MODULE emulator
#define BOOST_TEST_NO_MAIN
#include <cuda_runtime_api.h>
#include <mpi.h>

#include <boost/test/unit_test.hpp>
#include <cstdlib>

#include "emulator_test_support.hpp"

using namespace emutest;  // NOLINT(google-build-using-namespace): the helpers every test uses

int main(int argc, char** argv) {
  // Read by the emulator once, at its first call [emu]: set before any CUDA or NCCL call.
  setenv("PCX_EMU_LAUNCH_DELAY_US", kLaunchDelayUs, 0);
  unsetenv("PCX_EMU_FAULT");
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (cudaGetDeviceCount(&g_devices) != cudaSuccess) g_devices = 0;
  int rc = 0;
  {
    Watchdog watchdog;
    g_watchdog = &watchdog;
#ifdef BOOST_TEST_DYN_LINK
    rc = boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
#else
    rc = boost::unit_test::unit_test_main(&init_unit_test_suite, argc, argv);
#endif
    g_watchdog = nullptr;
  }
  // A rank that failed makes the job fail, whichever rank mpiexec reports.
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
