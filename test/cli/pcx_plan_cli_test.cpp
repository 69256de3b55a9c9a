// pcx-plan through its real command line.
//
// Every case spawns the built pcx-plan binary with posix_spawn (no shell), reads its
// stdout and stderr through two pipes until both reach end of file, and checks the
// exit status, both streams and, for JSON, the full structure of the output. Group
// lists are checked three ways: against the SPEC's rank formulas (an oracle written
// here, independent of the library), against the library's Topology (exact order),
// and against the seed's golden tables in test/data/seed_golden.md. The JSON text is
// also compared byte for byte with nlohmann's dump() of the whole document, which is
// what pcx-plan printed before it streamed.
//
// The output suite sends stdout elsewhere (/dev/null, /dev/full, a closed descriptor, a
// pipe nobody reads) and, for its memory check only, runs pcx-plan under /bin/sh's
// `ulimit -v`.

#define BOOST_TEST_MODULE pcx_plan_cli
#include <boost/test/unit_test.hpp>

#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "pcx/topology.hpp"
#include "support/config.hpp"

extern char** environ;

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PCX_HAS_ADDRESS_SANITIZER 1
#endif
#endif
#ifndef PCX_HAS_ADDRESS_SANITIZER
#define PCX_HAS_ADDRESS_SANITIZER 0
#endif

