#pragma once
// Shared pieces of pcx's libFuzzer targets: a byte reader, the entry-point guard that
// turns any exception other than the allowed ones into a crash, and the oracles that
// check a GroupLayout and a Topology against the rules of SPEC.md.
//
// Every violated invariant prints what failed and calls __builtin_trap(), which
// libFuzzer reports as a crash and saves as a reproducer.

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <typeinfo>
#include <vector>

#include "megatron_reference.hpp"
#include "pcx/error.hpp"
#include "pcx/layout.hpp"
#include "pcx/topology.hpp"

namespace pcx_fuzz {

/// Largest world whose groups the targets list and check in full (each check is O(world)).
inline constexpr int kMaxCheckedWorld = 4096;

[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "pcx fuzz: invariant violated: %s\n", what);
  std::fflush(stderr);
  __builtin_trap();
}

#define PCX_FUZZ_STR2(x) #x
#define PCX_FUZZ_STR(x) PCX_FUZZ_STR2(x)
/// Traps with the failed condition and its line unless @p cond holds.
#define PCX_FUZZ_CHECK(cond)                                                           \
  do {                                                                                 \
    if (!(cond)) ::pcx_fuzz::fail(#cond " (" __FILE__ ":" PCX_FUZZ_STR(__LINE__) ")"); \
  } while (0)

/// Runs @p f and traps unless it throws exactly an @p Exception (or a type derived from it).
/// Any other exception escapes to the entry-point guard, which traps too.
template <class Exception, class F>
void expect_throws(F&& f, const char* what) {
  try {
    f();
  } catch (const Exception&) {
    return;
  }
  fail(what);
}

/// Runs one fuzz input; any exception that @p body lets escape is a finding.
template <class F>
int guard(F&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pcx fuzz: unexpected exception of type %s: %s\n", typeid(e).name(), e.what());
    std::fflush(stderr);
    __builtin_trap();
  } catch (...) {
    fail("an exception not derived from std::exception escaped");
  }
  return 0;
}

