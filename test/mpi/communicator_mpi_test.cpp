// MpiCommunicator under mpiexec: ownership, handles, splits and every collective's numbers;
// exchange_mpi_test.cpp and reduction_mpi_test.cpp hold the rest of the cases.
#define BOOST_TEST_MODULE mpi_communicator
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <functional>
#include <numeric>
#include <string_view>

#include "mpi_fixture.hpp"
#include "pcx/error.hpp"

using pcx::MpiCommunicator;
using pcx::ReduceOp;
using pcx::test::everyone;

BOOST_AUTO_TEST_CASE(world_is_borrowed_and_dup_is_owned) {
  const MpiCommunicator world = MpiCommunicator::world();
  int size = 0;
  int rank = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  BOOST_TEST(world.size() == size);
  BOOST_TEST(world.rank() == rank);
  BOOST_TEST(!world.owned());
  const auto copy = world.dup();
  BOOST_TEST(copy->size() == size);
  BOOST_TEST(copy->rank() == rank);
  BOOST_TEST(dynamic_cast<const MpiCommunicator&>(*copy).owned());
  BOOST_TEST(dynamic_cast<const MpiCommunicator&>(*copy).native() != MPI_COMM_WORLD);
}

BOOST_AUTO_TEST_CASE(moving_transfers_ownership_and_frees_once) {
  MPI_Comm raw = MPI_COMM_NULL;
  MPI_Comm_dup(MPI_COMM_WORLD, &raw);
  MpiCommunicator first = MpiCommunicator::adopt(raw);
  MpiCommunicator second = std::move(first);
  BOOST_TEST(second.native() == raw);
  BOOST_TEST(second.owned());
  MpiCommunicator third = MpiCommunicator::world();
  third = std::move(second);  // frees nothing borrowed, takes the owned handle
  BOOST_TEST(third.owned());
  BOOST_CHECK_THROW(MpiCommunicator::borrow(MPI_COMM_NULL), pcx::ConfigError);
}

BOOST_AUTO_TEST_CASE(split_by_parity_and_no_colour) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int rank = world.rank();
  std::vector<int> members;
  for (int r = rank % 2; r < world.size(); r += 2) members.push_back(r);
  const int key = rank / 2;
  const auto half = world.split_checked(rank % 2, key, static_cast<int>(members.size()));
  BOOST_REQUIRE(half != nullptr);
  BOOST_TEST(half->size() == static_cast<int>(members.size()));
  BOOST_TEST(half->rank() == key);
  std::vector<std::int32_t> seen(members.size());
  const std::int32_t me = rank;
  half->all_gather(std::span<const std::int32_t>(&me, 1), std::span<std::int32_t>(seen));
  BOOST_TEST(std::vector<int>(seen.begin(), seen.end()) == members);

  const auto none = world.split_checked(pcx::Communicator::kNoColour, 0, 0);
  BOOST_TEST(none == nullptr);
}