namespace {

using pcx::test::make_config;

using Json = nlohmann::ordered_json;
using Groups = std::vector<std::vector<int>>;
using namespace std::chrono_literals;

constexpr std::string_view kPlanPath = PCX_PLAN_PATH;
constexpr std::string_view kErrorPrefix = "pcx-plan: error: ";
constexpr std::string_view kNotePrefix = "pcx-plan: note: ";

// ---------------------------------------------------------------------------------
// Running pcx-plan

[[noreturn]] void throw_errno(int code, const char* what) {
  throw std::system_error(code, std::generic_category(), what);
}

/// A file descriptor closed exactly once.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) noexcept : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~UniqueFd() { reset(); }
  [[nodiscard]] int get() const noexcept { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

/// Both ends of a pipe, close-on-exec so that the child inherits only what dup2 gives it.
struct Pipe {
  UniqueFd read_end, write_end;
  Pipe() {
    std::array<int, 2> fds{};
    if (::pipe2(fds.data(), O_CLOEXEC) != 0) throw_errno(errno, "pipe2");
    read_end = UniqueFd(fds[0]);
    write_end = UniqueFd(fds[1]);
  }
};

class SpawnActions {
 public:
  SpawnActions() {
    if (const int rc = ::posix_spawn_file_actions_init(&actions_); rc != 0) {
      throw_errno(rc, "posix_spawn_file_actions_init");
    }
  }
  SpawnActions(const SpawnActions&) = delete;
  SpawnActions& operator=(const SpawnActions&) = delete;
  ~SpawnActions() { ::posix_spawn_file_actions_destroy(&actions_); }
  void open(int fd, const char* path, int flags) {
    if (const int rc = ::posix_spawn_file_actions_addopen(&actions_, fd, path, flags, 0); rc != 0) {
      throw_errno(rc, "posix_spawn_file_actions_addopen");
    }
  }
  void close(int fd) {
    if (const int rc = ::posix_spawn_file_actions_addclose(&actions_, fd); rc != 0) {
      throw_errno(rc, "posix_spawn_file_actions_addclose");
    }
  }
  void dup2(int from, int to) {
    if (const int rc = ::posix_spawn_file_actions_adddup2(&actions_, from, to); rc != 0) {
      throw_errno(rc, "posix_spawn_file_actions_adddup2");
    }
  }
  [[nodiscard]] const posix_spawn_file_actions_t* get() const noexcept { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_{};
};

/// What one run of pcx-plan did.
struct Outcome {
  std::string command;            // for messages
  std::optional<int> exit_code;   // set when the process exited
  int signal = 0;                 // set when a signal ended it
  bool timed_out = false;         // killed by us after the deadline
  std::string out, err;

  [[nodiscard]] bool exited_with(int code) const { return exit_code && *exit_code == code; }

  [[nodiscard]] std::string describe() const {
    const auto clip = [](const std::string& text) {
      return text.size() <= 1500 ? text : text.substr(0, 1500) + fmt::format("... ({} bytes)", text.size());
    };
    std::string status = exit_code ? fmt::format("exit {}", *exit_code)
                         : timed_out ? std::string("timed out")
                                     : fmt::format("killed by signal {}", signal);
    return fmt::format("`{}`: {}\n--- stdout ---\n{}\n--- stderr ---\n{}", command, status, clip(out), clip(err));
  }
};

/// Where a run's stdout goes.
enum class Stdout {
  pipe,         // read into Outcome::out
  dev_null,     // /dev/null: for large listings whose text is not checked
  dev_full,     // every write fails with ENOSPC
  closed,       // no descriptor 1 at all
  reader_gone,  // a pipe whose read end is closed as soon as the child starts
};

/// Runs pcx-plan with @p args: stdin from /dev/null, stdout as @p to, stderr into a pipe;
/// the pipes are read concurrently (so neither can fill up and block the child) until
/// both are closed. With @p address_space_kib, pcx-plan runs under `ulimit -v` (through
/// /bin/sh, which sets the limit and execs it): its memory, and not the test's, is limited.
Outcome run_plan(const std::vector<std::string>& args, Stdout to = Stdout::pipe,
                 std::optional<long> address_space_kib = std::nullopt, std::chrono::milliseconds limit = 60s) {
  constexpr std::array<std::string_view, 5> kStdoutNames{"", " >/dev/null", " >/dev/full", " >&-", " | (closed)"};
  Outcome outcome;
  outcome.command = fmt::format("pcx-plan {}{}", fmt::join(args, " "), kStdoutNames.at(static_cast<std::size_t>(to)));

  Pipe out_pipe, err_pipe;
  SpawnActions actions;
  actions.open(STDIN_FILENO, "/dev/null", O_RDONLY);
  switch (to) {
    case Stdout::pipe:
    case Stdout::reader_gone: actions.dup2(out_pipe.write_end.get(), STDOUT_FILENO); break;
    case Stdout::dev_null: actions.open(STDOUT_FILENO, "/dev/null", O_WRONLY); break;
    case Stdout::dev_full: actions.open(STDOUT_FILENO, "/dev/full", O_WRONLY); break;
    case Stdout::closed: actions.close(STDOUT_FILENO); break;
  }
  actions.dup2(err_pipe.write_end.get(), STDERR_FILENO);

  std::vector<std::string> storage;
  if (address_space_kib) {
    storage = {"/bin/sh", "-c", fmt::format("ulimit -v {} && exec \"$0\" \"$@\"", *address_space_kib)};
    outcome.command = fmt::format("ulimit -v {}; {}", *address_space_kib, outcome.command);
  }
  storage.emplace_back(kPlanPath);
  storage.insert(storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : storage) argv.push_back(arg.data());
  argv.push_back(nullptr);

  pid_t pid = 0;
  if (const int rc = ::posix_spawn(&pid, storage[0].c_str(), actions.get(), nullptr, argv.data(), environ);
      rc != 0) {
    throw_errno(rc, "posix_spawn pcx-plan");
  }
  // Only the child may hold the write ends, or the reads below never see end of file.
  out_pipe.write_end.reset();
  err_pipe.write_end.reset();
  if (to == Stdout::reader_gone) out_pipe.read_end.reset();

  // A pipe that is not read has fd -1 here, which poll ignores.
  const int out_fd = to == Stdout::pipe ? out_pipe.read_end.get() : -1;
  std::array<pollfd, 2> fds{{{out_fd, POLLIN, 0}, {err_pipe.read_end.get(), POLLIN, 0}}};
  const std::array<std::string*, 2> sinks{&outcome.out, &outcome.err};
  std::array<char, 1 << 16> buffer{};
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int open = out_fd < 0 ? 1 : 2;
  while (open > 0) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      ::kill(pid, SIGKILL);
      outcome.timed_out = true;
      break;
    }
    const int ready = ::poll(fds.data(), fds.size(), static_cast<int>(std::min<long long>(left.count(), INT_MAX)));
    if (ready < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      throw_errno(error, "poll");
    }
    for (std::size_t i = 0; i < fds.size(); ++i) {
      if (fds[i].fd < 0 || fds[i].revents == 0) continue;
      const ssize_t n = ::read(fds[i].fd, buffer.data(), buffer.size());
      if (n > 0) {
        sinks[i]->append(buffer.data(), static_cast<std::size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        fds[i].fd = -1;  // end of file (or a broken pipe): poll ignores negative descriptors
        --open;
      }
    }
  }

  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw_errno(errno, "waitpid");
  }
  if (WIFEXITED(status)) {
    outcome.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    outcome.signal = WTERMSIG(status);
  }
  return outcome;
}

// ---------------------------------------------------------------------------------
// Configurations and the SPEC's formulas

std::vector<std::string> to_args(const pcx::ParallelConfig& c) {
  std::vector<std::string> args{"--world", std::to_string(c.world_size)};
  if (c.tensor_parallel_size != 1) args.insert(args.end(), {"--tp", std::to_string(c.tensor_parallel_size)});
  if (c.pipeline_parallel_size != 1) args.insert(args.end(), {"--pp", std::to_string(c.pipeline_parallel_size)});
  if (!c.expert_parallel_sizes.empty()) {
    args.insert(args.end(), {"--ep", fmt::format("{}", fmt::join(c.expert_parallel_sizes, ","))});
  }
  if (c.expert_order == pcx::ExpertOrder::data_first) args.insert(args.end(), {"--expert-order", "data-first"});
  if (c.zero_hpz_size) args.insert(args.end(), {"--zero-hpz", std::to_string(*c.zero_hpz_size)});
  if (c.ranks_per_node) args.insert(args.end(), {"--ranks-per-node", std::to_string(*c.ranks_per_node)});
  return args;
}

std::vector<std::string> with(std::vector<std::string> args, std::initializer_list<std::string> more) {
  args.insert(args.end(), more);
  return args;
}

using Key = std::array<int, 3>;

/// The ranks of [0, world) grouped by @p key, each group ascending, groups sorted.
Groups partition(int world, const std::function<Key(int)>& key) {
  std::map<Key, std::vector<int>> by_key;
  for (int r = 0; r < world; ++r) by_key[key(r)].push_back(r);
  Groups groups;
  for (auto& entry : by_key) groups.push_back(std::move(entry.second));
  std::ranges::sort(groups);
  return groups;
}

/// Every group kind of @p c in pcx-plan's order, with its groups (as a sorted set)
/// computed from the SPEC's rank formulas, independently of the library.
std::vector<std::pair<std::string, Groups>> spec_layout(const pcx::ParallelConfig& c) {
  const int world = c.world_size;
  const int tp = std::min(c.tensor_parallel_size, world);
  const int pp = c.pipeline_parallel_size;
  const int dp = world / (tp * pp);
  const int stage = world / pp;  // S in the SPEC: r = p*S + d*tp + t
  const auto t = [tp](int r) { return r % tp; };
  const auto d = [tp, stage](int r) { return r % stage / tp; };
  const auto p = [stage](int r) { return r / stage; };

  std::vector<std::pair<std::string, Groups>> kinds;
  kinds.emplace_back("world", partition(world, [](int) { return Key{}; }));
  kinds.emplace_back("tensor_parallel", partition(world, [&](int r) { return Key{p(r), d(r), 0}; }));
  kinds.emplace_back("pipeline_parallel", partition(world, [&](int r) { return Key{d(r), t(r), 0}; }));
  kinds.emplace_back("data_parallel", partition(world, [&](int r) { return Key{p(r), t(r), 0}; }));
  for (const int ep : c.expert_parallel_sizes) {
    const int edp = dp / ep;
    const bool expert_first = c.expert_order == pcx::ExpertOrder::expert_first;
    // expert-first: d = j*ep + e; data-first: d = e*edp + j.
    const auto e = [&, ep, edp](int r) { return expert_first ? d(r) % ep : d(r) / edp; };
    const auto j = [&, ep, edp](int r) { return expert_first ? d(r) / ep : d(r) % edp; };
    kinds.emplace_back(fmt::format("expert_parallel/{}", ep),
                       partition(world, [&](int r) { return Key{p(r), j(r), t(r)}; }));
    kinds.emplace_back(fmt::format("expert_data_parallel/{}", ep),
                       partition(world, [&](int r) { return Key{p(r), e(r), t(r)}; }));
  }
  if (c.zero_hpz_size) {
    const int z = std::min(*c.zero_hpz_size, world);
    kinds.emplace_back("zero_param_intra", partition(world, [z](int r) { return Key{r / z, 0, 0}; }));
  }
  if (c.ranks_per_node) {
    const int n = std::min(*c.ranks_per_node, world);
    kinds.emplace_back("all_to_all_local", partition(world, [n](int r) { return Key{r / n, 0, 0}; }));
    if (world > n) kinds.emplace_back("all_to_all_global", partition(world, [n](int r) { return Key{r % n, 0, 0}; }));
  }
  return kinds;
}

Groups sorted(Groups groups) {
  std::ranges::sort(groups);
  return groups;
}

std::vector<std::string> keys_of(const Json& object) {
  std::vector<std::string> keys;
  for (const auto& item : object.items()) keys.push_back(item.key());
  return keys;
}

bool is_rank_list(const Json& j) {
  return j.is_array() && std::ranges::all_of(j, [](const Json& x) { return x.is_number_integer(); });
}

// ---------------------------------------------------------------------------------
// Checks

/// Runs pcx-plan, requires exit 0, and returns what it printed.
Outcome run_ok(const std::vector<std::string>& args) {
  Outcome o = run_plan(args);
  BOOST_REQUIRE_MESSAGE(o.exited_with(0), "expected exit 0 from " << o.describe());
  return o;
}

/// The clamp notes pcx-plan must print for @p c (on stderr, one line each).
std::string expected_notes(const pcx::ParallelConfig& c) {
  std::string notes;
  const pcx::Topology topology(c);
  for (const std::string& note : topology.clamp_notes()) notes += fmt::format("{}{}\n", kNotePrefix, note);
  return notes;
}

/// The JSON document as pcx-plan wrote it before it streamed: the whole tree built as an
/// nlohmann::ordered_json and dumped. The streamed output must equal it byte for byte.
std::string reference_json(const pcx::ParallelConfig& c, std::optional<int> rank) {
  const pcx::Topology topology(c);
  Json out;
  out["world_size"] = topology.world_size();
  if (rank) out["rank"] = *rank;
  auto& groups = out["groups"] = Json::object();
  for (const pcx::GroupView& view : topology.views()) {
    groups[view.id.name()] = rank ? Json(view.layout.group_of(*rank)) : Json(view.layout.groups());
  }
  return out.dump() + '\n';
}

/// Requires @p o's stdout to be reference_json(c, rank), naming the first difference.
void check_same_json(const Outcome& o, const pcx::ParallelConfig& c, std::optional<int> rank) {
  const std::string want = reference_json(c, rank);
  const auto [got_at, want_at] = std::ranges::mismatch(o.out, want);
  const auto at = static_cast<std::size_t>(got_at - o.out.begin());
  BOOST_CHECK_MESSAGE(o.out == want, o.command << ": JSON differs from nlohmann's dump() at byte " << at << " of "
                                               << want.size() << ": got '" << o.out.substr(at, 40) << "', expected '"
                                               << want.substr(at, 40) << "'");
}

Json parse_json(const Outcome& o) {
  BOOST_CHECK_MESSAGE(!o.out.empty() && o.out.back() == '\n' && std::ranges::count(o.out, '\n') == 1,
                      "JSON output should be one line: " << o.describe());
  try {
    return Json::parse(o.out);
  } catch (const Json::exception& e) {
    BOOST_FAIL("output is not JSON (" << e.what() << "): " << o.describe());
  }
  return {};
}

/// Checks the full JSON listing of @p c: exactly {"world_size", "groups"}, the kinds in
/// pcx-plan's order, each a list of ascending rank lists equal (as a set) to the SPEC's.
/// Returns every kind's groups as listed.
std::map<std::string, Groups> check_full_listing(const pcx::ParallelConfig& c, const Json& j) {
  const std::string what = fmt::format("pcx-plan {}", fmt::join(to_args(c), " "));
  std::map<std::string, Groups> listed;
  BOOST_REQUIRE_MESSAGE(j.is_object(), what << ": top level is not an object");
  BOOST_CHECK_MESSAGE(keys_of(j) == (std::vector<std::string>{"world_size", "groups"}),
                      what << ": top-level keys " << fmt::format("{}", keys_of(j)));
  BOOST_REQUIRE_MESSAGE(j.contains("world_size") && j["world_size"].is_number_integer() &&
                            j["world_size"].get<int>() == c.world_size,
                        what << ": world_size is not " << c.world_size);
  BOOST_REQUIRE_MESSAGE(j.contains("groups") && j["groups"].is_object(), what << ": no groups object");
  const Json& groups = j["groups"];

  const auto spec = spec_layout(c);
  std::vector<std::string> spec_names;
  for (const auto& kind : spec) spec_names.push_back(kind.first);
  BOOST_CHECK_MESSAGE(keys_of(groups) == spec_names, what << ": kinds " << fmt::format("{}", keys_of(groups))
                                                          << ", expected " << fmt::format("{}", spec_names));
  for (const auto& [name, expected] : spec) {
    if (!groups.contains(name)) continue;  // reported above
    const Json& value = groups[name];
    const bool well_formed = value.is_array() && std::ranges::all_of(value, is_rank_list);
    BOOST_CHECK_MESSAGE(well_formed, what << ": " << name << " is not a list of rank lists: " << value.dump());
    if (!well_formed) continue;
    Groups actual = value.get<Groups>();
    BOOST_CHECK_MESSAGE(std::ranges::all_of(actual, [](const auto& g) { return std::ranges::is_sorted(g); }),
                        what << ": " << name << " has a group that is not in ascending rank order");
    BOOST_CHECK_MESSAGE(sorted(actual) == expected, what << ": " << name << " is " << fmt::format("{}", actual)
                                                         << ", the SPEC gives " << fmt::format("{}", expected));
    listed.emplace(name, std::move(actual));
  }
  return listed;
}

/// Checks the --rank listing: exactly {"world_size", "rank", "groups"}, the same kinds
/// in the same order, each the group of @p rank in the full listing.
void check_rank_listing(const pcx::ParallelConfig& c, int rank, const Json& j,
                        const std::map<std::string, Groups>& full, const std::vector<std::string>& kind_order) {
  const std::string what = fmt::format("pcx-plan {} --rank {}", fmt::join(to_args(c), " "), rank);
  BOOST_REQUIRE_MESSAGE(j.is_object(), what << ": top level is not an object");
  BOOST_CHECK_MESSAGE(keys_of(j) == (std::vector<std::string>{"world_size", "rank", "groups"}),
                      what << ": top-level keys " << fmt::format("{}", keys_of(j)));
  BOOST_CHECK_MESSAGE(j.value("world_size", -1) == c.world_size, what << ": wrong world_size");
  BOOST_CHECK_MESSAGE(j.value("rank", -1) == rank, what << ": wrong rank");
  BOOST_REQUIRE_MESSAGE(j.contains("groups") && j["groups"].is_object(), what << ": no groups object");
  const Json& groups = j["groups"];
  BOOST_CHECK_MESSAGE(keys_of(groups) == kind_order, what << ": kinds " << fmt::format("{}", keys_of(groups)));
  for (const auto& [name, all] : full) {
    if (!groups.contains(name)) continue;
    BOOST_CHECK_MESSAGE(is_rank_list(groups[name]), what << ": " << name << " is not a rank list");
    if (!is_rank_list(groups[name])) continue;
    const auto mine = groups[name].get<std::vector<int>>();
    const auto it = std::ranges::find_if(all, [rank](const auto& g) { return std::ranges::count(g, rank) == 1; });
    BOOST_CHECK_MESSAGE(it != all.end() && *it == mine,
                        what << ": " << name << " is " << fmt::format("{}", mine) << ", the full listing disagrees");
  }
}

/// Runs the full listing and a --rank listing of @p c and checks both.
void check_config(const pcx::ParallelConfig& c, int rank) {
  const Outcome full = run_ok(with(to_args(c), {"--format", "json"}));
  BOOST_CHECK_MESSAGE(full.err == expected_notes(c), "unexpected stderr: " << full.describe());
  check_same_json(full, c, std::nullopt);
  const auto listed = check_full_listing(c, parse_json(full));
  std::vector<std::string> order;
  for (const auto& kind : spec_layout(c)) order.push_back(kind.first);

  const Outcome one = run_ok(with(to_args(c), {"--format", "json", "--rank", std::to_string(rank)}));
  BOOST_CHECK_MESSAGE(one.err == expected_notes(c), "unexpected stderr: " << one.describe());
  check_same_json(one, c, rank);
  check_rank_listing(c, rank, parse_json(one), listed, order);
}

/// Requires a usage error: exit 2, nothing on stdout, exactly one line on stderr that
/// starts with "pcx-plan: error: " and contains every one of @p mentions.
void check_usage_error(const std::vector<std::string>& args, const std::vector<std::string>& mentions) {
  const Outcome o = run_plan(args);
  BOOST_TEST_CONTEXT(o.describe()) {
    BOOST_CHECK_MESSAGE(o.exited_with(2), "exit status is not 2");
    BOOST_CHECK_MESSAGE(o.out.empty(), "stdout is not empty");
    BOOST_CHECK_MESSAGE(!o.err.empty() && o.err.back() == '\n' && std::ranges::count(o.err, '\n') == 1,
                        "stderr is not exactly one line");
    BOOST_CHECK_MESSAGE(o.err.starts_with(kErrorPrefix), "stderr does not start with '" << kErrorPrefix << "'");
    for (const std::string& mention : mentions) {
      BOOST_CHECK_MESSAGE(o.err.find(mention) != std::string::npos, "stderr does not mention '" << mention << "'");
    }
  }
}


Groups json_groups(const Outcome& o, const std::string& kind) {
  const Json j = parse_json(o);
  BOOST_REQUIRE_MESSAGE(j.contains("groups") && j["groups"].contains(kind), "no " << kind << ": " << o.describe());
  return j["groups"][kind].get<Groups>();
}

}  // namespace

