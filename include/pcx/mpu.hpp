#pragma once
/// @file mpu.hpp
/// @brief The model parallel unit (MPU) a ParallelContext is built from, and GridMpu,
///        a built-in MPU with Megatron's layout.

#include <memory>

#include "pcx/process_group.hpp"
#include "pcx/topology.hpp"

namespace pcx {

/// What a ParallelContext needs to know of the model parallel layout: DeepSpeed's
/// injected Megatron `mpu`.
///
/// Global ranks in the groups are ranks of the world communicator the context is
/// built on. Groups other than data parallel are optional: an MPU that does not have
/// or expose one returns nullptr, which is normal.
class Mpu {
 public:
  virtual ~Mpu() = default;

  /// Tensor (model) parallel size.
  [[nodiscard]] virtual int tensor_parallel_size() const = 0;
  /// Pipeline parallel size; 1 unless the MPU has pipeline parallelism.
  [[nodiscard]] virtual int pipeline_parallel_size() const { return 1; }
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

/// A built-in MPU for applications without Megatron: tensor, pipeline and data
/// parallel groups in Megatron's layout (rank = pipeline × data × tensor, tensor
/// fastest). Model parallel size is tensor × pipeline.
///
/// Construction is collective over @p world: one agreement (pcx::agree, stage grid_mpu)
/// compares the sizes of every rank, then one dup, on which three splits at most (one per
/// kind) make the groups; the dup is then released.
class GridMpu final : public Mpu {
 public:
  /// @throws ConfigMismatch (on every rank) if ranks ask for other sizes; ConfigError if
  ///         the sizes do not fit the world (see pcx::validate); CommError from the backend.
  GridMpu(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size = 1);

  [[nodiscard]] int tensor_parallel_size() const override { return topology_.tensor_parallel_size(); }
  [[nodiscard]] int pipeline_parallel_size() const override { return topology_.pipeline_parallel_size(); }
  [[nodiscard]] const ProcessGroup& data_parallel_group() const override { return data_; }
  [[nodiscard]] int model_parallel_size() const override { return tensor_parallel_size() * pipeline_parallel_size(); }
  [[nodiscard]] const ProcessGroup* tensor_parallel_group() const override { return &tensor_; }
  [[nodiscard]] const ProcessGroup* pipeline_parallel_group() const override { return &pipeline_; }

 private:
  // The agreed sizes, and the duplicate of the world the groups are split from.
  struct Agreed {
    ParallelConfig config;
    std::unique_ptr<Communicator> duplicate;
  };
  static Agreed agree_then_dup(const Communicator& world, int tensor_parallel_size, int pipeline_parallel_size);
  explicit GridMpu(Agreed&& agreed);

  Topology topology_;
  ProcessGroup tensor_;
  ProcessGroup pipeline_;
  ProcessGroup data_;
};

}  // namespace pcx
