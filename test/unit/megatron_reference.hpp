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

/// The generators initialize_model_parallel builds for a configuration, with its two
/// rules between them, and every kind of pcx's table as Megatron names it.
struct MegatronReference {
  int world, tp, cp, pp, dp, etp;
  std::string order;
  MegatronGenerator dense;
  std::vector<std::pair<int, MegatronGenerator>> experts;  // expert parallel size, its generator

  /// Throws std::runtime_error where Megatron would refuse the configuration.
  static MegatronReference of(int world, int tp, int cp, int pp, int etp, const std::vector<int>& eps,
                              const std::string& order) {
    const int dp = world / (tp * cp * pp);
    MegatronReference ref{world, tp, cp, pp, dp, etp, order,
                          MegatronGenerator({{"tp", tp}, {"ep", 1}, {"dp", dp}, {"pp", pp}, {"cp", cp}}, order), {}};
    for (const int ep : eps) {
      const int edp = world / (etp * ep * pp);
      ref.experts.emplace_back(
          ep, MegatronGenerator({{"tp", etp}, {"ep", ep}, {"dp", edp}, {"pp", pp}, {"cp", 1}}, order));
      const bool pp_last = order.size() >= 2 && order.compare(order.size() - 2, 2, "pp") == 0;
      if (!(pp_last || pp == 1 || edp == dp)) throw std::runtime_error("edp differs from dp without pp last");
      if (ref.dense.get_ranks("pp") != ref.experts.back().second.get_ranks("pp")) {
        throw std::runtime_error("pipeline groups differ");
      }
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

  /// The groups of @p id, in Megatron's order; for the embedding kinds, only the groups
  /// there are (a rank in none is in no listed group).
  Groups groups(const GroupId& id) const {
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
      case GroupKind::world:
      case GroupKind::zero_param_intra:
      case GroupKind::all_to_all_local:
      case GroupKind::all_to_all_global:
      case GroupKind::sequence_parallel:
      case GroupKind::sequence_data_parallel: break;
    }
    throw std::logic_error("not a Megatron kind: " + id.name());
  }
};

}  // namespace pcx::test
