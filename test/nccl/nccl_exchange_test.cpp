// The NCCL backend's uneven all-to-all, point-to-point messages, every ReduceOp and the
// 16-bit floating-point types, on host (staged) and device memory and on a caller's
// stream, against values worked out here.
#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "nccl_test_support.hpp"
#include "support/elements.hpp"

namespace nccltest {
namespace {

// Member i sends (i + 2 j) % 3 elements to member j: blocks of 0, 1 and 2 elements that
// differ between (i, j) and (j, i); element k encodes (i, j, k).
std::size_t block_size(int from, int to) { return static_cast<std::size_t>((from + 2 * to) % 3); }
std::int64_t encoded(int from, int to, std::size_t k) { return 10000 * from + 100 * to + static_cast<std::int64_t>(k); }

struct Plan {
  std::vector<std::size_t> send_counts, send_offsets, recv_counts, recv_offsets;
  std::vector<std::int64_t> send, want;
};

Plan uneven_plan(int n, int r) {
  Plan p;
  for (int j = 0; j < n; ++j) {
    p.send_offsets.push_back(p.send.size());
    p.recv_offsets.push_back(p.want.size());
    p.send_counts.push_back(block_size(r, j));
    p.recv_counts.push_back(block_size(j, r));
    for (std::size_t k = 0; k < block_size(r, j); ++k) p.send.push_back(encoded(r, j, k));
    for (std::size_t k = 0; k < block_size(j, r); ++k) p.want.push_back(encoded(j, r, k));
  }
  return p;
}

using pcx::test::as_double;
using pcx::test::first_is_exact;
using pcx::test::make;
using pcx::test::reduction_cases;
using pcx::test::ReductionCase;

// Member r contributes {r + 1, 1 + r % 2}, on device memory or on host memory; the
// expected results are reduction_cases().
template <class T>
void check_every_op(const NcclCommunicator& comm, bool on_host, Checks& checks) {
  const int r = comm.rank();
  for (const ReductionCase& c : reduction_cases<T>(comm.size())) {
    const std::string what = fmt::format("{} all_reduce {} on {} memory", pcx::to_string(pcx::data_type_of<T>()),
                                         pcx::to_string(c.op), on_host ? "host" : "device");
    checks.run(what, [&] {
      std::vector<T> values = {make<T>(r + 1), make<T>(1 + r % 2)};
      if (on_host) {
        comm.all_reduce(values, c.op);
      } else {
        const DeviceBuffer<T> buffer(comm.device(), values);
        comm.all_reduce(buffer.span(), c.op);
        values = buffer.host();
      }
      checks.expect((!first_is_exact<T>(c) || as_double(values[0]) == c.first) && as_double(values[1]) == c.second,
                    fmt::format("{}: got {}, {}; expected {}, {}", what, as_double(values[0]), as_double(values[1]),
                                c.first, c.second));
    });
  }
}

}  // namespace

BOOST_AUTO_TEST_CASE(all_to_all_v_moves_uneven_and_empty_blocks_on_host_and_device_memory) {
  const CallerDevice caller;
  Checks checks;
  checks.run("all_to_all_v", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const Plan p = uneven_plan(world.size(), world.rank());
    std::vector<std::int64_t> on_host(p.want.size(), -1);
    world.all_to_all_v(p.send, p.send_counts, on_host, p.recv_counts);
    expect_equal(checks, on_host, p.want, "all_to_all_v on host memory");

    const DeviceBuffer<std::int64_t> send(world.device(), p.send);
    const DeviceBuffer<std::int64_t> recv(world.device(), std::vector<std::int64_t>(p.want.size(), -1));
    world.all_to_all_v(std::span<const std::int64_t>(send.span()), p.send_counts, recv.span(), p.recv_counts);
    expect_equal(checks, recv.host(), p.want, "all_to_all_v on device memory");
    caller.check(checks, "all_to_all_v");
  });
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(send_and_recv_pass_a_message_around_the_ring_on_host_and_device_memory) {
  const CallerDevice caller;
  Checks checks;
  checks.run("ring", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const int n = world.size();
    const int r = world.rank();
    if (n == 1) {
      BOOST_TEST_MESSAGE("one rank: no ring; a message to itself is refused");
      const auto refused = [&] {
        try {
          world.send(std::array<float, 1>{}, 0);
        } catch (const pcx::ConfigError&) {
          return true;
        }
        return false;
      };
      checks.expect(refused(), "a send to itself was not refused");
      return;
    }
    // Even ranks send first, odd ranks receive first: NCCL's send returns only once the
    // peer received. The ring sizes here are even.
    const int next = (r + 1) % n;
    const int previous = (r + n - 1) % n;
    const auto message = [](int sender) {
      const auto s = static_cast<float>(sender);
      return std::vector<float>{s + 0.5F, -2.0F * s, 7.0F};
    };
    const auto exchange = [&](const auto& out, auto&& in) {
      if (r % 2 == 0) {
        world.send(out, next);
        world.recv(in, previous);
      } else {
        world.recv(in, previous);
        world.send(out, next);
      }
    };
    std::vector<float> got(3);
    exchange(message(r), got);
    expect_equal(checks, got, message(previous), "ring on host memory");
    const DeviceBuffer<float> out(world.device(), message(r));
    const DeviceBuffer<float> in(world.device(), 3);
    exchange(std::span<const float>(out.span()), in.span());
    expect_equal(checks, in.host(), message(previous), "ring on device memory");
    caller.check(checks, "send and recv");
  });
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(every_reduce_op_of_every_type_including_16_bit_floats) {
  const CallerDevice caller;
  Checks checks;
  checks.run("reductions", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    for (const bool on_host : {false, true}) {
      check_every_op<std::int32_t>(world, on_host, checks);
      check_every_op<std::int64_t>(world, on_host, checks);
      check_every_op<float>(world, on_host, checks);
      check_every_op<double>(world, on_host, checks);
      check_every_op<pcx::float16>(world, on_host, checks);
      check_every_op<pcx::bfloat16>(world, on_host, checks);
    }
    caller.check(checks, "the reductions");
  });
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(enqueued_exchanges_run_on_the_callers_stream) {
  const CallerDevice caller;
  Checks checks;
  checks.run("enqueue", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    const int n = world.size();
    const int r = world.rank();
    const int device = world.device();
    cudaStream_t stream = nullptr;
    on_device(device, [&] { pcx::check_cuda(cudaStreamCreate(&stream), "cudaStreamCreate"); });
    const Plan p = uneven_plan(n, r);
    const DeviceBuffer<std::int64_t> send(device, p.send);
    const DeviceBuffer<std::int64_t> recv(device, std::vector<std::int64_t>(p.want.size(), -1));
    world.enqueue_all_to_all_v(send.get(), p.send_counts, p.send_offsets, recv.get(), p.recv_counts, p.recv_offsets,
                               DataType::int64, stream);
    pcx::check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    expect_equal(checks, recv.host(), p.want, "enqueue_all_to_all_v");

    if (n > 1) {
      // Each pair (2k, 2k + 1) swaps four bfloat16 values; the even rank sends first, so
      // the two streams run the send and the receive in matching order.
      const int partner = r ^ 1;
      std::vector<pcx::bfloat16> mine;
      std::vector<float> want;
      for (int k = 0; k < 4; ++k) {
        mine.emplace_back(static_cast<float>(16 * r + k));
        want.push_back(static_cast<float>(16 * partner + k));
      }
      const DeviceBuffer<pcx::bfloat16> out(device, mine);
      const DeviceBuffer<pcx::bfloat16> in(device, 4);
      if (r % 2 == 0) {
        world.enqueue_send(out.get(), 4, DataType::bfloat16, partner, stream);
        world.enqueue_recv(in.get(), 4, DataType::bfloat16, partner, stream);
      } else {
        world.enqueue_recv(in.get(), 4, DataType::bfloat16, partner, stream);
        world.enqueue_send(out.get(), 4, DataType::bfloat16, partner, stream);
      }
      pcx::check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
      std::vector<float> got;
      for (const pcx::bfloat16 b : in.host()) got.push_back(static_cast<float>(b));
      expect_equal(checks, got, want, "enqueue_send and enqueue_recv");
    }
    cudaStreamDestroy(stream);
    caller.check(checks, "the enqueued exchanges");
  });
  BOOST_TEST(everyone(checks.ok()));
}

BOOST_AUTO_TEST_CASE(nccl_handle_is_native_and_null_for_a_group_of_one) {
  Checks checks;
  checks.run("nccl_handle", [&] {
    const NcclCommunicator world = nccl_world(non_blocking());
    checks.expect(pcx::nccl_handle(world) == world.native() && world.native() != nullptr, "nccl_handle of the world");
    checks.expect(pcx::nccl_handle(*world.self()) == nullptr, "nccl_handle of a group of one");
    checks.expect([] {
      try {
        (void)pcx::nccl_handle(MpiCommunicator::world());
      } catch (const pcx::ConfigError& e) {
        return std::string_view(e.what()).find("mpi communicator") != std::string_view::npos;
      }
      return false;
    }(), "nccl_handle of an MPI communicator is not refused naming its backend");
  });
  BOOST_TEST(everyone(checks.ok()));
}

}  // namespace nccltest
