#pragma once
// Megatron-Core's rank groups restated from its algorithm (RankGenerator and
// generate_masked_orthogonal_rank_groups in parallel_state.py): each kind is computed
// as a list of groups by mixed-radix arithmetic over the order string, with no grid, so
// that it checks pcx's RankGrid independently.

#include <algorithm>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "pcx/topology.hpp"

namespace pcx::test {

/// Groups as lists of global ranks (the same alias as golden.hpp's, which this header does
/// not include, so that it needs no conformance data: the fuzzers use it too).
using Groups = std::vector<std::vector<int>>;

/// Megatron's RankGenerator: sizes by name, and an order string fastest axis first to
/// which the unnamed axes (all of size 1) are appended.
class MegatronGenerator {
 public:
  MegatronGenerator(const std::map<std::string, int>& sizes, const std::string& order) {
    for (const std::string& name : split_names(order)) push(sizes, name);
    for (const auto& [name, size] : sizes) {
      if (std::find(names_.begin(), names_.end(), name) != names_.end()) continue;
      if (size != 1) throw std::runtime_error("axis " + name + " of size " + std::to_string(size) + " is not ordered");
      push(sizes, name);
    }
  }

  /// get_ranks("tp-dp"): the groups in Megatron's order, each listed as Megatron lists it.
  Groups get_ranks(const std::string& token) const {
    std::vector<bool> mask(names_.size(), false);
    for (const std::string& name : split_names(token)) {
      const auto it = std::find(names_.begin(), names_.end(), name);
      if (it == names_.end()) throw std::runtime_error("unknown axis " + name);
      mask[static_cast<std::size_t>(it - names_.begin())] = true;
    }
    std::vector<int> masked_size, masked_stride, unmasked_size, unmasked_stride;
    int stride = 1;
    for (std::size_t i = 0; i < names_.size(); ++i) {
      (mask[i] ? masked_size : unmasked_size).push_back(sizes_[i]);
      (mask[i] ? masked_stride : unmasked_stride).push_back(stride);
      stride *= sizes_[i];
    }
    const int world = stride;
    int group_size = 1;
    for (const int s : masked_size) group_size *= s;
    Groups groups;
    for (int group = 0; group < world / group_size; ++group) {
      const int base = inner(decompose(group, unmasked_size), unmasked_stride);
      std::vector<int> members;
      for (int member = 0; member < group_size; ++member) {
        members.push_back(base + inner(decompose(member, masked_size), masked_stride));
      }
      groups.push_back(members);
    }
    return groups;
  }