/// Reads the fuzz input from the front (so that hand-written seeds stay readable); past
/// the end every read gives zero.
class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  [[nodiscard]] bool empty() const noexcept { return pos_ >= size_; }

  std::uint8_t byte() noexcept { return pos_ < size_ ? data_[pos_++] : 0; }

  /// Four bytes, little endian, as a signed int: any value, zero, negative or huge.
  int raw_int() noexcept {
    std::uint32_t v = 0;
    for (int i = 0; i < 4; ++i) v |= static_cast<std::uint32_t>(byte()) << (8 * i);
    return static_cast<int>(v);
  }

  /// A byte below 0xF0 gives @p small(byte); 0xF0 and above escapes to a raw int.
  template <class Small>
  int value(Small small) noexcept {
    const std::uint8_t b = byte();
    return b < 0xF0 ? small(b) : raw_int();
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

/// Splits @p text on @p separator; one trailing separator is ignored (files end in newlines).
inline std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  if (!text.empty() && text.back() == separator) text.remove_suffix(1);
  if (text.empty()) return parts;
  for (std::size_t begin = 0; begin <= text.size();) {
    const std::size_t end = std::min(text.find(separator, begin), text.size());
    parts.emplace_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return parts;
}

/// In a world larger than this, the per-rank queries (colour, group rank, global rank) are
/// checked on a spread sample of about this many ranks; group membership is still checked for
/// every rank. Every comparison is instrumented for libFuzzer, so per-rank work sets the speed.
inline constexpr int kFullyCheckedWorld = 1024;

/// 1 when every rank is to be checked one by one, else the sampling stride.
inline int sample_stride(int world) { return world <= kFullyCheckedWorld ? 1 : world / kFullyCheckedWorld + 1; }

/// Checks the contract of GroupLayout on a world of @p world ranks and returns its groups;
/// lists every group, so only for a world of moderate size. @p probes are extra ranks to look
/// at in detail.
inline std::vector<std::vector<int>> check_layout(const pcx::GroupLayout& layout, int world,
                                                  std::span<const int> probes = {}) {
  PCX_FUZZ_CHECK(layout.world_size() == world);
  const int size = layout.group_size();
  const int count = layout.group_count();
  PCX_FUZZ_CHECK(size >= 1 && count >= 1);
  PCX_FUZZ_CHECK(static_cast<long long>(size) * count == world);

  std::vector<std::vector<int>> groups = layout.groups();
  PCX_FUZZ_CHECK(groups.size() == static_cast<std::size_t>(count));
  std::vector<char> seen(static_cast<std::size_t>(world), 0);
  const int stride = sample_stride(world);
  for (int c = 0; c < count; ++c) {
    const std::vector<int>& group = groups[static_cast<std::size_t>(c)];
    PCX_FUZZ_CHECK(group.size() == static_cast<std::size_t>(size));
    for (int i = 0; i < size; ++i) {
      const int r = group[static_cast<std::size_t>(i)];
      PCX_FUZZ_CHECK(r >= 0 && r < world);
      PCX_FUZZ_CHECK(!seen[static_cast<std::size_t>(r)]);  // groups are disjoint ...
      seen[static_cast<std::size_t>(r)] = 1;
      if (i > 0) PCX_FUZZ_CHECK(group[static_cast<std::size_t>(i - 1)] < r);  // ... and ascending
      if ((c + i) % stride != 0) continue;
      PCX_FUZZ_CHECK(layout.colour(r) == c);
      PCX_FUZZ_CHECK(layout.group_rank(r) == i);
      PCX_FUZZ_CHECK(layout.global_rank(c, i) == r);
    }
  }
  // count * size distinct ranks in [0, world) with count * size == world: a partition.

  std::vector<int> ranks = {0, world - 1, world / 2, world / 3};
  for (const int p : probes) ranks.push_back(static_cast<int>(static_cast<unsigned>(p) % static_cast<unsigned>(world)));
  for (const int r : ranks) {
    const int c = layout.colour(r);
    const std::vector<int> mine = layout.group_of(r);
    PCX_FUZZ_CHECK(mine == groups[static_cast<std::size_t>(c)]);
    PCX_FUZZ_CHECK(mine[static_cast<std::size_t>(layout.group_rank(r))] == r);
    PCX_FUZZ_CHECK(layout.global_rank(c, layout.group_rank(r)) == r);
    PCX_FUZZ_CHECK(layout.group(c) == mine);
  }

  using pcx::ConfigError;
  expect_throws<ConfigError>([&] { (void)layout.colour(-1); }, "colour(-1) did not throw ConfigError");
  expect_throws<ConfigError>([&] { (void)layout.colour(world); }, "colour(world) did not throw ConfigError");
  expect_throws<ConfigError>([&] { (void)layout.group_rank(world); }, "group_rank(world) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.group_rank(INT_MIN); }, "group_rank(INT_MIN) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.global_rank(count, 0); }, "global_rank(count, 0) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.global_rank(0, size); }, "global_rank(0, size) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.global_rank(-1, 0); }, "global_rank(-1, 0) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.global_rank(0, -1); }, "global_rank(0, -1) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.group(count); }, "group(count) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.group(-1); }, "group(-1) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.group_of(world); }, "group_of(world) did not throw");
  expect_throws<ConfigError>([&] { (void)layout.group_of(INT_MIN); }, "group_of(INT_MIN) did not throw");
  return groups;
}

/// The order string that lays out @p c, as Megatron's initialize_model_parallel takes it.
inline std::string reference_order(const pcx::ParallelConfig& c) {
  if (c.order) return *c.order;
  return c.expert_order == pcx::ExpertOrder::expert_first ? "tp-cp-ep-dp-pp" : "tp-cp-dp-ep-pp";
}

/// The axis names of a well-formed order string (each of tp, cp, ep, dp, pp at most once),
/// fastest first; empty for a malformed one.
inline std::vector<std::string> order_axes(const std::string& order) {
  static const std::vector<std::string> known = {"tp", "cp", "ep", "dp", "pp"};
  if (order.empty()) return {};
  // The added '-' is the trailing one split() drops, so that "tp-" keeps its empty last name.
  const std::vector<std::string> axes = split(order + "-", '-');
  for (std::size_t i = 0; i < axes.size(); ++i) {
    if (std::ranges::find(known, axes[i]) == known.end()) return {};
    if (std::find(axes.begin(), axes.begin() + static_cast<std::ptrdiff_t>(i), axes[i]) !=
        axes.begin() + static_cast<std::ptrdiff_t>(i)) {
      return {};
    }
  }
  return axes;
}

