// The CUDA runtime functions pcx, its tests, samples and benchmarks call, on the host.
//
// Devices are numbers; device memory is host memory that the emulator remembers as
// belonging to a device; a stream is a thread that runs its work in order, so work
// enqueued on it completes later, and work that waits for a peer that never comes
// never completes. Not modelled: kernels, events, graphs, the legacy default stream's
// implicit synchronization with other streams, unified addressing of host memory.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "emulator.hpp"
#include "pcx_emulator.h"

/// A stream: a queue of tasks that one thread runs in order.
struct CUstream_st {
  explicit CUstream_st(int on) : device(on) {}
  const int device;
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<pcxemu::Task> queue;
  bool running = false;
  bool closing = false;

  [[nodiscard]] bool idle() const { return queue.empty() && !running; }
};

namespace pcxemu {
namespace {

struct Allocation {
  std::size_t bytes;
  int device;   // of device memory, or the device current when pinned host memory was allocated
  bool pinned;  // host memory from cudaMallocHost
};

struct Runtime {
  std::mutex mutex;
  std::map<std::uintptr_t, Allocation> allocations;  // by start address
  // Shared with each stream's thread, so a stream destroyed while another thread waits
  // on it lives until both are done with it.
  std::map<const CUstream_st*, std::shared_ptr<CUstream_st>> streams;  // created, not destroyed
  std::vector<std::shared_ptr<CUstream_st>> defaults;
  std::vector<std::size_t> allocated;  // bytes by device
  std::vector<int> communicators;      // live communicators by device
  std::atomic<cudaError_t> sticky{cudaSuccess};
};

// Never destroyed: see emulator.hpp.
Runtime& runtime() {
  static Runtime* const instance = [] {
    auto* made = new Runtime;
    const auto devices = static_cast<std::size_t>(settings().devices);
    made->allocated.assign(devices, 0);
    made->communicators.assign(devices, 0);
    made->defaults.resize(devices);
    return made;
  }();
  return *instance;
}

thread_local cudaError_t last_error = cudaSuccess;
thread_local int device_of_thread = 0;

// Every entry point returns through here, so cudaGetLastError sees what it returned.
cudaError_t result(cudaError_t code) {
  if (code != cudaSuccess) last_error = code;
  return code;
}

// A sticky error ends every later call, as on a real context after a kernel fault.
cudaError_t sticky() { return runtime().sticky.load(); }

void work(CUstream_st* stream) {
  std::unique_lock lock(stream->mutex);
  for (;;) {
    stream->changed.wait(lock, [&] { return !stream->queue.empty() || stream->closing; });
    if (stream->queue.empty()) break;
    Task task = std::move(stream->queue.front());
    stream->queue.pop_front();
    stream->running = true;
    lock.unlock();
    task();
    lock.lock();
    stream->running = false;
    stream->changed.notify_all();
  }
}

// A destroyed stream's thread finishes its work, then lets the stream go (cudaStreamDestroy
// returns at once: "resources will be released automatically once the device has
// completed all work in stream").
void start(const std::shared_ptr<CUstream_st>& stream) {
  std::thread([stream] { work(stream.get()); }).detach();
}

// The stream a handle names; null, cudaStreamLegacy and cudaStreamPerThread name the
// default stream of `device` (per-thread default streams are not told apart).
std::shared_ptr<CUstream_st> resolve(cudaStream_t stream, int device) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  if (settings().devices == 0) return nullptr;
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) {
    auto& slot = rt.defaults[static_cast<std::size_t>(device)];
    if (!slot) {
      slot = std::make_shared<CUstream_st>(device);
      start(slot);
    }
    return slot;
  }
  const auto it = rt.streams.find(stream);
  return it == rt.streams.end() ? nullptr : it->second;
}

void wait_idle(CUstream_st* stream) {
  std::unique_lock lock(stream->mutex);
  stream->changed.wait(lock, [&] { return stream->idle(); });
}