  static std::vector<std::string> split_names(const std::string& text) {
    std::vector<std::string> names;
    std::size_t begin = 0;
    for (;;) {
      const std::size_t end = text.find('-', begin);
      names.push_back(text.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
      if (end == std::string::npos) return names;
      begin = end + 1;
    }
  }

 private:
  void push(const std::map<std::string, int>& sizes, const std::string& name) {
    const auto it = sizes.find(name);
    if (it == sizes.end()) throw std::runtime_error("no size for axis " + name);
    names_.push_back(name);
    sizes_.push_back(it->second);
  }
  // Digits of @p index in the mixed radix @p shape, fastest first.
  static std::vector<int> decompose(int index, const std::vector<int>& shape) {
    std::vector<int> digits;
    for (const int s : shape) {
      digits.push_back(index % s);
      index /= s;
    }
    return digits;
  }
  static int inner(const std::vector<int>& a, const std::vector<int>& b) {
    int sum = 0;
    for (std::size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
    return sum;
  }

  std::vector<std::string> names_;
  std::vector<int> sizes_;
};

/// create_hierarchical_groups(ranks, sizes) at one level, as Megatron's einops pattern
/// "(l s u) -> (l u) s" writes it: u = Π sizes[:level], s = sizes[level], l the rest;
/// ranks[l·s·u + j·u + i] is member j of group (l, i), groups in row-major (l, i) order.
inline Groups hierarchical_level(const std::vector<int>& ranks, const std::vector<int>& sizes, std::size_t level) {
  int u = 1;
  for (std::size_t k = 0; k < level; ++k) u *= sizes[k];
  const int s = sizes[level];
  const int l = static_cast<int>(ranks.size()) / (u * s);
  Groups out;
  for (int a = 0; a < l; ++a) {
    for (int i = 0; i < u; ++i) {
      std::vector<int> group;
      for (int j = 0; j < s; ++j) group.push_back(ranks[static_cast<std::size_t>(a * s * u + j * u + i)]);
      out.push_back(group);
    }
  }
  return out;
}

/// The generators initialize_model_parallel builds for a configuration, with its two
/// rules between them, and every kind of pcx's table as Megatron names it.
struct MegatronReference {
  int world, tp, cp, pp, dp, etp, instances;
  bool hybrid = false;
  int rank_offset = 0;
  std::vector<int> hierarchical;  // hierarchical_context_parallel_sizes
  std::string order;
  MegatronGenerator dense;
  std::vector<std::pair<int, MegatronGenerator>> experts;  // expert parallel size, its generator

  /// Throws std::runtime_error where Megatron would refuse the configuration. Megatron
  /// has one expert parallel size per run; each of @p eps is checked as its own run.
  static MegatronReference of(int world, int tp, int cp, int pp, int etp, const std::vector<int>& eps,
                              const std::string& order, int instances = 1) {
    const int dp = world / (tp * cp * pp);
    MegatronReference ref{world,
                          tp,
                          cp,
                          pp,
                          dp,
                          etp,
                          instances,
                          false,
                          0,
                          {},
                          order,
                          MegatronGenerator({{"tp", tp}, {"ep", 1}, {"dp", dp}, {"pp", pp}, {"cp", cp}}, order),
                          {}};
    if (dp * cp % instances != 0) throw std::runtime_error("dp x cp not divisible by the instances");
    for (const int ep : eps) {
      const int edp = world / (etp * ep * pp);
      ref.experts.emplace_back(
          ep, MegatronGenerator({{"tp", etp}, {"ep", ep}, {"dp", edp}, {"pp", pp}, {"cp", 1}}, order));
      const bool pp_last = order.size() >= 2 && order.compare(order.size() - 2, 2, "pp") == 0;
      if (!(pp_last || pp == 1 || edp == dp)) throw std::runtime_error("edp differs from dp without pp last");
      if (ref.dense.get_ranks("pp") != ref.experts.back().second.get_ranks("pp")) {
        throw std::runtime_error("pipeline groups differ");
      }
      if (edp % instances != 0) throw std::runtime_error("edp not divisible by the instances");
    }
    return ref;
  }

  const MegatronGenerator& expert(int ep) const {
    for (const auto& [size, generator] : experts) {
      if (size == ep) return generator;
    }
    throw std::runtime_error("no expert generator of size " + std::to_string(ep));
  }

  /// The group of @p id that holds @p rank, or an empty list if it is in none.
  std::vector<int> group_of(const GroupId& id, int rank) const {
    for (const std::vector<int>& group : groups(id)) {
      if (std::find(group.begin(), group.end(), rank) != group.end()) return group;
    }
    return {};
  }

  /// The groups of @p id, in Megatron's order, every rank moved up by the rank offset (as
  /// RankGenerator.get_ranks adds it); for the embedding kinds, only the groups there are
  /// (a rank in none is in no listed group).
  Groups groups(const GroupId& id) const {
    Groups out = grid_groups(id);
    for (std::vector<int>& group : out) {
      for (int& rank : group) rank += rank_offset;
    }
    return out;
  }

  /// The same configuration over the ranks from @p offset on.
  MegatronReference at_offset(int offset) const {
    MegatronReference copy = *this;
    copy.rank_offset = offset;
    return copy;
  }

 private:
  Groups grid_groups(const GroupId& id) const {
    switch (id.kind) {
      case GroupKind::tensor_parallel: return dense.get_ranks("tp");
      case GroupKind::pipeline_parallel: return dense.get_ranks("pp");
      case GroupKind::data_parallel: return dense.get_ranks("dp");
      case GroupKind::context_parallel: return dense.get_ranks("cp");
      case GroupKind::data_context_parallel: return dense.get_ranks("dp-cp");
      case GroupKind::tensor_context_parallel: return dense.get_ranks("tp-cp");
      case GroupKind::tensor_data_parallel: return dense.get_ranks("tp-dp");
      case GroupKind::tensor_data_context_parallel: return dense.get_ranks("tp-dp-cp");
      case GroupKind::model_parallel: return dense.get_ranks("tp-pp");
      case GroupKind::embedding:
      case GroupKind::position_embedding: {
        Groups out;
        for (const std::vector<int>& stages : dense.get_ranks("pp")) {
          if (id.kind == GroupKind::position_embedding || stages.size() == 1) {
            out.push_back({stages.front()});
          } else {
            out.push_back({stages.front(), stages.back()});
          }
        }
        return out;
      }
      case GroupKind::expert_parallel: return expert(id.expert_parallel_size).get_ranks("ep");
      case GroupKind::expert_data_parallel: return expert(id.expert_parallel_size).get_ranks("dp");
      case GroupKind::expert_tensor_parallel: return expert(id.expert_parallel_size).get_ranks("tp");
      case GroupKind::tensor_expert_parallel: return expert(id.expert_parallel_size).get_ranks("tp-ep");
      case GroupKind::tensor_expert_pipeline_parallel: return expert(id.expert_parallel_size).get_ranks("tp-ep-pp");
      case GroupKind::intra_partial_data_context_parallel: {
        // ranks_with_cp[i·P:(i+1)·P] for every dp-cp group.
        Groups out;
        for (const std::vector<int>& ranks : dense.get_ranks("dp-cp")) {
          const auto per = static_cast<std::ptrdiff_t>(ranks.size()) / instances;
          for (int i = 0; i < instances; ++i) out.emplace_back(ranks.begin() + i * per, ranks.begin() + (i + 1) * per);
        }
        return out;
      }
      case GroupKind::intra_partial_expert_data_parallel:
        return instance_levels(expert(id.expert_parallel_size), 0);
      case GroupKind::inter_partial_expert_data_parallel:
        return instance_levels(expert(id.expert_parallel_size), 1);
      // core_v0.12.0's inter-partial data parallel group with cp: ranks_with_cp[i::P].
      case GroupKind::inter_distributed_optimizer_instance: {
        Groups out;
        for (const std::vector<int>& ranks : dense.get_ranks("dp-cp")) {
          const std::size_t per = ranks.size() / static_cast<std::size_t>(instances);
          for (std::size_t i = 0; i < per; ++i) {
            std::vector<int> group;
            for (std::size_t k = i; k < ranks.size(); k += per) group.push_back(ranks[k]);
            out.push_back(group);
          }
        }
        return out;
      }
      // The main branch's algorithm on the dense grid: P consecutive tp-pp groups.
      case GroupKind::intra_distributed_optimizer_instance:
        return concatenated(dense.get_ranks("tp-pp"), dp * cp / instances);
      case GroupKind::hybrid_data_context_parallel: {
        const std::vector<int> sizes = hybrid ? hybrid_sizes() : std::vector<int>{};
        if (std::find(sizes.begin(), sizes.end(), id.group_size) == sizes.end()) {
          throw std::runtime_error("Megatron has no " + id.name() + " groups");
        }
        // create_hybrid_dp_cp_groups: ranks[i:i + size] for i in range(0, len(ranks), size).
        Groups out;
        const auto size = static_cast<std::size_t>(id.group_size);
        for (const std::vector<int>& ranks : dense.get_ranks("dp-cp")) {
          for (std::size_t i = 0; i < ranks.size(); i += size) {
            out.emplace_back(ranks.begin() + static_cast<std::ptrdiff_t>(i),
                             ranks.begin() + static_cast<std::ptrdiff_t>(std::min(i + size, ranks.size())));
          }
        }
        return out;
      }
      case GroupKind::hierarchical_context_parallel: {
        if (id.level < 0 || static_cast<std::size_t>(id.level) >= hierarchical.size()) {
          throw std::runtime_error("Megatron has no " + id.name() + " groups");
        }
        Groups out;
        for (const std::vector<int>& ranks : dense.get_ranks("cp")) {
          for (std::vector<int>& group : hierarchical_level(ranks, hierarchical, static_cast<std::size_t>(id.level))) {
            out.push_back(group);
          }
        }
        return out;
      }
      case GroupKind::world:
      case GroupKind::zero_param_intra:
      case GroupKind::all_to_all_local:
      case GroupKind::all_to_all_global:
      case GroupKind::sequence_parallel:
      case GroupKind::sequence_data_parallel: break;
    }
    throw std::logic_error("not a Megatron kind: " + id.name());
  }

 public:
  /// The main branch's one inter-instance group, which attention shares with the experts
  /// (get_inter_distributed_optimizer_instance_group): from the expert grid of @p ep.
  Groups shared_inter_instance(int ep) const { return instance_levels(expert(ep), 1); }

  /// The main branch's intra-instance group: edp / N consecutive tp-ep-pp groups of the
  /// expert grid of @p ep, concatenated.
  Groups shared_intra_instance(int ep) const {
    const MegatronGenerator& grid = expert(ep);
    return concatenated(grid.get_ranks("tp-ep-pp"), static_cast<int>(grid.get_ranks("dp").front().size()) / instances);
  }

  /// The same configuration with Megatron's hybrid and hierarchical context parallel groups.
  /// Throws std::runtime_error where Megatron asserts.
  MegatronReference with_context_groups(bool hybrid_cp, const std::vector<int>& sizes) const {
    if (hybrid_cp && dp * cp % 2 != 0) throw std::runtime_error("hybrid context parallel needs an even dp x cp");
    long long product = 1;
    for (const int size : sizes) product *= size;
    if (!sizes.empty() && product != cp) throw std::runtime_error("hierarchical sizes do not multiply to cp");
    MegatronReference copy = *this;
    copy.hybrid = hybrid_cp;
    copy.hierarchical = sizes;
    return copy;
  }

  /// The sizes of Megatron's hybrid groups (create_hybrid_dp_cp_groups):
  /// [2**i for i in range(int(log2(len(ranks))))][1:].
  std::vector<int> hybrid_sizes() const {
    std::vector<int> sizes;
    const int members = dp * cp;
    int floor_log2 = 0;
    while ((2LL << floor_log2) <= members) ++floor_log2;
    for (int i = 1; i < floor_log2; ++i) sizes.push_back(1 << i);
    return sizes;
  }

  /// Whether Megatron creates the groups of @p kind per data or context group, not in pcx's
  /// colour order, so that only the groups as a set compare.
  static bool is_cut_kind(GroupKind kind) {
    return kind == GroupKind::hybrid_data_context_parallel || kind == GroupKind::hierarchical_context_parallel ||
           kind == GroupKind::intra_partial_data_context_parallel ||
           kind == GroupKind::inter_distributed_optimizer_instance ||
           kind == GroupKind::intra_distributed_optimizer_instance ||
           kind == GroupKind::intra_partial_expert_data_parallel || kind == GroupKind::inter_partial_expert_data_parallel;
  }

 private:
  // Every @p count consecutive groups as one; new_group sorts its ranks.
  static Groups concatenated(const Groups& groups, int count) {
    Groups out;
    std::vector<int> members;
    int seen = 0;
    for (const std::vector<int>& ranks : groups) {
      members.insert(members.end(), ranks.begin(), ranks.end());
      if (++seen % count == 0) {
        std::sort(members.begin(), members.end());
        out.push_back(members);
        members.clear();
      }
    }
    return out;
  }

  // create_hierarchical_groups(ranks, [edp / N, N]) of every expert data group, at @p level.
  Groups instance_levels(const MegatronGenerator& grid, std::size_t level) const {
    Groups out;
    for (const std::vector<int>& ranks : grid.get_ranks("dp")) {
      const int per = static_cast<int>(ranks.size()) / instances;
      for (std::vector<int>& group : hierarchical_level(ranks, {per, instances}, level)) out.push_back(group);
    }
    return out;
  }
};

}  // namespace pcx::test