/// One grid of Megatron's: a size per axis name, laid out by the order's axes.
struct ReferenceGrid {
  std::map<std::string, long long> sizes;

  /// Every axis larger than 1 is named by the order (Megatron appends only axes of size 1).
  [[nodiscard]] bool ordered_by(const std::vector<std::string>& axes) const {
    return std::ranges::all_of(
        sizes, [&](const auto& axis) { return axis.second == 1 || std::ranges::find(axes, axis.first) != axes.end(); });
  }
  /// Ranks between consecutive positions on @p name: the product of the axes ordered before it.
  [[nodiscard]] long long stride(const std::vector<std::string>& axes, const std::string& name) const {
    long long stride = 1;
    for (const std::string& axis : axes) {
      if (axis == name) break;
      stride *= sizes.at(axis);
    }
    return stride;
  }
  /// Whether blocks of @p block consecutive members of the groups that vary @p a and @p b
  /// (their list in Megatron's order) are translates of one another, as a grid's groups are:
  /// always when the two axes are neighbours in rank, else only where a block holds whole
  /// rows of the faster axis or divides one.
  [[nodiscard]] bool regular_blocks(const std::vector<std::string>& axes, const std::string& a, const std::string& b,
                                    long long block) const {
    const bool a_first = stride(axes, a) < stride(axes, b);
    const std::string& fast = a_first ? a : b;
    const std::string& slow = a_first ? b : a;
    const long long fast_size = sizes.at(fast);
    if (fast_size == 1 || sizes.at(slow) == 1 || stride(axes, slow) == stride(axes, fast) * fast_size) return true;
    return block % fast_size == 0 || fast_size % block == 0;
  }
};

/// The configuration of @p c's grid alone, when it lies over part of the world (Megatron's
/// rank offset and local world size), with its ranks counted from 0; nullopt when the part
/// does not fit in the world.
inline std::optional<pcx::ParallelConfig> reference_part(pcx::ParallelConfig c) {
  if (c.world_size < 1 || c.rank_offset < 0 || (c.local_world_size && *c.local_world_size < 1)) return std::nullopt;
  const long long local = c.local_world_size ? *c.local_world_size : c.world_size - c.rank_offset;
  if (local < 1 || c.rank_offset + local > c.world_size) return std::nullopt;
  if (c.ranks_per_node && *c.ranks_per_node >= 1) {
    const int per_node = *c.ranks_per_node;
    if (c.rank_offset % per_node != 0 || (c.world_size > per_node && c.world_size % per_node != 0)) return std::nullopt;
  }
  c.world_size = static_cast<int>(local);
  c.rank_offset = 0;
  c.local_world_size.reset();
  return c;
}

