// ThreadWorld: every operation exchanges the members' data for real, checked against
// values each test computes from a formula per element; and no rank is ever left waiting.
#define BOOST_TEST_MODULE thread_world
#include "pcx/testing/thread_world.hpp"

#include <fmt/format.h>

#include <boost/test/data/monomorphic.hpp>
#include <boost/test/data/test_case.hpp>
#include <boost/test/unit_test.hpp>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "pcx/error.hpp"

namespace {

using namespace std::chrono_literals;
using pcx::Communicator;
using pcx::ReduceOp;
using pcx::testing::ThreadWorld;
using pcx::testing::ThreadWorldOptions;

const auto kSizes = boost::unit_test::data::make({1, 2, 3, 8});

template <class T>
T value(double v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return static_cast<T>(v);
  } else {
    return T(static_cast<float>(v));
  }
}

template <class T>
double printable(T v) {
  if constexpr (std::is_arithmetic_v<T>) {
    return static_cast<double>(v);
  } else {
    return static_cast<double>(static_cast<float>(v));
  }
}

// "" when got equals expected, else what differs; Boost.Test's assertions are not
// thread-safe, so ranks report in strings that the test checks after run().
template <class T>
std::string compare(std::string_view what, const std::vector<T>& got, const std::vector<T>& expected) {
  if (got == expected) return "";
  std::vector<double> g;
  std::vector<double> e;
  for (const T& x : got) g.push_back(printable(x));
  for (const T& x : expected) e.push_back(printable(x));
  return fmt::format("{}: got [{}], expected [{}]; ", what, fmt::join(g, ", "), fmt::join(e, ", "));
}

// Runs body on every rank of a world of `ranks` and returns each rank's report.
std::vector<std::string> on_every_rank(int ranks, const std::function<std::string(const Communicator&)>& body) {
  ThreadWorld world(ranks);
  std::vector<std::string> reports(static_cast<std::size_t>(ranks));
  world.run([&](const Communicator& comm) { reports[static_cast<std::size_t>(comm.rank())] = body(comm); });
  BOOST_TEST(world.live_communicators() == 0);
  return reports;
}

void check_reports(const std::vector<std::string>& reports) {
  for (std::size_t rank = 0; rank < reports.size(); ++rank) {
    BOOST_TEST_CONTEXT("rank " << rank) { BOOST_TEST(reports[rank] == ""); }
  }
}

// Every reduction of element type T: rank r holds x[i] = r + i + 1, so the sum is
// n(i + 1) + n(n - 1)/2, the minimum i + 1, the maximum n + i, the average the sum / n
// (exact for floats here, truncated for integers); the product is over y[i] = 3 on rank
// i mod n and 1 elsewhere.
template <class T>
std::string all_reductions(const Communicator& comm) {
  const int n = comm.size();
  const int r = comm.rank();
  constexpr int kCount = 3;
  std::vector<T> x;
  std::vector<T> y;
  for (int i = 0; i < kCount; ++i) {
    x.push_back(value<T>(r + i + 1));
    y.push_back(value<T>(r == i % n ? 3 : 1));
  }
  std::string report;
  const auto expect = [&](ReduceOp op, const std::vector<T>& input, auto formula) {
    std::vector<T> got(kCount);
    comm.all_reduce(input, got, op);
    std::vector<T> expected;
    for (int i = 0; i < kCount; ++i) expected.push_back(value<T>(formula(i)));
    report += compare(fmt::format("{} {}", pcx::to_string(pcx::data_type_of<T>()), pcx::to_string(op)), got, expected);
  };
  const auto sum = [&](int i) { return n * (i + 1) + n * (n - 1) / 2; };
  expect(ReduceOp::sum, x, sum);
  expect(ReduceOp::min, x, [](int i) { return i + 1; });
  expect(ReduceOp::max, x, [&](int i) { return n + i; });
  expect(ReduceOp::prod, y, [](int) { return 3; });
  if constexpr (std::is_integral_v<T>) {
    expect(ReduceOp::avg, x, [&](int i) { return sum(i) / n; });
  } else {
    expect(ReduceOp::avg, x, [&](int i) { return static_cast<double>(sum(i)) / n; });
  }
  return report;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(thread_world)

BOOST_DATA_TEST_CASE(every_rank_gets_its_world_communicator, kSizes, ranks) {
  const auto reports = on_every_rank(ranks, [&](const Communicator& comm) {
    return comm.size() == ranks && comm.backend() == "thread" ? "" : "wrong world communicator";
  });
  check_reports(reports);
}

BOOST_DATA_TEST_CASE(all_reduce_computes_every_reduction_of_every_type, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    return all_reductions<std::int8_t>(comm) + all_reductions<std::uint8_t>(comm) + all_reductions<std::int32_t>(comm) +
           all_reductions<std::uint32_t>(comm) + all_reductions<std::int64_t>(comm) +
           all_reductions<std::uint64_t>(comm) + all_reductions<pcx::float16>(comm) +
           all_reductions<pcx::bfloat16>(comm) + all_reductions<float>(comm) + all_reductions<double>(comm);
  }));
}