// Waits for every stream of `device`: what cudaDeviceSynchronize and cudaFree do.
void synchronize_device(int device) {
  std::vector<std::shared_ptr<CUstream_st>> streams;
  {
    Runtime& rt = runtime();
    std::lock_guard lock(rt.mutex);
    for (const auto& [handle, s] : rt.streams)
      if (s->device == device) streams.push_back(s);
    if (const auto& d = rt.defaults[static_cast<std::size_t>(device)]) streams.push_back(d);
  }
  for (const auto& s : streams) wait_idle(s.get());
}

// The allocation holding `pointer`, if any.
const Allocation* find(const void* pointer, std::uintptr_t* start = nullptr) {
  Runtime& rt = runtime();
  const auto address = reinterpret_cast<std::uintptr_t>(pointer);
  auto it = rt.allocations.upper_bound(address);
  if (it == rt.allocations.begin()) return nullptr;
  --it;
  if (address - it->first >= std::max<std::size_t>(it->second.bytes, 1)) return nullptr;
  if (start) *start = it->first;
  return &it->second;
}

enum class Where { host, pinned, device };

// Where `bytes` from `pointer` live; false if they start in an allocation and run past it.
bool locate(const void* pointer, std::size_t bytes, Where& where) {
  std::lock_guard lock(runtime().mutex);
  std::uintptr_t start = 0;
  const Allocation* allocation = find(pointer, &start);
  if (allocation == nullptr) {
    where = Where::host;
    return true;
  }
  where = allocation->pinned ? Where::pinned : Where::device;
  return bytes <= allocation->bytes - (reinterpret_cast<std::uintptr_t>(pointer) - start);
}

// The copy directions a kind allows ("cudaMemcpyDefault: direction inferred from the
// pointer values"); a mismatch is cudaErrorInvalidValue rather than undefined behaviour.
cudaError_t check_copy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  Where to = Where::host;
  Where from = Where::host;
  if (!locate(dst, bytes, to) || !locate(src, bytes, from)) return cudaErrorInvalidValue;
  const bool device_to = to == Where::device;
  const bool device_from = from == Where::device;
  switch (kind) {
    case cudaMemcpyHostToHost: return !device_to && !device_from ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyHostToDevice: return device_to && !device_from ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToHost: return !device_to && device_from ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDeviceToDevice: return device_to && device_from ? cudaSuccess : cudaErrorInvalidValue;
    case cudaMemcpyDefault: return cudaSuccess;
  }
  return cudaErrorInvalidMemcpyDirection;
}

cudaError_t no_device() { return settings().devices == 0 ? cudaErrorNoDevice : cudaSuccess; }

}  // namespace

cudaError_t enqueue(cudaStream_t stream, int device, Task task) {
  const std::shared_ptr<CUstream_st> target = resolve(stream, device);
  if (target == nullptr) return cudaErrorInvalidResourceHandle;
  std::lock_guard lock(target->mutex);
  target->queue.push_back(std::move(task));
  target->changed.notify_all();
  return cudaSuccess;
}

bool device_accessible(const void* pointer, std::size_t bytes, int device) {
  Where where = Where::host;
  if (!locate(pointer, bytes, where) || where == Where::host) return false;
  if (where == Where::pinned) return true;
  std::lock_guard lock(runtime().mutex);
  return find(pointer)->device == device;  // another device's memory faults (no peer access)
}

void set_sticky_error(cudaError_t error) {
  cudaError_t none = cudaSuccess;
  runtime().sticky.compare_exchange_strong(none, error);
}

int current_device() { return device_of_thread; }

int machine_device(int device) { return settings().visible[static_cast<std::size_t>(device)]; }

void charge_communicator(int device, int count) {
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  rt.communicators[static_cast<std::size_t>(device)] += count;
}

}  // namespace pcxemu

using namespace pcxemu;

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return result(cudaErrorInvalidValue);
  *count = settings().devices;
  return result(no_device());
}