// ---------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(success)

BOOST_AUTO_TEST_CASE(json_structure) {
  using pcx::ExpertOrder;
  const std::vector<std::pair<pcx::ParallelConfig, int>> cases{
      {make_config(1, 1, 1), 0},
      {make_config(8, 1, 1), 5},
      {make_config(16, 2, 1, {4}), 3},
      {make_config(16, 2, 1, {4}, ExpertOrder::data_first), 3},
      {make_config(16, 2, 2, {2}), 13},
      {make_config(24, 2, 2, {3, 1}), 17},
      {make_config(32, 2, 1, {2, 4, 8}, ExpertOrder::data_first), 31},
      {make_config(16, 1, 1, {}, ExpertOrder::expert_first, 4), 9},  // hpZ only
      {make_config(16, 2, 1, {2}, ExpertOrder::expert_first, 8, 4), 6},  // 4 nodes: local and global
      {make_config(8, 2, 1, {}, ExpertOrder::expert_first, std::nullopt, 8), 7},  // one full node: no global
      {make_config(4, 1, 1, {}, ExpertOrder::expert_first, std::nullopt, 8), 2},  // less than a node: no global
      {make_config(48, 3, 2, {2, 4, 8}, ExpertOrder::data_first, 6, 12), 40},
  };
  for (const auto& [c, rank] : cases) {
    BOOST_TEST_CONTEXT(fmt::format("pcx-plan {}", fmt::join(to_args(c), " "))) {
      BOOST_TEST(expected_notes(c).empty());  // these cases clamp nothing: stderr must be empty
      check_config(c, rank);
    }
  }
}

