// The NCCL backend under mpiexec, one device per rank: on real GPUs, and on the host
// emulator of CUDA and NCCL (LD_PRELOAD=libpcx_emulator.so, 8 emulated devices). Where no
// CUDA device is visible, the whole module reports itself skipped (exit 77).
//
// Every case combines the verdicts of all ranks before it requires anything, so that all
// ranks fail together. Cases that inject faults (PCX_EMU_FAULT, see
// test/emulation/pcx_emulator.h) need the emulator and are skipped, saying so, elsewhere.
//
// The cases are in nccl_world_test.cpp, nccl_devices_test.cpp and nccl_failure_test.cpp,
// what they share in nccl_test_support.hpp; all of them are in the master suite.
#define BOOST_TEST_MODULE nccl
#define BOOST_TEST_NO_MAIN
#include <cuda_runtime.h>

#include <boost/test/unit_test.hpp>
#include <cstdio>

#include "nccl_test_support.hpp"

using nccltest::everyone;
using nccltest::MpiCommunicator;

int main(int argc, char* argv[]) {
  // Threads: the abort case calls abort() from a second thread (no MPI there).
  const pcx::MpiEnvironment mpi(&argc, &argv);
  int devices = 0;
  const cudaError_t found = cudaGetDeviceCount(&devices);
  const bool usable = found == cudaSuccess && devices > 0;
  if (!everyone(usable)) {
    if (MpiCommunicator::world().rank() == 0) {
      std::printf("skipped: no usable CUDA device (%s)\n",
                  found == cudaSuccess ? "zero devices" : cudaGetErrorString(found));
    }
    return 77;
  }
  return boost::unit_test::unit_test_main([] { return true; }, argc, argv);
}