// Float sums depend on the order of the terms: every rank must get the bits of the sum
// in rank order, ((x0 + x1) + x2) + ..., also in place.
BOOST_DATA_TEST_CASE(all_reduce_gives_every_rank_the_same_bits_in_rank_order, kSizes, ranks) {
  const auto contribution = [](int rank, int i) {
    return 0.1f * static_cast<float>(rank + 1) + 1e-3f * static_cast<float>(i);
  };
  check_reports(on_every_rank(ranks, [&](const Communicator& comm) {
    std::vector<float> buffer;
    std::vector<float> expected;
    for (int i = 0; i < 4; ++i) {
      buffer.push_back(contribution(comm.rank(), i));
      float sum = contribution(0, i);
      for (int rank = 1; rank < comm.size(); ++rank) sum += contribution(rank, i);
      expected.push_back(sum);
    }
    comm.all_reduce(buffer, ReduceOp::sum);
    return std::memcmp(buffer.data(), expected.data(), buffer.size() * sizeof(float)) == 0 ? "" : "bits differ";
  }));
}

// Rank r sends 1000r + 10j + k as element k of block j; block i of what r receives is
// then 1000i + 10r + k.
BOOST_DATA_TEST_CASE(all_to_all_hands_each_rank_its_block_of_every_peer, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    const int n = comm.size();
    std::vector<std::int32_t> send;
    std::vector<std::int32_t> expected;
    for (int j = 0; j < n; ++j) {
      for (int k = 0; k < 2; ++k) {
        send.push_back(1000 * comm.rank() + 10 * j + k);
        expected.push_back(1000 * j + 10 * comm.rank() + k);
      }
    }
    std::vector<std::int32_t> got(send.size());
    comm.all_to_all(send, got);
    return compare("all_to_all", got, expected);
  }));
}

// Rank r sends (r + j) mod 3 elements 1000r + 10j + k to rank j, none at all to some.
BOOST_DATA_TEST_CASE(all_to_all_v_moves_uneven_blocks, kSizes, ranks) {
  const auto count = [](int from, int to) { return static_cast<std::size_t>((from + 2 * to) % 3); };
  check_reports(on_every_rank(ranks, [&](const Communicator& comm) {
    const int r = comm.rank();
    std::vector<std::size_t> send_counts;
    std::vector<std::size_t> recv_counts;
    std::vector<double> send;
    std::vector<double> expected;
    for (int peer = 0; peer < comm.size(); ++peer) {
      send_counts.push_back(count(r, peer));
      recv_counts.push_back(count(peer, r));
      for (std::size_t k = 0; k < count(r, peer); ++k)
        send.push_back(1000.0 * r + 10.0 * peer + static_cast<double>(k));
      for (std::size_t k = 0; k < count(peer, r); ++k) {
        expected.push_back(1000.0 * peer + 10.0 * r + static_cast<double>(k));
      }
    }
    std::vector<double> got(expected.size());
    comm.all_to_all_v(send, send_counts, got, recv_counts);
    return compare("all_to_all_v", got, expected);
  }));
}

