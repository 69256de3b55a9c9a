#pragma once
// The groups of every kind, rank by rank, straight from the formulas of SPEC.md: an
// independent reference for the layout engine and for the contexts built from it. The
// seed's layout only (context parallel size 1, expert tensor size the tensor size, the two
// named orders); megatron_reference.hpp covers the general one.

#include <algorithm>
#include <numeric>
#include <optional>
#include <stdexcept>
#include <vector>

#include "pcx/topology.hpp"

namespace pcx::test {

struct Reference {
  int world, tp, pp, dp, stride;  // stride = S = world / pp
  ExpertOrder order;

  // The sizes of a valid configuration, tensor size clamped to the world as the SPEC says.
  static Reference of(const ParallelConfig& c) {
    const int tp = std::min(c.tensor_parallel_size, c.world_size);
    const int pp = c.pipeline_parallel_size;
    return {c.world_size, tp, pp, c.world_size / (tp * pp), c.world_size / pp, c.expert_order};
  }

  // The group of rank r for view id, from the SPEC's formulas, ascending.
  std::vector<int> group(const GroupId& id, int r, std::optional<int> hpz, std::optional<int> per_node) const {
    const int p = r / stride;
    const int within = r % stride;
    const int d = within / tp;
    const int t = within % tp;
    std::vector<int> g;
    switch (id.kind) {
      case GroupKind::world:
        g.resize(static_cast<std::size_t>(world));
        std::iota(g.begin(), g.end(), 0);
        break;
      case GroupKind::tensor_parallel:
        for (int x = 0; x < tp; ++x) g.push_back(p * stride + d * tp + x);
        break;
      case GroupKind::pipeline_parallel:
        for (int x = 0; x < pp; ++x) g.push_back(x * stride + d * tp + t);
        break;
      case GroupKind::data_parallel:
        for (int x = 0; x < dp; ++x) g.push_back(p * stride + x * tp + t);
        break;
      case GroupKind::expert_parallel:
      case GroupKind::expert_data_parallel:
      case GroupKind::expert_tensor_parallel:
      case GroupKind::tensor_expert_parallel:
      case GroupKind::tensor_expert_pipeline_parallel: {
        const int ep = id.expert_parallel_size;
        const int edp = dp / ep;
        // expert-first: d = j*ep + e; data-first: d = e*edp + j.
        const bool expert_first = order == ExpertOrder::expert_first;
        const int e = expert_first ? d % ep : d / edp;
        const int j = expert_first ? d / ep : d % edp;
        auto rank = [&](int pp_, int ee, int jj, int tt) {
          return pp_ * stride + (expert_first ? jj * ep + ee : ee * edp + jj) * tp + tt;
        };
        // Megatron's expert kinds with the expert tensor size the tensor size: members by
        // tensor index fastest, then expert index, then stage.
        switch (id.kind) {
          case GroupKind::expert_parallel:
            for (int x = 0; x < ep; ++x) g.push_back(rank(p, x, j, t));
            break;
          case GroupKind::expert_data_parallel:
            for (int x = 0; x < edp; ++x) g.push_back(rank(p, e, x, t));
            break;
          case GroupKind::expert_tensor_parallel:
            for (int x = 0; x < tp; ++x) g.push_back(rank(p, e, j, x));
            break;
          case GroupKind::tensor_expert_parallel:
            for (int y = 0; y < ep; ++y)
              for (int x = 0; x < tp; ++x) g.push_back(rank(p, y, j, x));
            break;
          case GroupKind::tensor_expert_pipeline_parallel:
            for (int z = 0; z < pp; ++z)
              for (int y = 0; y < ep; ++y)
                for (int x = 0; x < tp; ++x) g.push_back(rank(z, y, j, x));
            break;
          default: break;
        }
        break;
      }
      case GroupKind::zero_param_intra: {
        const int z = std::min(*hpz, world);
        for (int x = 0; x < z; ++x) g.push_back(r / z * z + x);
        break;
      }
      case GroupKind::all_to_all_local: {
        const int n = std::min(*per_node, world);
        for (int x = 0; x < n; ++x) g.push_back(r / n * n + x);
        break;
      }
      case GroupKind::all_to_all_global: {
        const int n = *per_node;
        for (int k = 0; k < world / n; ++k) g.push_back(r % n + k * n);
        break;
      }
      case GroupKind::sequence_parallel:
      case GroupKind::sequence_data_parallel:
        throw std::logic_error("a topology has no sequence parallel kinds: they come from an MPU");
      case GroupKind::context_parallel:
      case GroupKind::data_context_parallel:
      case GroupKind::tensor_context_parallel:
      case GroupKind::tensor_data_parallel:
      case GroupKind::tensor_data_context_parallel:
      case GroupKind::model_parallel:
      case GroupKind::embedding:
      case GroupKind::position_embedding:
      case GroupKind::intra_partial_data_context_parallel:
      case GroupKind::inter_distributed_optimizer_instance:
      case GroupKind::intra_distributed_optimizer_instance:
      case GroupKind::intra_partial_expert_data_parallel:
      case GroupKind::inter_partial_expert_data_parallel:
      case GroupKind::hybrid_data_context_parallel:
      case GroupKind::hierarchical_context_parallel:
        throw std::logic_error("the SPEC has no formula for Megatron's kinds: see megatron_reference.hpp");
    }
    return g;
  }
};

}  // namespace pcx::test