/// Whether @p c satisfies every rule of SPEC.md and of Megatron's layout (issue: context
/// parallel, expert tensor parallel, order strings), computed independently of pcx::validate.
inline bool reference_valid(const pcx::ParallelConfig& whole) {
  const std::optional<pcx::ParallelConfig> part = reference_part(whole);
  if (!part) return false;
  const pcx::ParallelConfig& c = *part;
  if (c.world_size < 1 || c.tensor_parallel_size < 1 || c.pipeline_parallel_size < 1) return false;
  if (c.context_parallel_size < 1 || c.distributed_optimizer_instances < 1) return false;
  if (c.expert_tensor_parallel_size && *c.expert_tensor_parallel_size < 1) return false;
  const long long world = c.world_size;
  const long long tensor = std::min<long long>(c.tensor_parallel_size, world);
  const long long pp = c.pipeline_parallel_size;
  if (world % (tensor * pp) != 0 || world / (tensor * pp) % c.context_parallel_size != 0) return false;
  const long long data = world / (tensor * pp) / c.context_parallel_size;
  const std::string order = reference_order(c);
  const std::vector<std::string> axes = order_axes(order);
  if (axes.empty()) return false;
  const ReferenceGrid dense{{{"tp", tensor}, {"cp", c.context_parallel_size}, {"ep", 1}, {"dp", data}, {"pp", pp}}};
  if (!dense.ordered_by(axes)) return false;
  const long long expert_tensor = c.expert_tensor_parallel_size.value_or(static_cast<int>(tensor));
  for (std::size_t i = 0; i < c.expert_parallel_sizes.size(); ++i) {
    const int ep = c.expert_parallel_sizes[i];
    if (ep < 1 || world % (expert_tensor * pp) != 0 || world / (expert_tensor * pp) % ep != 0) return false;
    for (std::size_t j = 0; j < i; ++j) {
      if (c.expert_parallel_sizes[j] == ep) return false;
    }
    const long long expert_data = world / (expert_tensor * pp) / ep;
    const ReferenceGrid expert{{{"tp", expert_tensor}, {"cp", 1}, {"ep", ep}, {"dp", expert_data}, {"pp", pp}}};
    if (!expert.ordered_by(axes)) return false;
    if (!order.ends_with("pp") && pp > 1 && expert_data != data) return false;
    if (pp > 1 && dense.stride(axes, "pp") != expert.stride(axes, "pp")) return false;
    if (expert_data % c.distributed_optimizer_instances != 0) return false;
  }
  // Megatron's instance rules, and the regularity a grid needs (GroupLayout::subgroups).
  const long long instances = c.distributed_optimizer_instances;
  if (instances > 1) {
    const long long data_context = data * c.context_parallel_size;
    if (data_context % instances != 0) return false;
    if (!dense.regular_blocks(axes, "cp", "dp", data_context / instances)) return false;
  }
  // Megatron's hybrid and hierarchical rules, and pcx's whole runs of each hybrid size.
  if (!c.hierarchical_context_parallel_sizes.empty()) {
    long long product = 1;
    for (const int size : c.hierarchical_context_parallel_sizes) {
      if (size < 1) return false;
      product = std::min<long long>(product * size, 1LL << 40);
    }
    if (product != c.context_parallel_size) return false;
  }
  if (c.hybrid_context_parallel) {
    const long long members = data * c.context_parallel_size;
    if (members % 2 != 0) return false;
    long long largest = 1;
    while (largest * 2 <= members) largest *= 2;
    for (long long size = 2; size < largest; size *= 2) {
      if (members % size != 0 || !dense.regular_blocks(axes, "cp", "dp", size)) return false;
    }
  }
  if (c.zero_hpz_size) {
    if (*c.zero_hpz_size < 1) return false;
    if (world % std::min<long long>(*c.zero_hpz_size, world) != 0) return false;
  }
  if (c.ranks_per_node) {
    if (*c.ranks_per_node < 1) return false;
    if (world > *c.ranks_per_node && world % *c.ranks_per_node != 0) return false;
  }
  return true;
}

/// Whether @p c lays ranks out as the seed does (SPEC.md's formulas): no context
/// parallelism, expert tensor parallel size the tensor one, and one of the two named orders.
inline bool seed_layout(const pcx::ParallelConfig& c) {
  const std::string order = reference_order(c);
  return c.context_parallel_size == 1 &&
         c.expert_tensor_parallel_size.value_or(std::min(c.tensor_parallel_size, c.world_size)) ==
             std::min(c.tensor_parallel_size, c.world_size) &&
         (order == "tp-cp-ep-dp-pp" || order == "tp-cp-dp-ep-pp");
}

/// Checks that every group of @p groups (a layout's, as check_layout returns them) is exactly
/// one class of @p key: members of a group share their key and no two groups do. With
/// check_layout's partition check this says the groups are the classes of the key.
template <class Key>
void check_classes(const std::vector<std::vector<int>>& groups, int expected_size, Key key) {
  std::vector<long long> keys;
  for (const std::vector<int>& group : groups) {
    PCX_FUZZ_CHECK(group.size() == static_cast<std::size_t>(expected_size));
    const long long k = key(group.front());
    for (const int r : group) PCX_FUZZ_CHECK(key(r) == k);
    keys.push_back(k);
  }
  std::ranges::sort(keys);
  PCX_FUZZ_CHECK(std::ranges::adjacent_find(keys) == keys.end());
}

/// Checks that @p groups (in colour order) are the consecutive blocks [c*block, (c+1)*block).
inline void check_blocks(const std::vector<std::vector<int>>& groups, int block) {
  for (std::size_t c = 0; c < groups.size(); ++c) {
    PCX_FUZZ_CHECK(groups[c].size() == static_cast<std::size_t>(block));
    for (std::size_t i = 0; i < groups[c].size(); ++i) {
      PCX_FUZZ_CHECK(groups[c][i] == static_cast<int>(c) * block + static_cast<int>(i));
    }
  }
}