BOOST_AUTO_TEST_CASE(all_to_all_v_refuses_receive_counts_its_senders_do_not_send) {
  ThreadWorld world(2);
  std::vector<std::string> errors(2);
  world.run([&](const Communicator& comm) {
    const std::vector<std::size_t> send_counts = {1, 1};
    const std::vector<std::size_t> recv_counts = {1, comm.rank() == 0 ? 2U : 1U};
    const std::vector<std::int64_t> send(2, 7);
    std::vector<std::int64_t> recv(comm.rank() == 0 ? 3 : 2);
    try {
      comm.all_to_all_v(send, send_counts, recv, recv_counts);
    } catch (const pcx::CommError& e) {
      errors[static_cast<std::size_t>(comm.rank())] = e.what();
    }
  });
  BOOST_TEST(errors[0].find("rank 1 sends 1 elements but 2 are expected") != std::string::npos, errors[0]);
  BOOST_TEST(errors[1] == "");
}

BOOST_DATA_TEST_CASE(all_gather_collects_every_rank_in_rank_order, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    const std::vector<std::int64_t> send = {10 * comm.rank(), 10 * comm.rank() + 1};
    std::vector<std::int64_t> expected;
    for (int i = 0; i < comm.size(); ++i) expected.insert(expected.end(), {10 * i, 10 * i + 1});
    std::vector<std::int64_t> got(expected.size());
    comm.all_gather(send, got);
    return compare("all_gather", got, expected);
  }));
}

// Element k of block j on rank r is r + 10j + k; rank r receives block r of the sum:
// n(n - 1)/2 + n(10r + k).
BOOST_DATA_TEST_CASE(reduce_scatter_hands_each_rank_its_block_of_the_sum, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    const int n = comm.size();
    std::vector<std::int32_t> send;
    for (int j = 0; j < n; ++j) {
      for (int k = 0; k < 3; ++k) send.push_back(comm.rank() + 10 * j + k);
    }
    std::vector<std::int32_t> expected;
    for (int k = 0; k < 3; ++k) expected.push_back(n * (n - 1) / 2 + n * (10 * comm.rank() + k));
    std::vector<std::int32_t> got(3);
    comm.reduce_scatter(send, got, ReduceOp::sum);
    return compare("reduce_scatter", got, expected);
  }));
}

BOOST_DATA_TEST_CASE(broadcast_copies_the_roots_buffer_everywhere, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    const int root = comm.size() - 1;
    std::vector<float> expected;
    for (int k = 0; k < 5; ++k) expected.push_back(7.0f * static_cast<float>(k) + 0.5f);
    std::vector<float> buffer = comm.rank() == root ? expected : std::vector<float>(5, -1.0f);
    comm.broadcast(buffer, root);
    return compare("broadcast", buffer, expected);
  }));
}

// Around a ring, each rank sends two messages to the next and receives them from the
// previous, in the order they were sent.
BOOST_DATA_TEST_CASE(send_and_recv_keep_the_order_of_each_pair, boost::unit_test::data::make({2, 3, 8}), ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    const int n = comm.size();
    const int next = (comm.rank() + 1) % n;
    const int previous = (comm.rank() + n - 1) % n;
    comm.send(std::vector<std::int32_t>{comm.rank(), 1}, next);
    comm.send(std::vector<std::int32_t>{comm.rank(), 2, 3}, next);
    std::vector<std::int32_t> first(2);
    std::vector<std::int32_t> second(3);
    comm.recv(first, previous);
    comm.recv(second, previous);
    return compare("first", first, {previous, 1}) + compare("second", second, {previous, 2, 3});
  }));
}

BOOST_AUTO_TEST_CASE(recv_of_another_count_than_was_sent_is_a_comm_error) {
  ThreadWorld world(2);
  BOOST_CHECK_THROW(world.run([](const Communicator& comm) {
    if (comm.rank() == 0) {
      comm.send(std::vector<double>{1.0, 2.0}, 1);
    } else {
      std::vector<double> three(3);
      comm.recv(three, 0);
    }
  }),
                    pcx::CommError);
}

BOOST_DATA_TEST_CASE(barrier_and_self_complete, kSizes, ranks) {
  check_reports(on_every_rank(ranks, [](const Communicator& comm) {
    comm.barrier();
    const auto self = comm.self();
    std::vector<std::int32_t> mine = {comm.rank(), 5};
    self->all_reduce(mine, ReduceOp::sum);
    const bool alone = self->size() == 1 && self->rank() == 0 && self->backend() == "thread";
    return compare("self all_reduce", mine, {comm.rank(), 5}) + (alone ? "" : "self is not a group of one");
  }));
}

