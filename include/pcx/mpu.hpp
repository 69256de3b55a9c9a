#pragma once
/// @file mpu.hpp
/// @brief The model parallel unit (MPU) a ParallelContext is built from, and GridMpu,
///        a built-in MPU with Megatron's layout.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "pcx/process_group.hpp"
#include "pcx/topology.hpp"

namespace pcx {

/// What a ParallelContext needs to know of the model parallel layout: DeepSpeed's
/// injected Megatron `mpu`.
///
/// Global ranks in the groups are ranks of the world communicator the context is
/// built on. Groups other than data parallel are optional: an MPU that does not have
/// or expose one returns nullptr, which is normal. A context checks every group the MPU
/// gives against Megatron's layout for the MPU's sizes.
class Mpu {
 public:
  virtual ~Mpu() = default;

  /// Tensor (model) parallel size.
  [[nodiscard]] virtual int tensor_parallel_size() const = 0;
  /// Pipeline parallel size; 1 unless the MPU has pipeline parallelism.
  [[nodiscard]] virtual int pipeline_parallel_size() const { return 1; }
  /// Context parallel size (Megatron's cp); 1 unless the MPU has context parallelism.
  [[nodiscard]] virtual int context_parallel_size() const { return 1; }
  /// Size of the caller's data parallel group.
  [[nodiscard]] virtual int data_parallel_size() const { return data_parallel_group().size(); }
  /// The caller's data parallel group. Its ranks are the MPU's exposed data parallel
  /// ranks: a context checks them against the layout its expert groups assume.
  [[nodiscard]] virtual const ProcessGroup& data_parallel_group() const = 0;
  /// Model parallel size (Megatron's `get_model_parallel_world_size`).
  [[nodiscard]] virtual int model_parallel_size() const = 0;
  /// The caller's tensor parallel group, or nullptr when the MPU does not expose it.
  [[nodiscard]] virtual const ProcessGroup* tensor_parallel_group() const { return nullptr; }
  /// The caller's pipeline parallel group, or nullptr when the MPU does not expose it.
  [[nodiscard]] virtual const ProcessGroup* pipeline_parallel_group() const { return nullptr; }
  /// The caller's group of a dense kind of Megatron's (see is_dense_kind(): tensor,
  /// pipeline, data, context parallel and their combinations, the embedding kinds), or
  /// nullptr when the MPU does not have the kind or the caller is in none of its groups
  /// (embedding on a middle pipeline stage). By default the three named getters answer
  /// for their kinds and every other kind is absent.
  [[nodiscard]] virtual const ProcessGroup* dense_group(GroupKind kind) const;
  /// The caller's sequence parallel group, or nullptr without sequence parallelism.
  [[nodiscard]] virtual const ProcessGroup* sequence_parallel_group() const { return nullptr; }
  /// The caller's sequence data parallel group, or nullptr without one.
  [[nodiscard]] virtual const ProcessGroup* sequence_data_parallel_group() const { return nullptr; }

 protected:
  /// Implementations only.
  Mpu() = default;
  /// Implementations only.
  Mpu(const Mpu&) = default;
  /// Implementations only.
  Mpu& operator=(const Mpu&) = default;
};

/// A built-in MPU for applications without Megatron: a complete Megatron parallel
/// state, every dense kind (tensor, context, pipeline, data parallel and their
/// combinations, the embedding kinds) laid out on Megatron's dense grid by the order
/// string. Model parallel size is tensor × pipeline.
///
/// Construction is collective over @p world: one agreement (pcx::agree, stage grid_mpu)
/// compares the sizes and order of every rank, then one dup, on which one split per kind
/// makes the groups (none for kinds of one rank, and none for a kind with the same groups
/// as an earlier one, whose communicator it shares); the dup is then released.
class GridMpu final : public Mpu {
 public:
  /// The dense grid of @p config: its world size (0: the world's), tensor, context and
  /// pipeline parallel sizes and its order (order_of()). The expert fields are the
  /// context's and ignored here.
  /// @throws ConfigMismatch (on every rank) if ranks ask for other sizes or orders;
  ///         ConfigError if the dense grid does not fit the world (see pcx::validate);
  ///         CommError from the backend.
  GridMpu(const Communicator& world, const ParallelConfig& config);
  /// Tensor and pipeline parallel groups (rank = pipeline × data × tensor, tensor fastest).
  /// @throws as the constructor above.
  GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size = 1);

  [[nodiscard]] int tensor_parallel_size() const override { return topology_.tensor_parallel_size(); }
  [[nodiscard]] int pipeline_parallel_size() const override { return topology_.pipeline_parallel_size(); }
  [[nodiscard]] int context_parallel_size() const override { return topology_.context_parallel_size(); }
  [[nodiscard]] const ProcessGroup& data_parallel_group() const override {
    return *dense_group(GroupKind::data_parallel);
  }
  [[nodiscard]] int model_parallel_size() const override { return tensor_parallel_size() * pipeline_parallel_size(); }
  [[nodiscard]] const ProcessGroup* tensor_parallel_group() const override {
    return dense_group(GroupKind::tensor_parallel);
  }
  [[nodiscard]] const ProcessGroup* pipeline_parallel_group() const override {
    return dense_group(GroupKind::pipeline_parallel);
  }
  [[nodiscard]] const ProcessGroup* dense_group(GroupKind kind) const override;
  /// The layout the groups were made from.
  [[nodiscard]] const Topology& topology() const noexcept { return topology_; }
  /// The backend of the world it was built over ("mpi", "nccl", ...).
  [[nodiscard]] const std::string& backend() const noexcept { return backend_; }

 private:
  // The agreed dense configuration, and the duplicate of the world the groups are split from.
  struct Agreed {
    ParallelConfig config;
    std::unique_ptr<Communicator> duplicate;
  };
  static Agreed agree_then_dup(const Communicator& world, const ParallelConfig& config);
  explicit GridMpu(Agreed&& agreed);

  struct Built {
    GroupKind kind;
    const GroupLayout* layout;          // in topology_
    std::optional<ProcessGroup> group;  // none on a rank in no group of the kind
  };
  Topology topology_;
  std::string backend_;
  std::vector<Built> groups_;
};

}  // namespace pcx
