#pragma once
// Internals shared by the emulator's CUDA runtime (cuda_runtime.cpp), its NCCL
// (nccl.cpp), its shared-memory transport (shm.cpp) and its arithmetic (reduce.cpp).
//
// The emulator is a test double of a driver, so unlike pcx it has process-wide state:
// one Runtime per process, like the CUDA driver's context. It is never destroyed, so a
// stream still waiting for a peer cannot hold up the process's exit.

#include <cuda_runtime.h>
#include <nccl.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace pcxemu {

using Clock = std::chrono::steady_clock;

/// The environment, read once (see pcx_emulator.h).
struct Settings {
  int devices = 8;
  std::size_t device_memory = std::size_t{80} << 30;
  std::size_t comm_memory = std::size_t{64} << 20;
  std::chrono::microseconds launch_delay{2000};
};
const Settings& settings();

/// Parses "123", "64K", "80G": bytes, or -1 when it is not such a number.
long long parse_bytes(const char* text);

/// Polls with a pause that grows from 20 us to 1 ms, so a wait that lasts costs little CPU
/// while a short one is noticed at once.
class Backoff {
 public:
  void pause();

 private:
  std::chrono::microseconds pause_{20};
};

// ---- CUDA runtime internals -------------------------------------------------------

/// Work of a stream: runs on the stream's own thread, in the order it was enqueued.
using Task = std::function<void()>;

/// Puts @p task on @p stream (null, cudaStreamLegacy and cudaStreamPerThread mean the
/// current device's default stream). Returns cudaErrorInvalidResourceHandle for a stream
/// that does not exist.
cudaError_t enqueue(cudaStream_t stream, Task task);

/// Whether [pointer, pointer + bytes) lies in one allocation that a kernel on @p device
/// may touch: device memory of @p device, or pinned host memory.
bool device_accessible(const void* pointer, std::size_t bytes, int device);

/// Makes every later CUDA call of the process fail with @p error, as a kernel that touched
/// an invalid address does to a real CUDA context (a "sticky" error).
void set_sticky_error(cudaError_t error);

/// The device current on the calling thread.
int current_device();

/// Charges (or, with a negative count, releases) the memory NCCL's buffers of one
/// communicator take on @p device.
void charge_communicator(int device, int count);

// ---- Shared memory between processes ------------------------------------------------

/// A communicator's members meet in a segment named after its id: each writes its
/// process id at its rank. Returns the process ids by rank once all have arrived, or an
/// empty vector when @p cancelled became true first (or the ranks disagree on the size,
/// with @p error set).
std::vector<pid_t> rendezvous(const std::string& id, int nranks, int rank, const std::atomic<bool>& cancelled,
                              std::string& error);

/// Publishes @p bytes under @p name for @p readers readers; the last reader removes it.
/// Returns false (with @p error) when shared memory cannot be written.
bool publish(const std::string& name, const void* data, std::size_t bytes, int readers, std::string& error);

/// Waits until @p name is published, then calls @p read with its data. Returns false when
/// @p cancelled became true first or the segment is unreadable (with @p error set).
bool consume(const std::string& name, const std::atomic<bool>& cancelled,
             const std::function<void(const std::byte*, std::size_t)>& read, std::string& error);

/// Name of a segment @p owner publishes: owner's process id first, so that segments of
/// processes that died can be found and removed (sweep_dead_segments).
std::string segment_name(pid_t owner, const std::string& comm_id, const std::string& tag);

/// Removes the segments of processes that no longer exist.
void sweep_dead_segments();

// ---- Arithmetic -------------------------------------------------------------------

/// Bytes of one element, or 0 for a type NCCL does not have.
std::size_t type_size(ncclDataType_t type);

/// accumulator[i] = accumulator[i] op operand[i] for @p count elements of @p type.
void reduce(void* accumulator, const void* operand, std::size_t count, ncclDataType_t type, ncclRedOp_t op);

/// Divides each of @p count elements by @p divisor (ncclAvg's last step).
void divide(void* values, std::size_t count, ncclDataType_t type, int divisor);

}  // namespace pcxemu