/// Checks every Megatron kind of @p topology (its all_views() but the world, hpZ and node
/// kinds) against Megatron's algorithm as megatron_reference.hpp restates it: the groups in
/// Megatron's order, and each rank's colour and index (kNoGroup where it is in none).
inline void check_megatron_kinds(const pcx::Topology& topology, const pcx::ParallelConfig& config) {
  using pcx::GroupKind;
  const int world = config.world_size;
  const int tensor = std::min(config.tensor_parallel_size, world);
  const auto reference = pcx::test::MegatronReference::of(
      world, tensor, config.context_parallel_size, config.pipeline_parallel_size,
      config.expert_tensor_parallel_size.value_or(tensor), config.expert_parallel_sizes, reference_order(config),
      config.distributed_optimizer_instances)
                             .with_context_groups(config.hybrid_context_parallel,
                                                  config.hierarchical_context_parallel_sizes);
  for (const pcx::GroupView& view : topology.all_views()) {
    const GroupKind kind = view.id.kind;
    if (kind == GroupKind::world || kind == GroupKind::zero_param_intra || kind == GroupKind::all_to_all_local ||
        kind == GroupKind::all_to_all_global) {
      continue;
    }
    pcx::test::Groups expected = reference.groups(view.id);
    if (pcx::test::MegatronReference::is_cut_kind(kind)) std::ranges::sort(expected);
    PCX_FUZZ_CHECK(view.layout.groups() == expected);
    std::vector<int> colour(static_cast<std::size_t>(world), pcx::GroupLayout::kNoGroup);
    std::vector<int> index(static_cast<std::size_t>(world), pcx::GroupLayout::kNoGroup);
    for (std::size_t g = 0; g < expected.size(); ++g) {
      for (std::size_t i = 0; i < expected[g].size(); ++i) {
        colour[static_cast<std::size_t>(expected[g][i])] = static_cast<int>(g);
        index[static_cast<std::size_t>(expected[g][i])] = static_cast<int>(i);
      }
    }
    for (int r = 0; r < world; ++r) {
      PCX_FUZZ_CHECK(view.layout.colour(r) == colour[static_cast<std::size_t>(r)]);
      PCX_FUZZ_CHECK(view.layout.group_rank(r) == index[static_cast<std::size_t>(r)]);
    }
  }
}

