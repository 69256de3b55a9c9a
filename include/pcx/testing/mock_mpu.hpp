#pragma once
/// @file mock_mpu.hpp
/// @brief An MPU whose answers a test sets.

#include <optional>

#include "pcx/mpu.hpp"

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
  [[nodiscard]] int model_parallel_size() const override { return model_; }
  /// @throws ConfigError if no data parallel group was set.
  [[nodiscard]] const ProcessGroup& data_parallel_group() const override;
  [[nodiscard]] const ProcessGroup* sequence_parallel_group() const override {
    return sequence_ ? &*sequence_ : nullptr;
  }
  [[nodiscard]] const ProcessGroup* sequence_data_parallel_group() const override {
    return sequence_data_ ? &*sequence_data_ : nullptr;
  }

 private:
  int tensor_ = 1;
  int pipeline_ = 1;
  int model_ = 1;
  std::optional<ProcessGroup> data_;
  std::optional<ProcessGroup> sequence_;
  std::optional<ProcessGroup> sequence_data_;
};

}  // namespace pcx::testing