BOOST_AUTO_TEST_CASE(clamped_sizes_succeed_with_a_note) {
  // tp and hpZ larger than the world are clamped (SPEC: "clamped, and the clamp is logged").
  const pcx::ParallelConfig c = make_config(4, 8, 1, {}, pcx::ExpertOrder::expert_first, 64);
  const Outcome o = run_ok(with(to_args(c), {"--format", "json"}));
  BOOST_TEST(std::ranges::count(o.err, '\n') == 2);
  BOOST_TEST(o.err.find("tensor parallel size 8") != std::string::npos);
  BOOST_TEST(o.err.find("ZeRO hpZ partition size 64") != std::string::npos);
  check_config(c, 3);
}

BOOST_AUTO_TEST_CASE(seed_example_expert_first) {
  // The seed's own docstring example: W=16, tp=2, ep=4.
  const Outcome o = run_ok({"--world", "16", "--tp", "2", "--ep", "4", "--format", "json"});
  BOOST_TEST(o.err.empty());
  const Groups ep = json_groups(o, "expert_parallel/4");
  const Groups edp = json_groups(o, "expert_data_parallel/4");
  const Groups want_ep{{0, 2, 4, 6}, {8, 10, 12, 14}, {1, 3, 5, 7}, {9, 11, 13, 15}};
  const Groups want_edp{{0, 8}, {2, 10}, {4, 12}, {6, 14}, {1, 9}, {3, 11}, {5, 13}, {7, 15}};
  BOOST_CHECK_MESSAGE(sorted(ep) == sorted(want_ep), fmt::format("expert_parallel/4 = {}", ep));
  BOOST_CHECK_MESSAGE(sorted(edp) == sorted(want_edp), fmt::format("expert_data_parallel/4 = {}", edp));
}

BOOST_AUTO_TEST_CASE(seed_example_data_first) {
  // seed_golden.md G2: W=16 tp=2 ep=4 pp=1 D+E=True.
  const Outcome o =
      run_ok({"--world", "16", "--tp", "2", "--ep", "4", "--expert-order", "data-first", "--format", "json"});
  BOOST_TEST(o.err.empty());
  const Groups ep = json_groups(o, "expert_parallel/4");
  const Groups edp = json_groups(o, "expert_data_parallel/4");
  const Groups want_ep{{0, 4, 8, 12}, {2, 6, 10, 14}, {1, 5, 9, 13}, {3, 7, 11, 15}};
  const Groups want_edp{{0, 2}, {4, 6}, {8, 10}, {12, 14}, {1, 3}, {5, 7}, {9, 11}, {13, 15}};
  BOOST_CHECK_MESSAGE(sorted(ep) == sorted(want_ep), fmt::format("expert_parallel/4 = {}", ep));
  BOOST_CHECK_MESSAGE(sorted(edp) == sorted(want_edp), fmt::format("expert_data_parallel/4 = {}", edp));
}

BOOST_AUTO_TEST_CASE(every_g2_golden_case) {
  // Every case of seed_golden.md section G2, as sets of groups; the seed's
  // AssertionError cases must be usage errors.
  std::ifstream file(std::string(PCX_CONFORMANCE_DIR) + "/seed_golden.md");
  BOOST_REQUIRE_MESSAGE(file, "cannot open " PCX_CONFORMANCE_DIR "/seed_golden.md");
  const std::regex header(R"(^W=(\d+) tp=(\d+) ep=(\d+) pp=(\d+) D\+E=(True|False)$)");
  const std::regex list(R"(^  (ep|edp) += (\[.*\])$)");
  bool in_g2 = false;
  int checked = 0;
  int errors = 0;
  std::vector<std::string> args;
  std::optional<Outcome> current;
  std::string line;
  std::smatch m;
  while (std::getline(file, line)) {
    if (line.starts_with("### ")) in_g2 = line.starts_with("### G2.");
    if (!in_g2) continue;
    if (std::regex_match(line, m, header)) {
      args = {"--world", m[1], "--tp", m[2], "--ep", m[3], "--pp", m[4], "--expert-order",
              m[5] == "True" ? "data-first" : "expert-first", "--format", "json"};
      current = run_plan(args);
    } else if (current && std::regex_match(line, m, list)) {
      BOOST_REQUIRE_MESSAGE(current->exited_with(0), current->describe());
      const std::string kind = fmt::format("{}/{}", m[1] == "ep" ? "expert_parallel" : "expert_data_parallel", args[5]);
      const Groups want = Json::parse(m[2].str()).get<Groups>();
      const Groups got = json_groups(*current, kind);
      BOOST_CHECK_MESSAGE(sorted(got) == sorted(want), current->command << ": " << kind << " = "
                                                       << fmt::format("{}", got) << ", seed: " << m[2].str());
      ++checked;
    } else if (current && line.find("-> AssertionError") != std::string::npos) {
      BOOST_CHECK_MESSAGE(current->exited_with(2) && current->out.empty() &&
                              std::ranges::count(current->err, '\n') == 1,
                          "the seed fails here; pcx-plan should report a usage error: " << current->describe());
      ++errors;
    }
  }
  BOOST_TEST_MESSAGE("G2: " << checked << " group lists and " << errors << " rejected configurations checked");
  BOOST_TEST(checked >= 30);
  BOOST_TEST(errors >= 3);
}