/// Checks a topology built from @p config against SPEC.md: the list of views, every
/// view's contract, and each kind's groups (by Megatron's algorithm, and for the seed's
/// layout by SPEC.md's formulas too). Needs world_size <= kMaxCheckedWorld.
inline void check_topology(const pcx::Topology& topology, const pcx::ParallelConfig& config,
                           std::span<const int> probes = {}) {
  using pcx::GroupId;
  using pcx::GroupKind;
  const int world = config.world_size;
  PCX_FUZZ_CHECK(topology.config() == config);
  PCX_FUZZ_CHECK(topology.world_size() == world);
  const int tp = std::min(config.tensor_parallel_size, world);
  const int pp = config.pipeline_parallel_size;
  PCX_FUZZ_CHECK(topology.tensor_parallel_size() == tp);
  PCX_FUZZ_CHECK(topology.pipeline_parallel_size() == pp);
  const int dp = world / (tp * config.context_parallel_size * pp);
  PCX_FUZZ_CHECK(topology.data_parallel_size() == dp);
  const int stage = world / pp;  // S in SPEC.md

  std::size_t clamps = config.tensor_parallel_size > world ? 1 : 0;
  if (config.zero_hpz_size) {
    const int z = std::min(*config.zero_hpz_size, world);
    PCX_FUZZ_CHECK(topology.zero_hpz_partition_size() == z);
    if (*config.zero_hpz_size > world) ++clamps;
  } else {
    PCX_FUZZ_CHECK(!topology.zero_hpz_partition_size());
  }
  PCX_FUZZ_CHECK(topology.clamp_notes().size() == clamps);

  // The views, in their documented order.
  std::vector<GroupId> expected = {{GroupKind::world, 0},
                                   {GroupKind::tensor_parallel, 0},
                                   {GroupKind::pipeline_parallel, 0},
                                   {GroupKind::data_parallel, 0}};
  for (const int ep : config.expert_parallel_sizes) {
    expected.push_back({GroupKind::expert_parallel, ep});
    expected.push_back({GroupKind::expert_data_parallel, ep});
  }
  if (config.zero_hpz_size) expected.push_back({GroupKind::zero_param_intra, 0});
  if (config.ranks_per_node) {
    expected.push_back({GroupKind::all_to_all_local, 0});
    if (world > *config.ranks_per_node) expected.push_back({GroupKind::all_to_all_global, 0});
  }
  const auto views = topology.views();
  PCX_FUZZ_CHECK(views.size() == expected.size());
  std::vector<std::vector<std::vector<int>>> view_groups;  // the groups of views[i]
  for (std::size_t i = 0; i < views.size(); ++i) {
    PCX_FUZZ_CHECK(views[i].id == expected[i]);
    PCX_FUZZ_CHECK(&topology.layout(views[i].id) == &views[i].layout);
    PCX_FUZZ_CHECK(!views[i].id.name().empty());
    view_groups.push_back(check_layout(views[i].layout, world, probes));
  }
  auto groups_of = [&](GroupKind kind, int ep = 0) -> const std::vector<std::vector<int>>& {
    const auto it = std::ranges::find(expected, GroupId{kind, ep});
    return view_groups[static_cast<std::size_t>(it - expected.begin())];
  };

  // Kinds this configuration lacks are GroupNotFound.
  int missing_ep = 1;
  while (std::ranges::find(config.expert_parallel_sizes, missing_ep) != config.expert_parallel_sizes.end()) {
    ++missing_ep;
  }
  expect_throws<pcx::GroupNotFound>(
      [&] {
        (void)topology.layout({GroupKind::expert_parallel, missing_ep});
      },
      "layout(expert_parallel/<absent>) did not throw GroupNotFound");
  if (!config.zero_hpz_size) {
    expect_throws<pcx::GroupNotFound>(
        [&] {
          (void)topology.layout({GroupKind::zero_param_intra, 0});
        },
        "layout(zero_param_intra) without hpZ did not throw GroupNotFound");
  }
  if (!config.ranks_per_node || world <= *config.ranks_per_node) {
    expect_throws<pcx::GroupNotFound>(
        [&] {
          (void)topology.layout({GroupKind::all_to_all_global, 0});
        },
        "layout(all_to_all_global) with one node did not throw GroupNotFound");
  }

  check_blocks(groups_of(GroupKind::world), world);
  if (world <= kFullyCheckedWorld) check_megatron_kinds(topology, config);
  // The seed's layout also by SPEC.md's formulas: r = p*S + d*tp + t.
  if (seed_layout(config)) {
    check_classes(groups_of(GroupKind::tensor_parallel), tp, [&](int r) { return static_cast<long long>(r / tp); });
    check_classes(groups_of(GroupKind::pipeline_parallel), pp,
                  [&](int r) { return static_cast<long long>(r % stage); });
    check_classes(groups_of(GroupKind::data_parallel), dp,
                  [&](int r) { return static_cast<long long>(r / stage) * tp + r % tp; });
    const pcx::GroupLayout& data_view = topology.layout({GroupKind::data_parallel, 0});

    std::vector<int> ranks = {0, world - 1, world / 2};
    for (const int p : probes)
      ranks.push_back(static_cast<int>(static_cast<unsigned>(p) % static_cast<unsigned>(world)));

    for (const int ep : config.expert_parallel_sizes) {
      const int edp = dp / ep;
      const bool expert_first = reference_order(config) == "tp-cp-ep-dp-pp";
      // expert-first: r = p*S + (j*ep + e)*tp + t; data-first: r = p*S + (e*edp + j)*tp + t.
      auto coords = [&](int r, long long& p, long long& e, long long& j, long long& t) {
        p = r / stage;
        t = r % tp;
        const long long q = (r % stage) / tp;
        e = expert_first ? q % ep : q / edp;
        j = expert_first ? q / ep : q % edp;
      };
      const pcx::GroupLayout& expert_view = topology.layout({GroupKind::expert_parallel, ep});
      const pcx::GroupLayout& replica_view = topology.layout({GroupKind::expert_data_parallel, ep});
      check_classes(groups_of(GroupKind::expert_parallel, ep), ep, [&](int r) {
        long long p, e, j, t;
        coords(r, p, e, j, t);
        return (p * edp + j) * tp + t;  // e varies
      });
      check_classes(groups_of(GroupKind::expert_data_parallel, ep), edp, [&](int r) {
        long long p, e, j, t;
        coords(r, p, e, j, t);
        return (p * ep + e) * tp + t;  // j varies
      });
      for (const int r : ranks) {
        const std::vector<int> experts = expert_view.group_of(r);
        const std::vector<int> replicas = replica_view.group_of(r);
        const std::vector<int> data = data_view.group_of(r);
        std::vector<int> both;
        std::ranges::set_intersection(experts, replicas, std::back_inserter(both));
        PCX_FUZZ_CHECK(both == std::vector<int>{r});
        PCX_FUZZ_CHECK(std::ranges::includes(data, experts));
        PCX_FUZZ_CHECK(std::ranges::includes(data, replicas));
      }
    }
  }

  if (config.zero_hpz_size) {
    check_blocks(groups_of(GroupKind::zero_param_intra), std::min(*config.zero_hpz_size, world));
  }
  if (config.ranks_per_node) {
    const int n = *config.ranks_per_node;
    const std::vector<std::vector<int>>& local = groups_of(GroupKind::all_to_all_local);
    if (world <= n) {
      PCX_FUZZ_CHECK(local.size() == 1);
      check_blocks(local, world);  // one local group of every rank
    } else {
      check_blocks(local, n);
      const std::vector<std::vector<int>>& groups = groups_of(GroupKind::all_to_all_global);
      PCX_FUZZ_CHECK(groups.size() == static_cast<std::size_t>(n));
      for (int i = 0; i < n; ++i) {
        const std::vector<int>& g = groups[static_cast<std::size_t>(i)];
        PCX_FUZZ_CHECK(g.size() == static_cast<std::size_t>(world / n));
        for (std::size_t k = 0; k < g.size(); ++k) PCX_FUZZ_CHECK(g[k] == i + static_cast<int>(k) * n);
      }
    }
  }
}