cudaError_t cudaSetDevice(int device) {
  if (const cudaError_t e = sticky()) return result(e);
  if (const cudaError_t e = no_device()) return result(e);
  if (device < 0 || device >= settings().devices) return result(cudaErrorInvalidDevice);
  device_of_thread = device;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return result(cudaErrorInvalidValue);
  if (const cudaError_t e = no_device()) return result(e);
  *device = device_of_thread;
  return cudaSuccess;
}

// The bus id names the machine's device, so two processes that see one device under
// different numbers (CUDA_VISIBLE_DEVICES) get the same id, as on a real machine.
cudaError_t cudaDeviceGetPCIBusId(char* bus_id, int length, int device) {
  if (const cudaError_t e = no_device()) return result(e);
  if (device < 0 || device >= settings().devices) return result(cudaErrorInvalidDevice);
  if (bus_id == nullptr || length < 13) return result(cudaErrorInvalidValue);
  std::snprintf(bus_id, static_cast<std::size_t>(length), "0000:%02x:00.0", 0x10 + machine_device(device));
  return cudaSuccess;
}

cudaError_t cudaGetLastError() {
  if (const cudaError_t e = sticky()) return e;
  return std::exchange(last_error, cudaSuccess);
}

cudaError_t cudaPeekAtLastError() { return sticky() != cudaSuccess ? sticky() : last_error; }

const char* cudaGetErrorName(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    default: return "unknown error";
  }
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return result(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) { return cudaDriverGetVersion(version); }

cudaError_t cudaMalloc(void** pointer, std::size_t bytes) {
  if (const cudaError_t e = sticky()) return result(e);
  if (const cudaError_t e = no_device()) return result(e);
  if (pointer == nullptr) return result(cudaErrorInvalidValue);
  *pointer = nullptr;
  if (bytes == 0) return cudaSuccess;
  Runtime& rt = runtime();
  const int device = device_of_thread;
  std::lock_guard lock(rt.mutex);
  const auto d = static_cast<std::size_t>(device);
  const std::size_t in_use = rt.allocated[d] + static_cast<std::size_t>(rt.communicators[d]) * settings().comm_memory;
  if (bytes > settings().device_memory || in_use > settings().device_memory - bytes) {
    return result(cudaErrorMemoryAllocation);
  }
  void* memory = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (memory == nullptr) return result(cudaErrorMemoryAllocation);
  // Device memory starts as garbage, not zeros; the first MiB is enough to show a read of
  // what nobody wrote, without committing host memory for a large buffer.
  std::memset(memory, 0xA5, std::min<std::size_t>(bytes, std::size_t{1} << 20));
  rt.allocations.emplace(reinterpret_cast<std::uintptr_t>(memory), Allocation{bytes, device, false});
  rt.allocated[d] += bytes;
  *pointer = memory;
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** pointer, std::size_t bytes) {
  if (const cudaError_t e = sticky()) return result(e);
  if (pointer == nullptr) return result(cudaErrorInvalidValue);
  if (bytes > (std::size_t{1} << 40)) return result(cudaErrorMemoryAllocation);
  void* memory = std::aligned_alloc(256, (std::max<std::size_t>(bytes, 1) + 255) / 256 * 256);
  if (memory == nullptr) return result(cudaErrorMemoryAllocation);
  std::lock_guard lock(runtime().mutex);
  runtime().allocations.emplace(reinterpret_cast<std::uintptr_t>(memory), Allocation{bytes, device_of_thread, true});
  *pointer = memory;
  return cudaSuccess;
}