BOOST_AUTO_TEST_CASE(collectives_give_the_right_numbers) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();

  std::vector<std::int64_t> values = {r, 10 * r};
  world.all_reduce(std::span<std::int64_t>(values), ReduceOp::sum);
  const std::int64_t total = std::int64_t{n} * (n - 1) / 2;
  BOOST_TEST(values == std::vector<std::int64_t>({total, 10 * total}));

  const double mine = r + 0.5;
  double largest = 0;
  world.all_reduce(std::span<const double>(&mine, 1), std::span<double>(&largest, 1), ReduceOp::max);
  BOOST_TEST(largest == n - 0.5);

  // Block j of rank i's send is 100 * i + j; after the exchange block i is 100 * i + r.
  std::vector<std::int32_t> send(static_cast<std::size_t>(n));
  std::vector<std::int32_t> recv(static_cast<std::size_t>(n));
  for (int j = 0; j < n; ++j) send[static_cast<std::size_t>(j)] = 100 * r + j;
  world.all_to_all(std::span<const std::int32_t>(send), std::span<std::int32_t>(recv));
  for (int i = 0; i < n; ++i) BOOST_TEST(recv[static_cast<std::size_t>(i)] == 100 * i + r);

  std::vector<float> gathered(static_cast<std::size_t>(2 * n));
  const std::vector<float> pair = {static_cast<float>(r), -static_cast<float>(r)};
  world.all_gather(std::span<const float>(pair), std::span<float>(gathered));
  for (int i = 0; i < n; ++i) {
    BOOST_TEST(gathered[static_cast<std::size_t>(2 * i)] == static_cast<float>(i));
    BOOST_TEST(gathered[static_cast<std::size_t>(2 * i + 1)] == -static_cast<float>(i));
  }

  // Every rank sends j + r in block j; rank r receives the sum over i of (r + i).
  std::vector<std::uint64_t> blocks(static_cast<std::size_t>(n));
  for (int j = 0; j < n; ++j) blocks[static_cast<std::size_t>(j)] = static_cast<std::uint64_t>(j + r);
  std::uint64_t reduced = 0;
  world.reduce_scatter(std::span<const std::uint64_t>(blocks), std::span<std::uint64_t>(&reduced, 1), ReduceOp::sum);
  BOOST_TEST(reduced == static_cast<std::uint64_t>(n * r + total));

  std::vector<std::int8_t> message(3, static_cast<std::int8_t>(r == n - 1 ? 7 : 0));
  world.broadcast(std::span<std::int8_t>(message), n - 1);
  BOOST_TEST(message == std::vector<std::int8_t>({7, 7, 7}));
  world.barrier();
}