BOOST_AUTO_TEST_CASE(agrees_with_topology_on_random_configurations) {
  constexpr std::uint32_t kSeed = 20240611;
  constexpr int kConfigs = 300;
  BOOST_TEST_MESSAGE("random configurations: seed " << kSeed << ", " << kConfigs << " configurations");
  std::mt19937 rng(kSeed);
  const auto pick = [&rng](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const auto divisors = [](int n) {
    std::vector<int> out;
    for (int d = 1; d <= n; ++d) {
      if (n % d == 0) out.push_back(d);
    }
    return out;
  };
  const auto any_of = [&pick](const std::vector<int>& v) { return v[static_cast<std::size_t>(pick(0, static_cast<int>(v.size()) - 1))]; };

  for (int i = 0; i < kConfigs; ++i) {
    pcx::ParallelConfig c;
    const int tp = any_of({1, 1, 2, 2, 3, 4, 8});
    const int pp = any_of({1, 1, 2, 3, 4});
    const int dp = pick(1, 48);
    c.world_size = tp * pp * dp;
    c.tensor_parallel_size = tp;
    c.pipeline_parallel_size = pp;
    if (pp == 1 && dp == 1 && pick(0, 3) == 0) c.tensor_parallel_size = tp * pick(2, 3);  // clamped to the world
    std::vector<int> eps = divisors(dp);
    std::ranges::shuffle(eps, rng);
    eps.resize(static_cast<std::size_t>(pick(0, std::min(3, static_cast<int>(eps.size())))));
    c.expert_parallel_sizes = eps;
    c.expert_order = pick(0, 1) == 0 ? pcx::ExpertOrder::expert_first : pcx::ExpertOrder::data_first;
    if (pick(0, 2) == 0) c.zero_hpz_size = pick(0, 5) == 0 ? c.world_size * 2 : any_of(divisors(c.world_size));
    if (pick(0, 2) == 0) c.ranks_per_node = pick(0, 5) == 0 ? c.world_size + pick(1, 9) : any_of(divisors(c.world_size));
    const int rank = pick(0, c.world_size - 1);

    BOOST_TEST_CONTEXT(fmt::format("configuration {}: pcx-plan {} (rank {})", i, fmt::join(to_args(c), " "), rank)) {
      const pcx::Topology topology(c);
      const Outcome full = run_ok(with(to_args(c), {"--format", "json"}));
      BOOST_CHECK_MESSAGE(full.err == expected_notes(c), "unexpected stderr: " << full.describe());
      check_same_json(full, c, std::nullopt);
      const Json j = parse_json(full);
      check_full_listing(c, j);  // structure, and the SPEC's formulas
      std::vector<std::string> names;
      for (const pcx::GroupView& view : topology.views()) names.push_back(view.id.name());
      BOOST_CHECK_MESSAGE(keys_of(j["groups"]) == names, fmt::format("kinds {} but Topology has {}",
                                                                      keys_of(j["groups"]), names));
      for (const pcx::GroupView& view : topology.views()) {
        const std::string name = view.id.name();
        if (!j["groups"].contains(name)) continue;
        const Groups listed = j["groups"][name].get<Groups>();
        BOOST_CHECK_MESSAGE(listed == view.layout.groups(),
                            fmt::format("{}: pcx-plan lists {}, GroupLayout::groups() is {}", name, listed,
                                        view.layout.groups()));
      }

      const Outcome one = run_ok(with(to_args(c), {"--format", "json", "--rank", std::to_string(rank)}));
      check_same_json(one, c, rank);
      const Json k = parse_json(one);
      for (const pcx::GroupView& view : topology.views()) {
        const std::string name = view.id.name();
        BOOST_CHECK_MESSAGE(k.contains("groups") && k["groups"].contains(name) &&
                                k["groups"][name] == Json(view.layout.group_of(rank)),
                            fmt::format("--rank {}: {} disagrees with GroupLayout::group_of", rank, name));
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(table_mentions_every_kind) {
  const pcx::ParallelConfig c = make_config(32, 2, 2, {2, 4}, pcx::ExpertOrder::data_first, 8, 4);
  const pcx::Topology topology(c);
  BOOST_REQUIRE(topology.views().size() == 11);
  for (const bool one_rank : {false, true}) {
    const Outcome o = run_ok(one_rank ? with(to_args(c), {"--rank", "21"}) : to_args(c));
    BOOST_TEST_CONTEXT(o.describe()) {
      BOOST_TEST(o.err.empty());
      for (const pcx::GroupView& view : topology.views()) {
        BOOST_CHECK_MESSAGE(o.out.find(view.id.name()) != std::string::npos, "no " << view.id.name());
      }
      BOOST_TEST((o.out.find("rank 21") != std::string::npos) == one_rank);
    }
  }
  // --format table is the default.
  BOOST_TEST(run_ok(with(to_args(c), {"--format", "table"})).out == run_ok(to_args(c)).out);
}

// The picture: one cell per rank, filled by the colour of its group in the chosen kind.
BOOST_AUTO_TEST_CASE(svg_draws_every_rank_in_its_group_colour) {
  const pcx::ParallelConfig c = make_config(16, 2, 1, {4}, pcx::ExpertOrder::expert_first, {}, 8);
  const pcx::Topology topology(c);
  const pcx::GroupLayout& layout = topology.layout({pcx::GroupKind::expert_parallel, 4});
  const Outcome o = run_ok(with(to_args(c), {"--format", "svg", "--colour-by", "expert_parallel/4", "--rank", "5"}));
  BOOST_TEST_CONTEXT(o.describe()) {
    BOOST_TEST(o.err.empty());
    BOOST_TEST(o.out.starts_with("<svg "));
    BOOST_TEST(o.out.ends_with("</svg>\n"));
    for (int r = 0; r < 16; ++r) {
      // Each rank's cell names its rank and its group.
      const std::string cell = fmt::format(">{}</text>\n<text x=", r);
      BOOST_CHECK_MESSAGE(o.out.find(cell) != std::string::npos, "no cell for rank " << r);
      const std::size_t label = o.out.find(">g", o.out.find(cell));
      BOOST_TEST(o.out.substr(label, fmt::format(">g{}<", layout.colour(r)).size()) ==
                 fmt::format(">g{}<", layout.colour(r)));
    }
    // Rank 5's group is outlined: four thick borders.
    std::size_t thick = 0;
    for (std::size_t at = o.out.find("stroke-width=\"3\""); at != std::string::npos;
         at = o.out.find("stroke-width=\"3\"", at + 1)) {
      ++thick;
    }
    BOOST_TEST(thick == 4U);
  }
  // Without --colour-by the first expert kind colours the picture.
  BOOST_TEST(run_ok(with(to_args(c), {"--format", "svg"})).out.find("coloured by expert_parallel/4") !=
             std::string::npos);
}

BOOST_AUTO_TEST_CASE(check_names_kinds_that_cross_nodes_needlessly) {
  // 64 = dp 8 x tp 8 under 'dp-tp': every tp group {t, t+8, ...} spans all 8 nodes of 8.
  const Outcome bad = run_plan({"--world", "64", "--tp", "8", "--order", "dp-tp", "--ranks-per-node", "8", "--check"});
  BOOST_TEST_CONTEXT(bad.describe()) {
    BOOST_TEST(bad.exited_with(3));
    BOOST_TEST(bad.out == "placement: tensor_parallel: 8 of 8 groups cross nodes of 8 ranks; order 'tp-dp' keeps them "
                          "inside nodes and moves out no kind of axes as fast in Megatron's default order\n");
  }
  // Tensor parallel groups of 8 on nodes of 4 cannot fit; pairing data parallel would
  // spread them over 4 nodes each instead of 2, so that is not proposed.
  const Outcome too_big = run_plan({"--world", "16", "--tp", "8", "--ranks-per-node", "4", "--check"});
  BOOST_TEST_CONTEXT(too_big.describe()) {
    BOOST_TEST(too_big.exited_with(3));
    BOOST_TEST(too_big.out ==
               "placement: tensor_parallel: groups of 8 ranks cannot fit in nodes of 4 ranks: 2 of 2 groups cross "
               "nodes and no order keeps them inside; give nodes of at least 8 ranks or smaller groups\n");
  }
  const Outcome good = run_ok({"--world", "64", "--tp", "8", "--ranks-per-node", "8", "--check"});
  BOOST_TEST(good.out == "placement: every kind that can stay inside nodes of 8 ranks does\n");
  const Outcome no_nodes = run_plan({"--world", "64", "--tp", "8", "--check"});
  BOOST_TEST(no_nodes.exited_with(2));
  BOOST_TEST(no_nodes.err == "pcx-plan: error: --check: give --ranks-per-node, the size of a node\n");
}

BOOST_AUTO_TEST_CASE(help) {
  const std::vector<std::vector<std::string>> cases{{"--help"}, {"-h"}, {"--world", "8", "--help"}};
  for (const std::vector<std::string>& args : cases) {
    const Outcome o = run_ok(args);
    BOOST_TEST_CONTEXT(o.describe()) {
      BOOST_TEST(o.err.empty());
      BOOST_TEST(o.out.find("Usage") != std::string::npos);
      for (const char* flag : {"--world", "--tp", "--pp", "--ep", "--expert-order", "--zero-hpz",
                               "--ranks-per-node", "--rank", "--format", "--cp", "--etp", "--order", "--megatron",
                               "--check"}) {
        BOOST_CHECK_MESSAGE(o.out.find(flag) != std::string::npos, "help does not mention " << flag);
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------

BOOST_AUTO_TEST_SUITE(usage_errors)

BOOST_AUTO_TEST_CASE(command_line_syntax) {
  check_usage_error({"--world", "8", "--bogus"}, {"--bogus"});
  check_usage_error({"--world", "8", "-x"}, {"-x"});
  check_usage_error({"--world"}, {"--world"});
  check_usage_error({"--tp", "2", "--world"}, {"--world"});
  check_usage_error({"--world", "8", "--tp"}, {"--tp"});
  check_usage_error({"--world", "8", "--tp="}, {"--tp"});
  check_usage_error({}, {"--world"});
  check_usage_error({"--tp", "2"}, {"--world"});
  check_usage_error({"--world", "8", "extra"}, {"extra"});
  check_usage_error({"--world", "8", "--world", "16"}, {"--world"});
  check_usage_error({"--world", "8", "--rank", "1", "--rank", "2"}, {"--rank"});
  check_usage_error({"--world", "8", "--format", "json", "--format", "table"}, {"--format"});
}

BOOST_AUTO_TEST_CASE(numbers) {
  check_usage_error({"--world", "8", "--tp", "x"}, {"--tp", "'x'"});
  check_usage_error({"--world", "eight"}, {"--world", "'eight'"});
  check_usage_error({"--world", "8", "--pp", "2.5"}, {"--pp", "2.5"});
  check_usage_error({"--world", "8", "--ep", "2,,4"}, {"--ep"});
  check_usage_error({"--world", "8", "--ep", "2,"}, {"--ep"});
  check_usage_error({"--world", "8", "--ep", ""}, {"--ep"});
  check_usage_error({"--world", "8", "--ep", "2,x"}, {"--ep", "'x'"});
  check_usage_error({"--world", "99999999999"}, {"--world", "99999999999"});
  check_usage_error({"--world", "8", "--ep", "99999999999"}, {"--ep", "99999999999"});
  check_usage_error({"--world", "8", "--rank", "-99999999999"}, {"--rank", "-99999999999"});
}

BOOST_AUTO_TEST_CASE(sizes_below_one) {
  check_usage_error({"--world", "0"}, {"world size 0"});
  check_usage_error({"--world", "-8"}, {"world size -8"});
  check_usage_error({"--world", "8", "--tp", "0"}, {"tensor parallel size 0"});
  check_usage_error({"--world", "8", "--pp", "0"}, {"pipeline parallel size 0"});
  check_usage_error({"--world", "8", "--pp", "-2"}, {"pipeline parallel size -2"});
  check_usage_error({"--world", "8", "--ep", "0"}, {"expert parallel size 0"});
  check_usage_error({"--world", "8", "--ep", "2,-4"}, {"expert parallel size -4"});
  check_usage_error({"--world", "8", "--zero-hpz", "0"}, {"hpZ", "0"});
  check_usage_error({"--world", "8", "--ranks-per-node", "0"}, {"ranks per node 0"});
}

BOOST_AUTO_TEST_CASE(spec_rules) {
  check_usage_error({"--world", "16", "--tp", "3"}, {"16", "tensor parallel size 3"});
  check_usage_error({"--world", "16", "--tp", "2", "--pp", "3"}, {"16", "pipeline parallel size 3"});
  check_usage_error({"--world", "16", "--tp", "2", "--ep", "3"}, {"expert parallel size 3", "data parallel size 8"});
  check_usage_error({"--world", "12", "--tp", "2", "--ep", "4"}, {"expert parallel size 4", "data parallel size 6"});
  check_usage_error({"--world", "16", "--ep", "2,4,2"}, {"expert parallel size 2", "twice"});
  check_usage_error({"--world", "16", "--zero-hpz", "3"}, {"hpZ", "3", "16"});
  check_usage_error({"--world", "12", "--ranks-per-node", "8"}, {"12", "8"});
  // Products that overflow an int are reported, not wrapped.
  check_usage_error({"--world", "16", "--tp", "2147483647", "--pp", "2147483647"}, {"2147483647"});
  check_usage_error({"--world", "2147483647", "--tp", "2147483647", "--pp", "2147483647"}, {"2147483647"});
  check_usage_error({"--world", "2147483646", "--tp", "2", "--pp", "1073741823", "--ep", "2"},
                    {"expert parallel size 2"});
}

BOOST_AUTO_TEST_CASE(choices_and_ranges) {
  check_usage_error({"--world", "8", "--rank", "8"}, {"--rank", "8"});
  check_usage_error({"--world", "8", "--rank", "-1"}, {"--rank", "-1"});
  check_usage_error({"--world", "8", "--rank", "8", "--format", "json"}, {"--rank", "8"});
  check_usage_error({"--world", "8", "--expert-order", "sideways"}, {"sideways"});
  check_usage_error({"--world", "8", "--expert-order", ""}, {"expert order"});
  check_usage_error({"--world", "8", "--format", "yaml"}, {"--format", "yaml"});
  check_usage_error({"--world", "8", "--format", "svg", "--colour-by", "expert_parallel/3"},
                    {"--colour-by", "expert_parallel/3"});
  check_usage_error({"--world", "8", "--colour-by", "world"}, {"--colour-by", "svg"});
  check_usage_error({"--world", "8192", "--format", "svg"}, {"svg", "8192"});
  check_usage_error({"--world", "33554432"}, {"--world", "33554432"});
  check_usage_error({"--world", "16777218"}, {"--world", "16777218"});
  check_usage_error({"--world", "2147483647", "--rank", "0"}, {"--world", "2147483647"});
}

// A flag whose value is left out, followed by another flag, names the flag.
BOOST_AUTO_TEST_CASE(missing_value_before_another_flag) {
  check_usage_error({"--world", "8", "--tp", "--pp", "2"}, {"--tp"});
  check_usage_error({"--world", "--tp", "2"}, {"--world"});
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------------
// Large listings, the output limit, and write errors

BOOST_AUTO_TEST_SUITE(output)

// Several times the 64 KiB pcx-plan buffers, so the document is written in many pieces.
BOOST_AUTO_TEST_CASE(large_json_is_the_same_document) {
  const pcx::ParallelConfig c = make_config(65536, 8, 4, {8, 64}, pcx::ExpertOrder::data_first, 8, 8);
  check_same_json(run_ok(with(to_args(c), {"--format", "json"})), c, std::nullopt);
  check_same_json(run_ok(with(to_args(c), {"--format", "json", "--rank", "40000"})), c, 40000);
}

// 2^21 ranks in eleven kinds is about 175 MB of JSON, which pcx-plan once held as a tree of
// about 1 GB; streamed, it runs in 128 MiB of address space (libraries included) whatever
// the world size.
BOOST_AUTO_TEST_CASE(memory_does_not_grow_with_the_listing) {
#if defined(__SANITIZE_ADDRESS__) || PCX_HAS_ADDRESS_SANITIZER
  BOOST_TEST_MESSAGE("skipped: AddressSanitizer reserves far more address space than any ulimit -v allows");
#else
  constexpr long kAddressSpaceKib = 128 * 1024;
  const pcx::ParallelConfig c = make_config(1 << 21, 8, 4, {8, 64}, pcx::ExpertOrder::expert_first, 8, 8);
  const std::vector<std::vector<std::string>> formats{
      {"--format", "json"}, {"--format", "table"}, {"--format", "json", "--rank", "1234567"}};
  for (const std::vector<std::string>& format : formats) {
    std::vector<std::string> args = to_args(c);
    args.insert(args.end(), format.begin(), format.end());
    const Outcome o = run_plan(args, Stdout::dev_null, kAddressSpaceKib);
    BOOST_TEST_CONTEXT(o.describe()) {
      BOOST_TEST(o.exited_with(0));
      BOOST_TEST(o.err.empty());
    }
  }
#endif
}

// 2^24 ranks with every power of two as an expert parallel size: 54 kinds, about 7 GiB.
// Refused from arithmetic on the sizes, before any note or byte of output, in no time.
BOOST_AUTO_TEST_CASE(a_listing_over_the_limit_is_refused_before_anything_is_written) {
  std::vector<int> eps;
  for (int ep = 1; ep <= 1 << 24; ep *= 2) eps.push_back(ep);
  const std::vector<std::string> huge{"--world",    "16777216", "--ep", fmt::format("{}", fmt::join(eps, ",")),
                                      "--zero-hpz", "33554432"};  // clamped: a note, were it listed
  for (const std::string format : {"json", "table"}) {
    const auto start = std::chrono::steady_clock::now();
    check_usage_error(with(huge, {"--format", format}), {"--format " + format, "GiB", "4294967296", "--rank"});
    const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start);
    BOOST_TEST(took.count() < 10000, "refusing took " << took.count() << " ms");
  }
}

BOOST_AUTO_TEST_CASE(a_full_disk_is_an_error) {
  const std::string full = "pcx-plan: error: cannot write output: No space left on device\n";
  const std::vector<std::vector<std::string>> cases{
      {"--world", "8", "--format", "json"},  // one buffer: the final flush fails
      {"--world", "8", "--format", "json", "--rank", "3"},
      {"--world", "8"},
      {"--world", "65536", "--tp", "8", "--ep", "8", "--format", "json"},  // fails after the first 64 KiB
      {"--world", "65536", "--tp", "8", "--ep", "8"},
      {"--world", "64", "--format", "svg"},
      {"--help"},
  };
  for (const std::vector<std::string>& args : cases) {
    const Outcome o = run_plan(args, Stdout::dev_full);
    BOOST_TEST_CONTEXT(o.describe()) {
      BOOST_TEST(o.exited_with(1));
      BOOST_TEST(o.err == full);
    }
  }
}

BOOST_AUTO_TEST_CASE(a_closed_stdout_is_an_error) {
  const std::string prefix = "pcx-plan: error: cannot write output: ";
  for (const std::vector<std::string>& args : {std::vector<std::string>{"--world", "8", "--format", "json"},
                                               std::vector<std::string>{"--world", "65536", "--tp", "8"}}) {
    const Outcome o = run_plan(args, Stdout::closed);
    BOOST_TEST_CONTEXT(o.describe()) {
      BOOST_TEST(o.exited_with(1));
      BOOST_TEST(o.err.starts_with(prefix));
      BOOST_TEST(std::ranges::count(o.err, '\n') == 1);
    }
  }
  // A reader that goes away mid-listing (more than a pipe holds): SIGPIPE ends pcx-plan as
  // it ends any filter in a shell pipeline, or, where SIGPIPE is ignored, exit 1 with the
  // message. Never exit 0.
  const Outcome o = run_plan({"--world", "65536", "--tp", "8"}, Stdout::reader_gone);
  BOOST_TEST_CONTEXT(o.describe()) {
    BOOST_TEST((o.signal == SIGPIPE || (o.exited_with(1) && o.err.starts_with(prefix))));
  }
}

BOOST_AUTO_TEST_SUITE_END()

// ---------------------------------------------------------------------------
// Megatron's flags (--cp, --etp, --order) and kinds (--megatron).
// ---------------------------------------------------------------------------
BOOST_AUTO_TEST_SUITE(megatron)

namespace {

// The groups a --rank listing in JSON gives @p expected kinds.
void check_rank_groups(const Json& j, const std::map<std::string, std::vector<int>>& expected) {
  for (const auto& [kind, members] : expected) {
    BOOST_TEST_REQUIRE(j["groups"].contains(kind), kind);
    BOOST_TEST(j["groups"][kind].get<std::vector<int>>() == members, boost::test_tools::per_element());
  }
}

const std::vector<std::string> kMegatronArgs{"--world", "16", "--tp",    "2", "--cp",    "2", "--pp", "2", "--ep",
                                             "2",       "--etp", "1", "--order", "tp-cp-ep-dp-pp", "--megatron"};

}  // namespace

BOOST_AUTO_TEST_CASE(rank_listing_has_coordinates_and_every_kind_worked_out_by_hand) {
  // W 16 = tp 2 x cp 2 x dp 2 x pp 2; expert grid etp 1 x ep 2 x edp 4 x pp 2. Rank 13 = 0b1101.
  const Outcome o = run_ok(with(kMegatronArgs, {"--format", "json", "--rank", "13"}));
  const Json j = parse_json(o);
  BOOST_TEST(j["coordinates"].dump() ==
             R"({"pipeline":1,"first_pipeline_stage":false,"last_pipeline_stage":true,"data":1,"context":0,)"
             R"("tensor":1,"experts":{"2":{"tensor":0,"expert":1,"data":2}}})");
  const std::map<std::string, std::vector<int>> expected{
      {"tensor_parallel", {12, 13}},
      {"context_parallel", {13, 15}},
      {"data_parallel", {9, 13}},
      {"pipeline_parallel", {5, 13}},
      {"data_context_parallel", {9, 11, 13, 15}},
      {"tensor_context_parallel", {12, 13, 14, 15}},
      {"tensor_data_parallel", {8, 9, 12, 13}},
      {"tensor_data_context_parallel", {8, 9, 10, 11, 12, 13, 14, 15}},
      {"model_parallel", {4, 5, 12, 13}},
      {"embedding", {5, 13}},
      {"expert_parallel/2", {12, 13}},
      {"expert_data_parallel/2", {9, 11, 13, 15}},
      {"expert_tensor_parallel/2", {13}},
      {"tensor_expert_parallel/2", {12, 13}},
      {"tensor_expert_pipeline_parallel/2", {4, 5, 12, 13}},
  };
  check_rank_groups(j, expected);
  // Rank 13 is on the last stage: no position embedding group.
  BOOST_TEST(!j["groups"].contains("position_embedding"));
}

BOOST_AUTO_TEST_CASE(full_listing_has_megatrons_kinds_only_when_asked) {
  const Json all = parse_json(run_ok(with(kMegatronArgs, {"--format", "json"})));
  BOOST_TEST(all["groups"].size() == 17u);
  BOOST_TEST(all["groups"]["embedding"].dump() == "[[0,8],[1,9],[2,10],[3,11],[4,12],[5,13],[6,14],[7,15]]");
  std::vector<std::string> without(kMegatronArgs.begin(), kMegatronArgs.end() - 1);
  const Json plain = parse_json(run_ok(with(without, {"--format", "json"})));
  BOOST_TEST(keys_of(plain["groups"]) == (std::vector<std::string>{"world", "tensor_parallel", "pipeline_parallel",
                                                                   "data_parallel", "expert_parallel/2",
                                                                   "expert_data_parallel/2"}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(table_names_the_sizes_the_coordinates_and_ranks_without_a_group) {
  const Outcome o = run_ok({"--world", "8", "--tp", "2", "--pp", "4", "--megatron", "--rank", "2"});
  BOOST_TEST(o.out.find("coordinates: pipeline 1, data 0, context 0, tensor 0\n") != std::string::npos, o.out);
  BOOST_TEST(std::regex_search(o.out, std::regex(R"(\nembedding +none +- +none\n)")), o.out);
  const Outcome header = run_ok(kMegatronArgs);
  BOOST_TEST(header.out.starts_with("world 16 = pipeline 2 x data 2 x context 2 x tensor 2, order tp-cp-ep-dp-pp, "
                                    "experts 2, expert tensor 1\n"),
             header.out.substr(0, 120));
}

BOOST_AUTO_TEST_CASE(svg_shows_ranks_in_no_group) {
  const Outcome o = run_ok({"--world", "8", "--pp", "4", "--format", "svg", "--colour-by", "embedding"});
  std::size_t none = 0;
  for (std::size_t at = o.out.find(">none<"); at != std::string::npos; at = o.out.find(">none<", at + 1)) ++none;
  BOOST_TEST(none == 4u);  // stages 1 and 2 of both pipeline groups
}

BOOST_AUTO_TEST_CASE(megatrons_rules_are_usage_errors_naming_the_values) {
  check_usage_error({"--world", "8", "--tp", "2", "--cp", "3"}, {"context parallel size 3", "8"});
  check_usage_error({"--world", "8", "--cp", "0"}, {"context parallel size 0"});
  check_usage_error({"--world", "8", "--ep", "1", "--etp", "3"}, {"expert tensor parallel size 3", "8"});
  check_usage_error({"--world", "8", "--order", "tp-xx"}, {"'tp-xx'", "'xx'"});
  check_usage_error({"--world", "8", "--tp", "2", "--order", "tp-pp"}, {"'dp'", "4"});
  check_usage_error({"--world", "8", "--order", "tp-dp-pp", "--expert-order", "data-first"},
                    {"--expert-order", "--order"});
  check_usage_error({"--world", "8", "--pp", "2", "--ep", "2", "--order", "tp-cp-ep-pp-dp"},
                    {"'tp-cp-ep-pp-dp'", "expert data parallel size 2", "data parallel size 4"});
  check_usage_error({"--world", "8", "--cp"}, {"--cp"});
}

BOOST_AUTO_TEST_CASE(instances_worked_out_by_hand) {
  // As above, in 2 distributed optimizer instances: rank 13 is member 2 of its data-context
  // group [9, 11, 13, 15] and of its expert data group (the same ranks), so it is in the
  // second instance (P = Pe = 2), and across instances it pairs with member 0.
  const Outcome o = run_ok(with(kMegatronArgs, {"--distributed-optimizer-instances", "2", "--format", "json", "--rank",
                                                "13"}));
  const Json j = parse_json(o);
  const std::map<std::string, std::vector<int>> expected{
      {"intra_partial_data_context_parallel", {13, 15}},
      {"inter_distributed_optimizer_instance", {9, 13}},
      {"intra_distributed_optimizer_instance", {4, 5, 6, 7, 12, 13, 14, 15}},
      {"intra_partial_expert_data_parallel/2", {13, 15}},
      {"inter_partial_expert_data_parallel/2", {9, 13}},
  };
  check_rank_groups(j, expected);
  const Outcome header = run_ok(with(kMegatronArgs, {"--distributed-optimizer-instances", "2"}));
  BOOST_TEST(header.out.starts_with("world 16 = pipeline 2 x data 2 x context 2 x tensor 2, order tp-cp-ep-dp-pp, "
                                    "experts 2, expert tensor 1, 2 distributed optimizer instances\n"),
             header.out.substr(0, 160));
  check_usage_error({"--world", "16", "--tp", "2", "--cp", "2", "--distributed-optimizer-instances", "3"},
                    {"distributed optimizer instances", "3", "4"});
  check_usage_error({"--world", "8", "--distributed-optimizer-instances", "0"}, {"distributed optimizer instances 0"});
  check_usage_error({"--world", "8", "--distributed-optimizer-instances", "two"},
                    {"--distributed-optimizer-instances", "'two'"});
}

BOOST_AUTO_TEST_CASE(hybrid_and_hierarchical_groups_worked_out_by_hand) {
  // W 16, cp 4, dp 4 (tp-cp-ep-dp-pp): one data-context group of all 16 ranks; rank 5 is in
  // the context group [4, 5, 6, 7], of which levels [2, 2] take [4, 5] and [5, 7].
  const std::vector<std::string> args{"--world", "16", "--cp", "4", "--hybrid-context-parallel",
                                      "--hierarchical-context-parallel-sizes", "2,2", "--megatron"};
  const Json j = parse_json(run_ok(with(args, {"--format", "json", "--rank", "5"})));
  const std::map<std::string, std::vector<int>> expected{
      {"hybrid_data_context_parallel/2", {4, 5}},
      {"hybrid_data_context_parallel/4", {4, 5, 6, 7}},
      {"hybrid_data_context_parallel/8", {0, 1, 2, 3, 4, 5, 6, 7}},
      {"hierarchical_context_parallel/L0", {4, 5}},
      {"hierarchical_context_parallel/L1", {5, 7}},
  };
  check_rank_groups(j, expected);
  BOOST_TEST(!j["groups"].contains("hybrid_data_context_parallel/16"));
  BOOST_TEST(run_ok(args).out.starts_with("world 16 = pipeline 1 x data 4 x context 4 x tensor 1, hybrid context "
                                          "parallel, hierarchical context parallel 2x2\n"));
  check_usage_error({"--world", "16", "--cp", "4", "--hierarchical-context-parallel-sizes", "2,3"},
                    {"hierarchical context parallel sizes [2,3]", "6", "4"});
  check_usage_error({"--world", "16", "--cp", "4", "--hierarchical-context-parallel-sizes", "2,x"},
                    {"--hierarchical-context-parallel-sizes", "'x'"});
  check_usage_error({"--world", "3", "--cp", "3", "--hybrid-context-parallel"}, {"even", "3"});
}

BOOST_AUTO_TEST_CASE(a_grid_over_part_of_the_world) {
  // tp 2 x pp 2 x dp 2 on ranks 4..11 of 12: Megatron's RankGenerator shifted by 4.
  const std::vector<std::string> args{"--world", "12", "--tp", "2", "--pp", "2", "--rank-offset", "4"};
  const Json j = parse_json(run_ok(with(args, {"--format", "json"})));
  BOOST_TEST(j["world_size"].get<int>() == 12);
  BOOST_TEST(j["groups"]["tensor_parallel"].dump() == "[[4,5],[6,7],[8,9],[10,11]]");
  BOOST_TEST(j["groups"]["pipeline_parallel"].dump() == "[[4,8],[5,9],[6,10],[7,11]]");
  BOOST_TEST(j["groups"]["world"].dump() == "[[0,1,2,3,4,5,6,7,8,9,10,11]]");
  BOOST_TEST(run_ok(args).out.starts_with("world 12, ranks 4 to 11: 8 = pipeline 2 x data 2 x tensor 2\n"));
  // A rank before the grid is in no group but the world's, and has no coordinates.
  const Json outside = parse_json(run_ok(with(args, {"--format", "json", "--rank", "2", "--megatron"})));
  BOOST_TEST(keys_of(outside["groups"]) == (std::vector<std::string>{"world"}), boost::test_tools::per_element());
  BOOST_TEST(!outside.contains("coordinates"));
  BOOST_TEST(run_ok(with(args, {"--rank", "2"})).out.find("coordinates: none (the grid's ranks are 4 to 11)") !=
             std::string::npos);
  check_usage_error(with(args, {"--local-world-size", "10"}), {"[4, 14)", "12"});
  check_usage_error({"--world", "12", "--rank-offset", "-1"}, {"rank offset -1"});
  check_usage_error({"--world", "12", "--tp", "3", "--rank-offset", "4"}, {"grid of 8 ranks from rank 4", "3"});
}

BOOST_AUTO_TEST_CASE(the_named_orders_are_the_two_order_strings) {
  for (const auto& [name, order] : {std::pair{"expert-first", "tp-cp-ep-dp-pp"}, std::pair{"data-first", "tp-cp-dp-ep-pp"}}) {
    const Outcome named = run_ok({"--world", "16", "--tp", "2", "--ep", "4", "--expert-order", name, "--format", "json"});
    const Outcome ordered = run_ok({"--world", "16", "--tp", "2", "--ep", "4", "--order", order, "--format", "json"});
    BOOST_TEST(named.out == ordered.out);
  }
}

BOOST_AUTO_TEST_SUITE_END()