// MPI's meaning: the key only orders the members of a colour, ties by parent rank, and
// kNoColour joins no child. Each child's members all_gather their parent ranks.
BOOST_AUTO_TEST_CASE(split_orders_by_key_then_parent_rank) {
  constexpr int kRanks = 8;
  ThreadWorld world(kRanks);
  std::vector<std::vector<std::int32_t>> reversed(kRanks);
  std::vector<std::vector<std::int32_t>> tied(kRanks);
  std::vector<char> none_for_rank_0(kRanks);  // not vector<bool>, whose elements share bytes
  world.run([&](const Communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    const auto members = [&](const Communicator& child) {
      std::vector<std::int32_t> parents(static_cast<std::size_t>(child.size()));
      child.all_gather(std::vector<std::int32_t>{comm.rank()}, parents);
      return parents;
    };
    reversed[r] = members(*comm.split(comm.rank() % 2, kRanks - comm.rank()));
    tied[r] = members(*comm.split(comm.rank() / 4, 0));
    const auto child = comm.split(comm.rank() == 0 ? Communicator::kNoColour : 0, 0);
    none_for_rank_0[r] = comm.rank() == 0 ? child == nullptr : child->size() == kRanks - 1;
  });
  for (int r = 0; r < kRanks; ++r) {
    BOOST_TEST_CONTEXT("rank " << r) {
      const std::vector<std::int32_t> expected_reversed =
          r % 2 == 0 ? std::vector<std::int32_t>{6, 4, 2, 0} : std::vector<std::int32_t>{7, 5, 3, 1};
      const std::vector<std::int32_t> expected_tied =
          r < 4 ? std::vector<std::int32_t>{0, 1, 2, 3} : std::vector<std::int32_t>{4, 5, 6, 7};
      BOOST_TEST(reversed[static_cast<std::size_t>(r)] == expected_reversed, boost::test_tools::per_element());
      BOOST_TEST(tied[static_cast<std::size_t>(r)] == expected_tied, boost::test_tools::per_element());
      BOOST_TEST(none_for_rank_0[static_cast<std::size_t>(r)] != 0);
    }
  }
  BOOST_TEST(world.live_communicators() == 0);
}

BOOST_AUTO_TEST_CASE(split_checked_and_dup_give_the_stated_child) {
  ThreadWorld world(4);
  std::vector<std::string> reports(4);
  world.run([&](const Communicator& comm) {
    const int r = comm.rank();
    std::string report;
    const auto pair = comm.split_checked(r / 2, r % 2, 2);
    if (pair->size() != 2 || pair->rank() != r % 2) report += "split_checked gave another child; ";
    const auto copy = pair->dup();
    std::vector<std::int32_t> sum = {r};
    copy->all_reduce(sum, ReduceOp::sum);
    report += compare("dup all_reduce", sum, {r / 2 * 4 + 1});
    try {
      (void)comm.split_checked(0, r % 2, 2);  // every rank says the child has 2 members: it has 4
      report += "a wrong size was accepted; ";
    } catch (const pcx::CommError&) {
    }
    reports[static_cast<std::size_t>(r)] = report;
  });
  check_reports(reports);
}

BOOST_AUTO_TEST_CASE(a_rank_that_skips_a_collective_makes_its_peers_time_out) {
  ThreadWorld world(2, {.timeout = 200ms});
  BOOST_CHECK_EXCEPTION(world.run([](const Communicator& comm) {
    if (comm.rank() == 0) comm.barrier();
  }),
                        pcx::Timeout, [](const pcx::Timeout& e) {
                          const std::string what = e.what();
                          BOOST_TEST_MESSAGE(what);
                          return what.starts_with("rank 0: barrier() timed out after 200 ms") &&
                                 what.find("communicator of 2 ranks: rank 0 waited for rank 1") != std::string::npos;
                        });
  BOOST_TEST(world.live_communicators() == 0);
}

