// Uses the installed pcx::testing: builds the context of rank 5 of a 16-rank world over a
// FakeCommunicator and checks its expert parallel group against DeepSpeed's own example.
// Exits non-zero if anything is wrong.

#include <cstdio>
#include <exception>
#include <memory>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"
#include "pcx/testing/fake_communicator.hpp"

int main() {
  try {
    const auto world = std::make_shared<pcx::testing::FakeWorld>(16);
    const pcx::testing::FakeCommunicator rank5(world, 5);
    pcx::ParallelConfig config;
    config.world_size = 16;
    config.tensor_parallel_size = 2;
    config.expert_parallel_sizes = {4};
    const auto mpu = std::make_shared<pcx::GridMpu>(rank5, 2);
    const pcx::ParallelContext context(rank5, config, mpu);
    const std::vector<int> expected = {1, 3, 5, 7};
    if (context.expert_parallel_group(4).ranks() != expected) {
      std::fprintf(stderr, "testing_consumer: wrong expert parallel group for rank 5\n");
      return 1;
    }
    // pcx::mpi is there to be linked: its error check is a plain function.
    pcx::check_mpi(MPI_SUCCESS, "nothing");
    std::printf("testing_consumer: rank 5 of a fake world of 16 is in expert parallel group [1,3,5,7]\n");
    return 0;
  } catch (const pcx::Error& e) {
    std::fprintf(stderr, "testing_consumer: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "testing_consumer: unexpected exception: %s\n", e.what());
    return 1;
  }
}
