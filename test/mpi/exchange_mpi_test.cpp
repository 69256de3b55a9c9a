// MpiCommunicator's uneven all-to-all and point-to-point messages under mpiexec, checked
// element by element against values that encode where each element came from.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mpi_fixture.hpp"
#include "pcx/error.hpp"

using pcx::DataType;
using pcx::MpiCommunicator;
using pcx::test::everyone;

namespace {

// Whether the message of `e` contains every one of `parts`.
bool says(const std::exception& e, std::initializer_list<std::string_view> parts) {
  const std::string_view text = e.what();
  for (const std::string_view part : parts) {
    if (text.find(part) == std::string_view::npos) {
      BOOST_TEST_MESSAGE("\"" << text << "\" lacks \"" << part << "\"");
      return false;
    }
  }
  return true;
}

auto saying(std::initializer_list<std::string_view> parts) {
  return [parts = std::vector<std::string_view>(parts)](const std::exception& e) {
    for (const std::string_view part : parts) {
      if (!says(e, {part})) return false;
    }
    return true;
  };
}

// Member i sends block_size(i, j) elements to member j: blocks of 0, 1 and 2 elements that
// differ between (i, j) and (j, i).
std::size_t block_size(int from, int to) { return static_cast<std::size_t>((from + 2 * to) % 3); }

// Element k of the block from member i to member j.
std::int64_t encoded(int from, int to, std::size_t k) {
  return 10000 * from + 100 * to + static_cast<std::int64_t>(k);
}

}  // namespace

