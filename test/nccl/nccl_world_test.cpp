// The NCCL world and what runs on it: sizes, ranks and devices, every collective and data
// type against a reference computed on the host, moves, splits and a ParallelContext.
#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <optional>
#include <numeric>
#include <span>
#include <string>
#include <vector>

#include "nccl_test_support.hpp"

namespace nccltest {

BOOST_AUTO_TEST_CASE(world_knows_its_size_rank_and_device) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    const MpiCommunicator mpi = MpiCommunicator::world();
    checks.run("create_world", [&] {
      const NcclCommunicator world = nccl_world(settings);
      caller.check(checks, "create_world");
      checks.expect(
          world.size() == mpi.size() && world.rank() == mpi.rank(),
          fmt::format("world rank {} of {}, expected {} of {}", world.rank(), world.size(), mpi.rank(), mpi.size()));
      checks.expect(world.owned() && !world.failed() && world.native() != nullptr, "world not owned, or failed");
      // The node-local rank, or device 0 where each rank sees one device of its own.
      const int expected = device_count() == 1 ? 0 : node_local_rank();
      checks.expect(world.device() == expected,
                    fmt::format("device {}, expected {} (node-local rank {} of {} visible devices)", world.device(),
                                expected, node_local_rank(), device_count()));
      checks.expect(world.options() == settings, "the world does not keep its options");
    });
    caller.check(checks, "the world's destruction");
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

BOOST_AUTO_TEST_CASE(every_collective_matches_a_host_reference) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    checks.run("create_world", [&] {
      const NcclCommunicator world = nccl_world(settings);
      check_collectives(world, caller, checks, settings_name(settings) + " world");
    });
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

BOOST_AUTO_TEST_CASE(every_collective_of_every_data_type_matches_a_host_reference) {
  const CallerDevice caller;
  Checks checks;
  checks.run("create_world", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    check_type<std::int8_t>(world, checks);
    check_type<std::uint8_t>(world, checks);
    check_type<std::int32_t>(world, checks);
    check_type<std::uint32_t>(world, checks);
    check_type<std::int64_t>(world, checks);
    check_type<std::uint64_t>(world, checks);
    check_type<float>(world, checks);
    check_type<double>(world, checks);
  });
  caller.check(checks, "the collectives of every type");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(moves_keep_one_handle) {
  const CallerDevice caller;
  Checks checks;
  checks.run("moves", [&] {
    NcclCommunicator first = nccl_world(non_blocking());
    const ncclComm_t handle = first.native();
    NcclCommunicator second = std::move(first);
    checks.expect(second.native() == handle && second.owned(), "the move did not take the handle");
    checks.expect(first.native() == nullptr && !first.owned(), "the moved-from object kept the handle");  // NOLINT
    checks.expect(first.device() == -1, "a moved-from object has no device");                             // NOLINT
    checks.expect(first.size() == 0 && first.rank() == -1, "a moved-from object kept its size or rank");  // NOLINT
    std::int32_t unused = 0;
    try {
      first.all_reduce(std::span<std::int32_t>(&unused, 1), ReduceOp::sum);  // NOLINT
      checks.expect(false, "an all_reduce on a moved-from object did not throw");
    } catch (const pcx::ConfigError& e) {
      checks.expect(std::string_view(e.what()).find("moved-from") != std::string_view::npos, e.what());
    }
    NcclCommunicator third = nccl_world(non_blocking());
    third = std::move(second);  // finalizes and destroys third's own world first
    checks.expect(third.native() == handle, "the move assignment did not take the handle");
    std::int32_t value = 1;
    third.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
    checks.expect(value == third.size(), "the moved communicator does not work");
  });
  caller.check(checks, "moves");
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(splits_make_children_with_their_own_options_and_nocolour_makes_none) {
  for (const pcx::CommOptions& settings : kSettings) {
    const CallerDevice caller;
    Checks checks;
    const int live_before = live_communicators();
    checks.run("splits", [&] {
      const NcclCommunicator world = nccl_world(settings);
      const int n = world.size();
      const int r = world.rank();

      // Even and odd ranks, with options of their own.
      pcx::CommOptions parity_options = settings;
      parity_options.name = fmt::format("pcx-test:parity{}", r % 2);
      if (parity_options.timeout.count() > 0) parity_options.timeout = std::chrono::seconds(20);
      std::vector<int> members;
      for (int i = r % 2; i < n; i += 2) members.push_back(i);
      const auto parity = world.split_checked(r % 2, r / 2, static_cast<int>(members.size()), parity_options);
      caller.check(checks, "split");
      checks.expect(parity != nullptr && parity->size() == static_cast<int>(members.size()) && parity->rank() == r / 2,
                    "wrong parity child");
      if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(parity.get())) {
        checks.expect(nccl->options() == parity_options, "the child does not keep its own options");
        checks.expect(nccl->device() == world.device(), "the child is on another device");
        checks.expect(world.options() == settings, "the parent's options changed");
      } else {
        checks.expect(false, "the child is not an NCCL communicator");
      }
      if (parity) {
        std::int32_t value = r;
        parity->all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
        checks.expect(value == std::accumulate(members.begin(), members.end(), 0), "child all_reduce");
      }

      // Rank 0 joins no child (NCCL_SPLIT_NOCOLOR); the others form one. The parent is
      // usable right after: the split is complete on it.
      const bool joins = r != 0;
      const auto rest = world.split_checked(joins ? 0 : pcx::Communicator::kNoColour, joins ? r - 1 : 0, n - 1);
      caller.check(checks, "split with NCCL_SPLIT_NOCOLOR");
      checks.expect((rest != nullptr) == joins, fmt::format("rank {} {} a child", r, rest ? "got" : "did not get"));
      std::int32_t everyone_value = 1;
      world.all_reduce(std::span<std::int32_t>(&everyone_value, 1), ReduceOp::sum);
      checks.expect(everyone_value == n, "the parent after a NOCOLOR split");
      if (rest) {
        std::int32_t value = 1;
        rest->all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum);
        checks.expect(value == n - 1, "the child of the others");
      }

      const auto copy = world.dup(settings);
      caller.check(checks, "dup");
      checks.expect(copy && copy->size() == n && copy->rank() == r, "dup");
      if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(copy.get()))
        check_collectives(*nccl, caller, checks, "dup");
    });
    caller.check(checks, "destruction of the children");
    checks.expect(live_communicators() == live_before,
                  fmt::format("{} live communicators, {} before", live_communicators(), live_before));
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

// ncclCommInitRankScalable (nccl.h: "Allows to use more than one ncclUniqueId (up to one
// per rank) ... The number of ncclUniqueIds and their order must be the same for every
// rank"): one id per rank, per two ranks, per three, and one for the world all give a
// working world; ranks with other lists would never meet.
BOOST_AUTO_TEST_CASE(a_world_from_one_unique_id_per_block_of_ranks) {
  const MpiCommunicator mpi = MpiCommunicator::world();
  for (const int per_id : {1, 2, 3, mpi.size()}) {
    const CallerDevice caller;
    Checks checks;
    checks.run(fmt::format("{} ranks per unique id", per_id), [&] {
      pcx::NcclWorldOptions options;
      options.communicator = non_blocking();
      options.ranks_per_unique_id = per_id;
      const NcclCommunicator world = NcclCommunicator::create_world(mpi, options);
      checks.expect(world.size() == mpi.size() && world.rank() == mpi.rank(), "wrong rank or size");
      check_collectives(world, caller, checks, fmt::format("{} ranks per unique id", per_id));
    });
    BOOST_TEST(everyone(checks.ok()), per_id);
  }
}

BOOST_AUTO_TEST_CASE(ranks_per_unique_id_below_1_or_differing_is_refused_on_every_rank) {
  const MpiCommunicator mpi = MpiCommunicator::world();
  const auto refused = [&](int mine, int last_ranks, const std::string& expected) {
    pcx::NcclWorldOptions options;
    options.communicator = non_blocking();
    options.ranks_per_unique_id = mpi.rank() == mpi.size() - 1 ? last_ranks : mine;
    try {
      (void)NcclCommunicator::create_world(mpi, options);
    } catch (const pcx::Error& e) {  // ConfigError, ConfigMismatch
      return std::string(e.what()).find(expected) != std::string::npos;
    }
    return false;
  };
  BOOST_TEST(everyone(refused(0, 0, "rank 0: ranks per NCCL unique id 0 is below 1")));
  if (mpi.size() > 1) {
    BOOST_TEST(everyone(refused(1, 2, "ranks per NCCL unique id (NcclWorldOptions::ranks_per_unique_id, 0: the "
                                      "default) ranges from 1 to 2")));
  }
}

// The device memory each communicator took. The emulator charges every live communicator
// PCX_EMU_COMM_MEMORY bytes (64 MiB by default) of its device, so the drop in free memory
// across a creation is exactly that; a GPU reports what NCCL allocated.
BOOST_AUTO_TEST_CASE(every_communicator_reports_the_device_memory_it_took) {
  Checks checks;
  checks.run("device memory", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const auto child = world.split_checked(0, world.rank(), world.size(), non_blocking("pcx-test:child"));
    const pcx::ParallelContext context(world, [&] {
      pcx::ParallelConfig config;
      config.expert_parallel_sizes = {world.size()};
      return config;
    }());
    for (const pcx::Communicator* comm : std::initializer_list<const pcx::Communicator*>{&world, child.get()}) {
      const std::optional<std::uint64_t> bytes = comm->device_memory();
      checks.expect(bytes.has_value(), "no device memory reported");
      if (bytes && on_emulator()) {
        const char* text = std::getenv("PCX_EMU_COMM_MEMORY");
        const std::uint64_t charge = text != nullptr ? std::stoull(text) : std::uint64_t{64} << 20U;
        checks.expect(*bytes == charge, fmt::format("{} bytes reported, the emulator charges {}", *bytes, charge));
      }
    }
    // The context holds its world clone only (expert parallel shares it); its memory is
    // the clone's.
    const pcx::ContextResources held = context.resources();
    checks.expect(held.communicators == 1 && held.device_memory.size() == 1 &&
                      held.device_memory.front() == context.world_group().communicator().device_memory(),
                  fmt::format("{} communicators, {} device memory figures", held.communicators,
                              held.device_memory.size()));
  });
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(a_parallel_context_runs_on_nccl) {
  // The default settings (non-blocking, 5 minutes) and blocking ones.
  for (const pcx::CommOptions& settings : {pcx::CommOptions{}, blocking("")}) {
    const CallerDevice caller;
    Checks checks;
    checks.run("context", [&] {
      const NcclCommunicator world = nccl_world(settings);
      const int n = world.size();
      pcx::ParallelConfig config;
      config.world_size = n;
      config.expert_parallel_sizes = {n};
      config.zero_hpz_size = n;
      config.ranks_per_node = pcx::kDetectRanksPerNode;  // one node here, several across hosts
      pcx::ContextOptions options;
      options.communicators = settings;  // no name: the context names each kind
      // Every kind has the world's groups and would share the clone; one gets its own.
      options.dedicated = {pcx::GroupKind::expert_parallel};
      const pcx::ParallelContext context(world, config, nullptr, options);
      caller.check(checks, "the context's construction");
      const std::vector<pcx::GroupId> ids = context.group_ids();
      for (const pcx::GroupId& id : ids) {
        const pcx::ProcessGroup& group = context.group(id);
        std::int32_t mine = world.rank();
        std::vector<std::int32_t> seen(static_cast<std::size_t>(group.size()));
        group.communicator().all_gather(std::span<const std::int32_t>(&mine, 1), std::span<std::int32_t>(seen));
        checks.expect(std::vector<int>(seen.begin(), seen.end()) == group.ranks(),
                      fmt::format("{} group: all_gather gave {}", id.name(), text(seen)));
        // A shared communicator is named after the first kind that holds it (without an
        // MPU, data parallel is the world clone).
        const auto first = std::ranges::find_if(
            ids, [&](const pcx::GroupId& other) { return &context.group(other).communicator() == &group.communicator(); });
        const std::string name = "pcx:" + first->name();
        if (const auto* nccl = dynamic_cast<const NcclCommunicator*>(&group.communicator())) {
          checks.expect(nccl->options().name == name && nccl->options().timeout == settings.timeout,
                        fmt::format("{} group is named \"{}\"", id.name(), nccl->options().name));
        }
      }
      caller.check(checks, "the context's collectives");
    });
    caller.check(checks, "the context's destruction");
    BOOST_TEST(everyone(checks.ok()), settings_name(settings));
  }
}

}  // namespace nccltest