BOOST_AUTO_TEST_CASE(bad_arguments_throw_before_communicating_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::vector<std::int32_t> small(1);
  std::vector<std::int32_t> big(static_cast<std::size_t>(world.size()) + 1);
  BOOST_CHECK_THROW(world.all_gather(std::span<const std::int32_t>(small), std::span<std::int32_t>(big)),
                    pcx::ConfigError);
  BOOST_CHECK_THROW(world.broadcast(std::span<std::int32_t>(small), world.size()), pcx::ConfigError);
  BOOST_CHECK_THROW(world.all_reduce(nullptr, small.data(), 1, pcx::DataType::int32, ReduceOp::sum), pcx::ConfigError);
  BOOST_CHECK_THROW((void)world.split_checked(0, 0, world.size() + 1), pcx::ConfigError);
  BOOST_CHECK_THROW((void)world.split_checked(0, 1, 1), pcx::ConfigError);
  BOOST_CHECK_THROW((void)world.split_checked(-5, 0, 1), pcx::ConfigError);
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(create_group_involves_its_members_alone_in_their_order) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int rank = world.rank();
  const int n = world.size();
  // The even ranks, last first, make a group, with and without a deadline; the odd ranks
  // do not call at all, and then make theirs.
  std::vector<int> members;
  for (int r = n - 1; r >= 0; --r)
    if (r % 2 == rank % 2) members.push_back(r);
  const int index = static_cast<int>(std::ranges::find(members, rank) - members.begin());
  bool ok = true;
  for (const auto timeout : {std::chrono::milliseconds(5000), std::chrono::milliseconds(0)}) {
    if (rank % 2 == 1) world.barrier();
    pcx::CommOptions options;
    options.name = "pcx:test/created";
    options.timeout = timeout;
    const auto child = world.create_group(members, options);
    std::vector<std::int32_t> seen(members.size());
    const std::int32_t me = rank;
    child->all_gather(std::span<const std::int32_t>(&me, 1), std::span<std::int32_t>(seen));
    ok = ok && child->size() == static_cast<int>(members.size()) && child->rank() == index &&
         std::vector<int>(seen.begin(), seen.end()) == members;
    if (rank % 2 == 0) world.barrier();
  }
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(create_group_refuses_bad_members_before_communicating_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int rank = world.rank();
  const auto refused = [&](std::vector<int> members, std::string_view expected) {
    try {
      (void)world.create_group(members);
    } catch (const pcx::ConfigError& error) {
      return std::string_view(error.what()).find(expected) != std::string_view::npos;
    }
    return false;
  };
  bool ok = refused({}, "the list of members is empty");
  ok = refused({rank, world.size()}, fmt::format("member {} is outside [0, {})", world.size(), world.size())) && ok;
  ok = refused({rank, -1}, "member -1 is outside") && ok;
  ok = refused({rank, rank}, fmt::format("member {} is listed twice", rank)) && ok;
  if (world.size() > 1) {
    ok = refused({(rank + 1) % world.size()}, fmt::format("the caller, rank {}, is not among the members", rank)) && ok;
  }
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(a_moved_from_communicator_is_empty_and_refuses_every_use) {
  MpiCommunicator first = MpiCommunicator::world();
  const MpiCommunicator second = std::move(first);
  bool ok = first.size() == 0 && first.rank() == -1 && first.native() == MPI_COMM_NULL && second.size() > 0;
  const auto refused = [&](const std::function<void()>& use) {
    try {
      use();
    } catch (const pcx::ConfigError& e) {
      return std::string_view(e.what()).find("moved-from mpi communicator") != std::string_view::npos;
    } catch (...) {
    }
    return false;
  };
  std::int32_t value = 1;
  ok = refused([&] { first.all_reduce(std::span<std::int32_t>(&value, 1), ReduceOp::sum); }) && ok;
  ok = refused([&] { first.broadcast(std::span<std::int32_t>(&value, 1), 0); }) && ok;
  ok = refused([&] { first.barrier(); }) && ok;
  ok = refused([&] { (void)first.split_checked(0, 0, 1); }) && ok;
  ok = refused([&] { (void)first.dup(); }) && ok;
  MpiCommunicator third = MpiCommunicator::world();
  third = std::move(first);  // an empty one assigned is empty
  ok = third.size() == 0 && third.rank() == -1 && ok;
  BOOST_TEST(everyone(ok));
}

BOOST_AUTO_TEST_CASE(adopt_refuses_the_predefined_communicators) {
  const auto names = [](const char* name) {
    return [name](const pcx::Error& e) { return std::string_view(e.what()).find(name) != std::string_view::npos; };
  };
  BOOST_CHECK_EXCEPTION(MpiCommunicator::adopt(MPI_COMM_WORLD), pcx::ConfigError, names("MPI_COMM_WORLD"));
  BOOST_CHECK_EXCEPTION(MpiCommunicator::adopt(MPI_COMM_SELF), pcx::ConfigError, names("MPI_COMM_SELF"));
  BOOST_CHECK_EXCEPTION(MpiCommunicator::adopt(MPI_COMM_NULL), pcx::ConfigError, names("MPI_COMM_NULL"));
  // The world keeps MPI's own error handler.
  MPI_Errhandler handler = MPI_ERRHANDLER_NULL;
  MPI_Comm_get_errhandler(MPI_COMM_WORLD, &handler);
  const bool fatal = handler == MPI_ERRORS_ARE_FATAL;
  MPI_Errhandler_free(&handler);
  BOOST_TEST(everyone(fatal));
}

BOOST_AUTO_TEST_CASE(enums_outside_their_range_throw_before_communicating_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  std::int32_t value = 1;
  BOOST_CHECK_THROW(world.all_reduce(&value, &value, 1, pcx::DataType::int32, static_cast<ReduceOp>(7)),
                    pcx::ConfigError);
  BOOST_CHECK_THROW(world.broadcast(&value, 1, static_cast<pcx::DataType>(42), 0), pcx::ConfigError);
  BOOST_TEST(everyone(true));
}

BOOST_AUTO_TEST_CASE(mpi_handle_is_the_native_communicator_and_comm_self_for_a_group_of_one) {
  const MpiCommunicator world = MpiCommunicator::world();
  int same = MPI_UNEQUAL;
  MPI_Comm_compare(pcx::mpi_handle(world), MPI_COMM_WORLD, &same);
  BOOST_TEST(same == MPI_IDENT);

  const auto copy = world.dup();
  const MPI_Comm native = dynamic_cast<const MpiCommunicator&>(*copy).native();
  MPI_Comm_compare(pcx::mpi_handle(*copy), native, &same);
  BOOST_TEST(same == MPI_IDENT);
  MPI_Comm_compare(pcx::mpi_handle(*copy), MPI_COMM_WORLD, &same);
  BOOST_TEST(same == MPI_CONGRUENT);  // same members and order, another context

  const auto alone = world.self();
  BOOST_TEST(alone->size() == 1);
  MPI_Comm_compare(pcx::mpi_handle(*alone), MPI_COMM_SELF, &same);
  BOOST_TEST(same == MPI_IDENT);
  BOOST_TEST(everyone(true));
}

// The child ranks MPI_Comm_split gives: members of a colour ordered by (key, parent rank).
std::vector<std::int32_t> ordered_by_key(int n, int colour, const std::function<int(int)>& colour_of,
                                         const std::function<int(int)>& key_of) {
  std::vector<std::int32_t> members;
  for (int q = 0; q < n; ++q) {
    if (colour_of(q) == colour) members.push_back(q);
  }
  std::stable_sort(members.begin(), members.end(), [&](int a, int b) { return key_of(a) < key_of(b); });
  return members;
}

// The parent ranks of a child's members, in child rank order.
std::vector<std::int32_t> parents_in(const pcx::Communicator& child, int parent_rank) {
  std::vector<std::int32_t> parents(static_cast<std::size_t>(child.size()));
  child.all_gather(std::array<std::int32_t, 1>{parent_rank}, parents);
  return parents;
}

BOOST_AUTO_TEST_CASE(split_orders_by_key_and_breaks_ties_by_parent_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();
  const auto one_colour = [](int) { return 0; };
  const auto reversed = [n](int q) { return n - 1 - q; };
  const auto reversed_pairs = [n](int q) { return (n - 1 - q) / 2; };  // ties within each pair
  const auto tied = [](int) { return 7; };
  const auto parity = [](int q) { return q % 2; };
  struct Case {
    const char* name;
    std::function<int(int)> colour;
    std::function<int(int)> key;
  };
  for (const Case& c : {Case{"reversed", one_colour, reversed}, Case{"reversed pairs", one_colour, reversed_pairs},
                        Case{"all tied, by parity", parity, tied}, Case{"reversed, by parity", parity, reversed}}) {
    const auto child = world.split(c.colour(r), c.key(r));
    BOOST_REQUIRE(child != nullptr);
    const auto want = ordered_by_key(n, c.colour(r), c.colour, c.key);
    BOOST_TEST(parents_in(*child, r) == want, c.name);
    const auto position = std::find(want.begin(), want.end(), r) - want.begin();
    BOOST_TEST(child->rank() == position, c.name);
  }
}

BOOST_AUTO_TEST_CASE(split_checked_of_a_wrong_shape_is_a_comm_error_on_every_rank) {
  const MpiCommunicator world = MpiCommunicator::world();
  const int n = world.size();
  const int r = world.rank();
  if (n == 1) {
    BOOST_TEST_MESSAGE("one rank: the only child shape is size 1, rank 0, which is right");
    const auto child = world.split_checked(0, 0, 1);
    BOOST_TEST((child != nullptr && child->size() == 1 && child->rank() == 0));
    return;
  }
  const auto names = [](std::string_view part) {
    return [part](const pcx::Error& e) { return std::string_view(e.what()).find(part) != std::string_view::npos; };
  };
  // Split by parity, but every rank claims the whole world: the child has ceil(n / 2).
  const std::string members = fmt::format("a child of {} members", (n + 1 - r % 2) / 2);
  BOOST_CHECK_EXCEPTION((void)world.split_checked(r % 2, r / 2, n), pcx::CommError, names(members));
  // One colour and the right size, but every rank claims the last place: the keys tie
  // and parent order decides, so only the last rank is where it said.
  if (r == n - 1) {
    const auto child = world.split_checked(0, n - 1, n);
    BOOST_TEST((child != nullptr && child->rank() == n - 1));
  } else {
    BOOST_CHECK_EXCEPTION((void)world.split_checked(0, n - 1, n), pcx::CommError,
                          names(fmt::format("this process is rank {}, not {} and {}", r, n, n - 1)));
  }
  BOOST_TEST(everyone(true));
}