BOOST_AUTO_TEST_CASE(all_to_all_v_moves_uneven_and_empty_blocks_to_their_places) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();
  std::vector<std::size_t> send_counts;
  std::vector<std::size_t> recv_counts;
  std::vector<std::int64_t> send;
  std::vector<std::int64_t> want;
  for (int j = 0; j < n; ++j) {
    send_counts.push_back(block_size(r, j));
    recv_counts.push_back(block_size(j, r));
    for (std::size_t k = 0; k < block_size(r, j); ++k) send.push_back(encoded(r, j, k));
    for (std::size_t k = 0; k < block_size(j, r); ++k) want.push_back(encoded(j, r, k));
  }
  std::vector<std::int64_t> recv(want.size(), -1);
  world.all_to_all_v(send, send_counts, recv, recv_counts);
  BOOST_TEST(recv == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(all_to_all_v_of_16_bit_elements_uses_element_offsets) {
  // Untyped, float16: offsets are counted in 2-byte elements. Values 64 i + 8 j + k are
  // integers below 2048, exact in float16. Member i sends (i + j + 1) % 3 elements to j.
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();
  const auto count = [](int from, int to) { return static_cast<std::size_t>((from + to + 1) % 3); };
  const auto value = [](int from, int to, std::size_t k) {
    return pcx::float16(static_cast<float>(64 * from + 8 * to) + static_cast<float>(k));
  };
  std::vector<std::size_t> send_counts;
  std::vector<std::size_t> recv_counts;
  std::vector<pcx::float16> send;
  std::vector<float> want;
  for (int j = 0; j < n; ++j) {
    send_counts.push_back(count(r, j));
    recv_counts.push_back(count(j, r));
    for (std::size_t k = 0; k < count(r, j); ++k) send.push_back(value(r, j, k));
    for (std::size_t k = 0; k < count(j, r); ++k) want.push_back(static_cast<float>(64 * j + 8 * r) + static_cast<float>(k));
  }
  std::vector<pcx::float16> recv(want.size());
  world.all_to_all_v(send.data(), send_counts, recv.data(), recv_counts, DataType::float16);
  std::vector<float> got;
  for (const pcx::float16 h : recv) got.push_back(static_cast<float>(h));
  BOOST_TEST(got == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(all_to_all_v_refuses_count_lists_of_the_wrong_length_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  const std::size_t n = static_cast<std::size_t>(world.size());
  const std::string entries = std::to_string(n + 1) + " entries";
  const std::vector<std::size_t> right(n, 1);
  const std::vector<std::size_t> long_list(n + 1, 1);
  std::vector<std::int32_t> buffer(n + 1);
  BOOST_CHECK_EXCEPTION(world.all_to_all_v(buffer.data(), long_list, buffer.data(), right, DataType::int32),
                        pcx::ConfigError, saying({"send counts", entries}));
  BOOST_CHECK_EXCEPTION(world.all_to_all_v(buffer.data(), right, buffer.data(), long_list, DataType::int32),
                        pcx::ConfigError, saying({"receive counts", entries}));
  // Typed: the buffers must hold exactly the sum of their counts.
  BOOST_CHECK_EXCEPTION(world.all_to_all_v(buffer, right, buffer, right), pcx::ConfigError,
                        saying({"send buffer holds " + std::to_string(n + 1)}));
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(send_and_recv_pass_a_message_around_the_ring) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();
  if (n == 1) {
    BOOST_TEST_MESSAGE("one rank: no ring; a message to itself is refused");
    BOOST_CHECK_THROW(world.send(std::array<double, 1>{}, 0), pcx::ConfigError);
    return;
  }
  // Even ranks send first and odd ranks receive first, so that no rank waits on a send
  // that MPI does not buffer. The ring sizes here are even.
  const std::array<double, 3> mine = {r + 0.25, -r - 0.5, 1000.0 * r};
  const int previous = (r + n - 1) % n;
  std::array<double, 3> got{};
  if (r % 2 == 0) {
    world.send(mine, (r + 1) % n);
    world.recv(got, previous);
  } else {
    world.recv(got, previous);
    world.send(mine, (r + 1) % n);
  }
  const std::array<double, 3> want = {previous + 0.25, -previous - 0.5, 1000.0 * previous};
  BOOST_TEST(got == want, boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(messages_between_a_pair_arrive_in_the_order_sent) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int r = world.rank();
  const int partner = r ^ 1;
  if (partner >= world.size()) {
    BOOST_TEST_MESSAGE("rank " << r << " has no partner");
    return;
  }
  // Two messages of different lengths each way: a receive of the wrong one would be a
  // CommError, and the values name the sender and the message.
  const auto message = [](int sender, int number, std::size_t length) {
    std::vector<std::int32_t> values(length);
    for (std::size_t k = 0; k < length; ++k) values[k] = 1000 * sender + 100 * number + static_cast<std::int32_t>(k);
    return values;
  };
  std::vector<std::int32_t> first(2);
  std::vector<std::int32_t> second(5);
  if (r < partner) {
    world.send(message(r, 1, 2), partner);
    world.send(message(r, 2, 5), partner);
    world.recv(first, partner);
    world.recv(second, partner);
  } else {
    world.recv(first, partner);
    world.recv(second, partner);
    world.send(message(r, 1, 2), partner);
    world.send(message(r, 2, 5), partner);
  }
  BOOST_TEST(first == message(partner, 1, 2), boost::test_tools::per_element());
  BOOST_TEST(second == message(partner, 2, 5), boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(send_and_recv_refuse_the_caller_and_peers_outside_the_group) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const std::string self = std::to_string(world.rank());
  std::array<float, 2> buffer{};
  BOOST_CHECK_EXCEPTION(world.send(buffer, world.rank()), pcx::ConfigError, saying({"send peer " + self, "itself"}));
  BOOST_CHECK_EXCEPTION(world.recv(buffer, world.rank()), pcx::ConfigError, saying({"recv peer " + self, "itself"}));
  const std::string range = "outside [0, " + std::to_string(n) + ")";
  BOOST_CHECK_EXCEPTION(world.send(buffer, n), pcx::ConfigError, saying({"send peer " + std::to_string(n), range}));
  BOOST_CHECK_EXCEPTION(world.recv(buffer, -1), pcx::ConfigError, saying({"recv peer -1", range}));
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(a_receive_of_another_count_than_was_sent_is_a_comm_error_naming_both,
                     *boost::unit_test::precondition(pcx::test::two_or_more_ranks)) {
  const MpiCommunicator world = MpiCommunicator::world();
  // Rank 0 sends 3 then 5 elements; rank 1 expects 4 each time. Both are refused with
  // the two counts, and each message is consumed, so the third (of the right count) is
  // the one that arrives next. On the world communicator, where an MPI error would end
  // the job.
  const int r = world.rank();
  bool ok = true;
  if (r == 0) {
    world.send(std::vector<std::int32_t>{1, 2, 3}, 1);
    world.send(std::vector<std::int32_t>{1, 2, 3, 4, 5}, 1);
    world.send(std::vector<std::int32_t>{7, 8, 9, 10}, 1);
  } else if (r == 1) {
    std::vector<std::int32_t> four(4);
    const auto refused = [&](std::string_view sent) {
      try {
        world.recv(four, 0);
      } catch (const pcx::CommError& e) {
        return says(e, {"member 0", "expected 4 int32", sent});
      }
      return false;
    };
    ok = refused("but 3 were sent") && ok;
    ok = refused("but 5 were sent") && ok;
    world.recv(four, 0);
    ok = four == std::vector<std::int32_t>{7, 8, 9, 10} && ok;
  }
  BOOST_TEST(everyone(ok));
}