// cudaFree synchronizes the device first (CUDA Programming Guide, "Implicit
// Synchronization"), so freeing a buffer a stuck collective still uses waits for it.
cudaError_t cudaFree(void* pointer) {
  if (const cudaError_t e = sticky()) return result(e);
  if (pointer == nullptr) return cudaSuccess;
  Runtime& rt = runtime();
  int device = 0;
  {
    std::lock_guard lock(rt.mutex);
    const auto it = rt.allocations.find(reinterpret_cast<std::uintptr_t>(pointer));
    if (it == rt.allocations.end() || it->second.pinned) return result(cudaErrorInvalidValue);
    device = it->second.device;
  }
  synchronize_device(device);
  std::lock_guard lock(rt.mutex);
  const auto it = rt.allocations.find(reinterpret_cast<std::uintptr_t>(pointer));
  if (it == rt.allocations.end()) return result(cudaErrorInvalidValue);  // freed meanwhile by another thread
  rt.allocated[static_cast<std::size_t>(device)] -= it->second.bytes;
  rt.allocations.erase(it);
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaFreeHost(void* pointer) {
  if (pointer == nullptr) return cudaSuccess;
  std::lock_guard lock(runtime().mutex);
  const auto it = runtime().allocations.find(reinterpret_cast<std::uintptr_t>(pointer));
  if (it == runtime().allocations.end() || !it->second.pinned) return result(cudaErrorInvalidValue);
  runtime().allocations.erase(it);
  std::free(pointer);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(std::size_t* free, std::size_t* total) {
  if (const cudaError_t e = sticky()) return result(e);
  if (const cudaError_t e = no_device()) return result(e);
  if (free == nullptr || total == nullptr) return result(cudaErrorInvalidValue);
  Runtime& rt = runtime();
  std::lock_guard lock(rt.mutex);
  const auto d = static_cast<std::size_t>(device_of_thread);
  const std::size_t used = rt.allocated[d] + static_cast<std::size_t>(rt.communicators[d]) * settings().comm_memory;
  *total = settings().device_memory;
  *free = used >= *total ? 0 : *total - used;
  return cudaSuccess;
}

// CUDA 11 and later report memory the runtime does not know as cudaMemoryTypeUnregistered
// with cudaSuccess (earlier versions returned cudaErrorInvalidValue).
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attributes, const void* pointer) {
  if (const cudaError_t e = sticky()) return result(e);
  if (attributes == nullptr) return result(cudaErrorInvalidValue);
  *attributes = cudaPointerAttributes{};
  std::lock_guard lock(runtime().mutex);
  const Allocation* allocation = find(pointer);
  if (allocation == nullptr) {
    attributes->type = cudaMemoryTypeUnregistered;
    attributes->device = -2;
    attributes->hostPointer = const_cast<void*>(pointer);
    return cudaSuccess;
  }
  const bool pinned = allocation->pinned;
  attributes->type = pinned ? cudaMemoryTypeHost : cudaMemoryTypeDevice;
  attributes->device = allocation->device;
  attributes->devicePointer = const_cast<void*>(pointer);
  attributes->hostPointer = pinned ? const_cast<void*>(pointer) : nullptr;
  return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (const cudaError_t e = sticky()) return result(e);
  if (const cudaError_t e = no_device()) return result(e);
  if (stream == nullptr || flags > cudaStreamNonBlocking) return result(cudaErrorInvalidValue);
  auto made = std::make_shared<CUstream_st>(device_of_thread);
  {
    std::lock_guard lock(runtime().mutex);
    runtime().streams.emplace(made.get(), made);
  }
  start(made);
  *stream = made.get();
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  std::shared_ptr<CUstream_st> gone;
  {
    std::lock_guard lock(runtime().mutex);
    const auto it = runtime().streams.find(stream);
    if (it == runtime().streams.end()) return result(cudaErrorInvalidResourceHandle);
    gone = std::move(it->second);
    runtime().streams.erase(it);
  }
  std::lock_guard lock(gone->mutex);
  gone->closing = true;
  gone->changed.notify_all();
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t stream) {
  if (const cudaError_t e = sticky()) return result(e);
  const std::shared_ptr<CUstream_st> target = resolve(stream, device_of_thread);
  if (target == nullptr) return result(cudaErrorInvalidResourceHandle);
  std::lock_guard lock(target->mutex);
  return target->idle() ? cudaSuccess : cudaErrorNotReady;  // not ready is not an error: last error unchanged
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (const cudaError_t e = sticky()) return result(e);
  const std::shared_ptr<CUstream_st> target = resolve(stream, device_of_thread);
  if (target == nullptr) return result(cudaErrorInvalidResourceHandle);
  wait_idle(target.get());
  return result(sticky());
}

cudaError_t cudaDeviceSynchronize() {
  if (const cudaError_t e = sticky()) return result(e);
  if (const cudaError_t e = no_device()) return result(e);
  synchronize_device(device_of_thread);
  return result(sticky());
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (const cudaError_t e = sticky()) return result(e);
  if (bytes == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return result(cudaErrorInvalidValue);
  if (const cudaError_t e = check_copy(dst, src, bytes, kind)) return result(e);
  Where to = Where::host;
  Where from = Where::host;
  locate(dst, bytes, to);
  locate(src, bytes, from);
  if (to != Where::device && from != Where::device) {  // host to host: synchronous with the host
    std::memmove(dst, src, bytes);
    return cudaSuccess;
  }
  return result(enqueue(stream, device_of_thread, [=] { std::memmove(dst, src, bytes); }));
}

// Synchronous copies run in the order of the current device's default stream.
cudaError_t cudaMemcpy(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  if (const cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, nullptr)) return e;
  return cudaStreamSynchronize(nullptr);
}

cudaError_t cudaMemsetAsync(void* pointer, int value, std::size_t bytes, cudaStream_t stream) {
  if (const cudaError_t e = sticky()) return result(e);
  if (bytes == 0) return cudaSuccess;
  Where where = Where::host;
  if (!locate(pointer, bytes, where) || where != Where::device) return result(cudaErrorInvalidValue);
  return result(enqueue(stream, device_of_thread, [=] { std::memset(pointer, value, bytes); }));
}

cudaError_t cudaMemset(void* pointer, int value, std::size_t bytes) {
  if (const cudaError_t e = cudaMemsetAsync(pointer, value, bytes, nullptr)) return e;
  return cudaStreamSynchronize(nullptr);
}

// The same functions under the names a program compiled with
// CUDA_API_PER_THREAD_DEFAULT_STREAM calls.
cudaError_t cudaMemcpy_ptds(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpy(dst, src, bytes, kind);
}
cudaError_t cudaMemcpyAsync_ptsz(void* dst, const void* src, std::size_t bytes, cudaMemcpyKind kind,
                                 cudaStream_t stream) {
  return cudaMemcpyAsync(dst, src, bytes, kind, stream);
}
cudaError_t cudaMemset_ptds(void* pointer, int value, std::size_t bytes) { return cudaMemset(pointer, value, bytes); }
cudaError_t cudaMemsetAsync_ptsz(void* pointer, int value, std::size_t bytes, cudaStream_t stream) {
  return cudaMemsetAsync(pointer, value, bytes, stream);
}
cudaError_t cudaStreamQuery_ptsz(cudaStream_t stream) { return cudaStreamQuery(stream); }
cudaError_t cudaStreamSynchronize_ptsz(cudaStream_t stream) { return cudaStreamSynchronize(stream); }

int pcxemu_live_allocations(void) {
  std::lock_guard lock(runtime().mutex);
  return static_cast<int>(std::count_if(runtime().allocations.begin(), runtime().allocations.end(),
                                        [](const auto& entry) { return !entry.second.pinned; }));
}

size_t pcxemu_allocated_bytes(void) {
  std::lock_guard lock(runtime().mutex);
  std::size_t bytes = 0;
  for (const std::size_t b : runtime().allocated) bytes += b;
  return bytes;
}

int pcxemu_live_streams(void) {
  std::lock_guard lock(runtime().mutex);
  return static_cast<int>(runtime().streams.size());
}

}  // extern "C"