/// Validates @p config both ways (validate() and Topology) against reference_valid(), and
/// when it is valid and small enough, checks the topology. ConfigError is the only
/// exception allowed, and only for an invalid configuration.
inline void check_config(const pcx::ParallelConfig& config, std::span<const int> probes = {}) {
  const bool valid = reference_valid(config);
  if (!valid) {
    expect_throws<pcx::ConfigError>(
        [&] { pcx::validate(config); },
        "validate() accepted a configuration that breaks a rule of SPEC.md or Megatron's layout");
    expect_throws<pcx::ConfigError>(
        [&] { const pcx::Topology topology(config); },
        "Topology accepted a configuration that breaks a rule of SPEC.md or Megatron's layout");
    return;
  }
  pcx::validate(config);  // a ConfigError here escapes to the guard: a valid config was refused
  const pcx::Topology topology(config);
  const pcx::ParallelConfig part = *reference_part(config);
  if (part.world_size > kMaxCheckedWorld || config.world_size > kMaxCheckedWorld) return;
  if (part.world_size == config.world_size) return check_topology(topology, config, probes);
  // A grid over part of the world: the part's groups, checked on their own, moved up by the offset.
  const pcx::Topology alone(part);
  check_topology(alone, part, {});
  PCX_FUZZ_CHECK(topology.all_views().size() == alone.all_views().size());
  for (std::size_t i = 1; i < alone.all_views().size(); ++i) {
    pcx::test::Groups expected = alone.all_views()[i].layout.groups();
    for (std::vector<int>& group : expected) {
      for (int& rank : group) rank += config.rank_offset;
    }
    PCX_FUZZ_CHECK(topology.all_views()[i].layout.groups() == expected);
    for (int r = 0; r < config.world_size; ++r) {
      const int g = r - config.rank_offset;
      const int colour = g >= 0 && g < part.world_size ? alone.all_views()[i].layout.colour(g) : pcx::GroupLayout::kNoGroup;
      PCX_FUZZ_CHECK(topology.all_views()[i].layout.colour(r) == colour);
    }
  }
}

}  // namespace pcx_fuzz
