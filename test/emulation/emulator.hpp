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
  int devices = 8;           // visible to this process
  std::vector<int> visible;  // the machine's device behind each visible one (CUDA_VISIBLE_DEVICES)
  std::size_t device_memory = std::size_t{80} << 30;
  std::size_t comm_memory = std::size_t{64} << 20;
  std::chrono::microseconds launch_delay{2000};
  bool split_in_progress = false;  // non-blocking split and shrink return ncclInProgress
  std::uint64_t host = 0;          // which host this process is on, as NCCL tells hosts apart
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
/// default stream of @p device). Returns cudaErrorInvalidResourceHandle for a stream
/// that does not exist.
cudaError_t enqueue(cudaStream_t stream, int device, Task task);

/// Whether [pointer, pointer + bytes) lies in one allocation that a kernel on @p device
/// may touch: device memory of @p device, or pinned host memory.
bool device_accessible(const void* pointer, std::size_t bytes, int device);

/// Makes every later CUDA call of the process fail with @p error, as a kernel that touched
/// an invalid address does to a real CUDA context (a "sticky" error).
void set_sticky_error(cudaError_t error);

/// The device current on the calling thread.
int current_device();

/// The machine's device behind visible device @p device: the same in every process.
int machine_device(int device);

/// Charges (or, with a negative count, releases) the memory NCCL's buffers of one
/// communicator take on @p device.
void charge_communicator(int device, int count);

// ---- Shared memory between processes ------------------------------------------------

/// Where a member of a communicator runs: its host and the machine's device it uses.
struct Place {
  std::uint64_t host;
  std::int32_t device;
  bool operator==(const Place&) const = default;
};

/// A communicator's members meet in a segment named after its id: each writes its
/// process id and @p mine at its rank. Returns the process ids by rank once all have
/// arrived (and their places in @p places), or an empty vector when @p cancelled became
/// true first, or with @p error set when the segment cannot be used or the ranks disagree
/// on the size.
std::vector<pid_t> rendezvous(const std::string& id, int nranks, int rank, Place mine, std::vector<Place>& places,
                              const std::atomic<bool>& cancelled, std::string& error);

/// Publishes @p bytes under @p name for @p readers readers; the last reader removes it.
/// Returns false (with @p error) when shared memory cannot be written.
bool publish(const std::string& name, const void* data, std::size_t bytes, int readers, std::string& error);

/// Waits until @p name is published, then calls @p read with its data. Returns false when
/// @p cancelled became true first or the segment is unreadable (with @p error set).
bool consume(const std::string& name, const std::atomic<bool>& cancelled,
             const std::function<void(const std::byte*, std::size_t)>& read, std::string& error);

/// Waits until every reader of @p name, which this process published, has read it.
/// Returns false when @p cancelled becomes true first.
bool wait_read(const std::string& name, const std::atomic<bool>& cancelled);
/// Name of a segment @p owner publishes: owner's process id first, so that segments of
/// processes that died can be found and removed (sweep_dead_segments).
std::string segment_name(pid_t owner, const std::string& comm_id, const std::string& tag);

/// Removes the segments of processes that no longer exist, and meetings nobody alive is in.
void sweep_dead_segments();

/// Removes what this process published for communicator @p comm_id and nobody will read
/// any more, once the communicator is aborted.
void remove_own_segments(const std::string& comm_id);

// ---- Arithmetic -------------------------------------------------------------------

/// Bytes of one element, or 0 for a type NCCL does not have.
std::size_t type_size(ncclDataType_t type);

/// accumulator[i] = accumulator[i] op operand[i] for @p count elements of @p type.
void reduce(void* accumulator, const void* operand, std::size_t count, ncclDataType_t type, ncclRedOp_t op);

/// Whether @p type is a floating-point type.
bool is_floating(ncclDataType_t type);

/// ncclAvg's step: floating-point elements are multiplied by 1/@p n (in their own type)
/// before the sum, integers divided by @p n after it (src/enqueue.cc, ncclDevPreMulSum and
/// ncclDevSumPostDiv).
void premultiply(void* values, std::size_t count, ncclDataType_t type, int n);
/// See premultiply().
void divide(void* values, std::size_t count, ncclDataType_t type, int n);

}  // namespace pcxemu