BOOST_AUTO_TEST_CASE(ranks_calling_different_operations_all_throw_naming_both) {
  ThreadWorld world(2);
  std::vector<std::string> errors(2);
  std::vector<std::string> counts(2);
  world.run([&](const Communicator& comm) {
    const auto r = static_cast<std::size_t>(comm.rank());
    std::vector<float> buffer(r == 0 ? 4 : 3);
    try {
      if (r == 0) {
        comm.all_reduce(buffer, ReduceOp::sum);
      } else {
        comm.barrier();
      }
    } catch (const pcx::ConfigMismatch& e) {
      errors[r] = e.what();
    }
    try {
      comm.all_reduce(buffer, ReduceOp::sum);
    } catch (const pcx::ConfigMismatch& e) {
      counts[r] = e.what();
    }
  });
  for (std::size_t r = 0; r < 2; ++r) {
    BOOST_TEST(errors[r] ==
               "operation 0 of a thread communicator of 2 ranks: rank 0 called "
               "all_reduce(4 x float32, sum) but rank 1 called barrier()");
    BOOST_TEST(counts[r].find("all_reduce(4 x float32, sum) but rank 1 called all_reduce(3 x float32, sum)") !=
               std::string::npos);
  }
}

BOOST_AUTO_TEST_CASE(abort_wakes_a_waiting_member_with_a_comm_error) {
  ThreadWorld world(2, {.timeout = 60s});
  std::string waiter;
  world.run([&](const Communicator& comm) {
    if (comm.rank() == 0) {
      try {
        comm.barrier();
      } catch (const pcx::CommError& e) {
        waiter = e.what();
      }
    } else {
      // Lets rank 0 start waiting; the result is the same if it has not yet.
      std::this_thread::sleep_for(50ms);
      comm.abort();
    }
  });
  BOOST_TEST(waiter.find("rank 1 aborted the communicator") != std::string::npos, waiter);
}

BOOST_AUTO_TEST_CASE(the_first_exception_is_rethrown_with_its_rank) {
  ThreadWorld world(4);
  BOOST_CHECK_EXCEPTION(world.run([](const Communicator& comm) {
    if (comm.rank() == 2) throw std::invalid_argument("no such expert");
    comm.barrier();  // the others wait for rank 2 and fail once it has
  }),
                        std::invalid_argument, [](const std::invalid_argument& e) {
                          return std::string(e.what()) == "rank 2: no such expert";
                        });
  BOOST_TEST(world.live_communicators() == 0);
}

// Injected failures count every operation, those of groups of one member too.
BOOST_AUTO_TEST_CASE(an_injected_failure_reaches_a_group_of_one) {
  ThreadWorld world(3);
  world.fail_operation(1);
  BOOST_CHECK_EXCEPTION(world.run([](const Communicator& comm) {
    std::vector<double> mine = {1.0};
    comm.self()->all_reduce(mine, ReduceOp::max);
  }),
                        pcx::CommError, [](const pcx::CommError& e) {
                          return std::string(e.what()).find("injected fault at operation 1") != std::string::npos;
                        });
  BOOST_TEST(world.operation_count() == 3);
  world.fail_operation(std::nullopt);
  BOOST_CHECK_NO_THROW(world.run([](const Communicator& comm) { comm.self()->barrier(); }));
}

BOOST_AUTO_TEST_CASE(live_communicators_counts_the_ones_a_body_keeps) {
  ThreadWorld world(2);
  std::vector<std::unique_ptr<Communicator>> kept(2);
  world.run([&](const Communicator& comm) {
    const auto copy = comm.dup();
    kept[static_cast<std::size_t>(comm.rank())] = comm.split(0, comm.rank());
  });
  BOOST_TEST(world.live_communicators() == 2);
  kept.clear();
  BOOST_TEST(world.live_communicators() == 0);
}

BOOST_AUTO_TEST_CASE(bad_worlds_are_config_errors) {
  BOOST_CHECK_EXCEPTION(ThreadWorld(0), pcx::ConfigError, [](const pcx::ConfigError& e) {
    return std::string(e.what()) == "a thread world of 0 ranks: the size must be at least 1";
  });
  BOOST_CHECK_THROW(ThreadWorld(2, {.timeout = 0ms}), pcx::ConfigError);
  ThreadWorld world(2);
  BOOST_CHECK_THROW(world.run([](const Communicator& comm) { (void)comm.split(-2, 0); }), pcx::ConfigError);
}

BOOST_AUTO_TEST_SUITE_END()
