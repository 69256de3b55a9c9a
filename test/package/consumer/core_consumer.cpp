// Uses the installed pcx: lays out a 16-rank world and checks one expert parallel group
// against DeepSpeed's own example. Exits non-zero if anything is wrong.

#include <cstdio>
#include <exception>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/topology.hpp"

int main() {
  try {
    pcx::ParallelConfig config;
    config.world_size = 16;
    config.tensor_parallel_size = 2;
    config.expert_parallel_sizes = {4};
    const pcx::Topology topology(config);

    const pcx::GroupLayout& experts = topology.layout({pcx::GroupKind::expert_parallel, 4});
    const std::vector<int> expected = {1, 3, 5, 7};
    if (experts.group_of(5) != expected) {
      std::fprintf(stderr, "core_consumer: wrong expert parallel group for rank 5\n");
      return 1;
    }
    std::printf("core_consumer: rank 5 is in expert parallel group %d of %d\n", experts.colour(5),
                experts.group_count());
    return 0;
  } catch (const pcx::Error& e) {
    std::fprintf(stderr, "core_consumer: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "core_consumer: unexpected exception: %s\n", e.what());
    return 1;
  }
}
