#pragma once
/// @file mock_mpu.hpp
/// @brief An MPU whose answers a test sets, and one in Megatron's layout in one line.

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "pcx/mpu.hpp"
#include "pcx/testing/fake_communicator.hpp"

namespace pcx::testing {

/// An Mpu that answers what the test told it. Sizes default to 1; the data parallel
/// group must be set before a context reads it. Setters return *this to chain.
class MockMpu final : public Mpu {
 public:
  /// Sets the tensor parallel size.
  MockMpu& set_tensor_parallel_size(int size) {
    tensor_ = size;
    return *this;
  }
  /// Sets the pipeline parallel size.
  MockMpu& set_pipeline_parallel_size(int size) {
    pipeline_ = size;
    return *this;
  }
  /// Sets the context parallel size.
  MockMpu& set_context_parallel_size(int size) {
    context_ = size;
    return *this;
  }
  /// Sets the model parallel size.
  MockMpu& set_model_parallel_size(int size) {
    model_ = size;
    return *this;
  }
  /// Sets the data parallel group.
  MockMpu& set_data_parallel_group(ProcessGroup group) {
    data_.emplace(std::move(group));
    return *this;
  }
  /// Sets the tensor parallel group (by default there is none).
  MockMpu& set_tensor_parallel_group(ProcessGroup group) {
    tensor_group_.emplace(std::move(group));
    return *this;
  }
  /// Sets the pipeline parallel group (by default there is none).
  MockMpu& set_pipeline_parallel_group(ProcessGroup group) {
    pipeline_group_.emplace(std::move(group));
    return *this;
  }
  /// Sets the group of another dense kind (see Mpu::dense_group(); by default there is none).
  MockMpu& set_dense_group(GroupKind kind, ProcessGroup group) {
    dense_.insert_or_assign(kind, std::move(group));
    return *this;
  }
  /// Sets the sequence parallel group (by default there is none).
  MockMpu& set_sequence_parallel_group(ProcessGroup group) {
    sequence_.emplace(std::move(group));
    return *this;
  }
  /// Sets the sequence data parallel group (by default there is none).
  MockMpu& set_sequence_data_parallel_group(ProcessGroup group) {
    sequence_data_.emplace(std::move(group));
    return *this;
  }

  [[nodiscard]] int tensor_parallel_size() const override { return tensor_; }
  [[nodiscard]] int pipeline_parallel_size() const override { return pipeline_; }
  [[nodiscard]] int context_parallel_size() const override { return context_; }
  [[nodiscard]] int model_parallel_size() const override { return model_; }
  /// @throws ConfigError if no data parallel group was set.
  [[nodiscard]] const ProcessGroup& data_parallel_group() const override;
  [[nodiscard]] const ProcessGroup* tensor_parallel_group() const override {
    return tensor_group_ ? &*tensor_group_ : nullptr;
  }
  [[nodiscard]] const ProcessGroup* pipeline_parallel_group() const override {
    return pipeline_group_ ? &*pipeline_group_ : nullptr;
  }
  [[nodiscard]] const ProcessGroup* dense_group(GroupKind kind) const override {
    const auto it = dense_.find(kind);
    return it == dense_.end() ? Mpu::dense_group(kind) : &it->second;
  }
  [[nodiscard]] const ProcessGroup* sequence_parallel_group() const override {
    return sequence_ ? &*sequence_ : nullptr;
  }
  [[nodiscard]] const ProcessGroup* sequence_data_parallel_group() const override {
    return sequence_data_ ? &*sequence_data_ : nullptr;
  }

 private:
  int tensor_ = 1;
  int pipeline_ = 1;
  int context_ = 1;
  int model_ = 1;
  std::optional<ProcessGroup> data_;
  std::optional<ProcessGroup> tensor_group_;
  std::optional<ProcessGroup> pipeline_group_;
  std::optional<ProcessGroup> sequence_;
  std::optional<ProcessGroup> sequence_data_;
  std::map<GroupKind, ProcessGroup> dense_;
};

/// The group of world ranks @p ranks (in group-rank order) as world rank @p caller of
/// @p world holds it, over a FakeCommunicator made directly, so no split is recorded.
/// @throws ConfigError if @p caller is not in @p ranks, or as ProcessGroup and
///         FakeCommunicator.
[[nodiscard]] ProcessGroup fake_process_group(const std::shared_ptr<FakeWorld>& world, std::vector<int> ranks,
                                              int caller);

/// The MPU that Megatron hands world rank @p rank of @p world: tensor, pipeline and data
/// parallel groups of Megatron's layout (rank = pipeline × data × tensor, tensor
/// fastest) and their sizes, the model parallel size tensor × pipeline. The groups are
/// fake_process_group()s, so the splits @p world records are the caller's own.
/// @throws ConfigError if @p rank is outside the world or the sizes do not fit it (as
///         pcx::validate).
[[nodiscard]] std::shared_ptr<MockMpu> mock_megatron_mpu(const std::shared_ptr<FakeWorld>& world, int rank,
                                                         int tensor_parallel_size, int pipeline_parallel_size = 1);

}  // namespace pcx::testing
