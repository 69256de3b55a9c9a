#include "pcx/nccl/nccl_communicator.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <new>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "../host.hpp"
#include "pcx/agreement.hpp"
#include "pcx/error.hpp"
#include "pcx/self_communicator.hpp"

namespace pcx {
namespace {

using Clock = std::chrono::steady_clock;

ncclDataType_t nccl_type(DataType type) {
  switch (type) {
    case DataType::int8: return ncclInt8;
    case DataType::uint8: return ncclUint8;
    case DataType::int32: return ncclInt32;
    case DataType::uint32: return ncclUint32;
    case DataType::int64: return ncclInt64;
    case DataType::uint64: return ncclUint64;
    case DataType::float16: return ncclFloat16;
    case DataType::bfloat16: return ncclBfloat16;
    case DataType::float32: return ncclFloat32;
    case DataType::float64: return ncclFloat64;
  }
  // The enqueue_* functions reach here without the Communicator's argument checks.
  throw ConfigError(fmt::format("data type {} is not a pcx::DataType", static_cast<int>(type)));
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::prod: return ncclProd;
    case ReduceOp::min: return ncclMin;
    case ReduceOp::max: return ncclMax;
    case ReduceOp::avg: return ncclAvg;
  }
  throw ConfigError(fmt::format("reduce operation {} is not a pcx::ReduceOp", static_cast<int>(op)));
}

[[maybe_unused]] std::string nccl_version_text() { return fmt::format("{}.{}.{}", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH); }

// NCCL's text for `code`, with its last error message (ncclGetLastError ignores its
// argument: src/init.cc ncclGetLastError).
std::string nccl_text(ncclResult_t code) {
  const char* last = ncclGetLastError(nullptr);
  return fmt::format("{} (NCCL error {}){}{}", ncclGetErrorString(code), static_cast<int>(code),
                     last && *last ? "; last NCCL error: " : "", last ? last : "");
}

std::string quoted_name(const CommOptions& options) {
  return options.name.empty() ? std::string("(unnamed)") : fmt::format("\"{}\"", options.name);
}

// The NCCL configuration of a new communicator. It points into `options`, which must
// outlive the communicator: NCCL keeps the commName pointer it is given (src/init.cc
// parseCommConfig copies the pointer, not the string).
ncclConfig_t make_config(const CommOptions& options) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  if (options.timeout.count() < 0) {
    throw ConfigError(fmt::format("NCCL timeout {} ms is negative", options.timeout.count()));
  }
  config.blocking = options.timeout.count() > 0 ? 0 : 1;
  const auto positive = [](std::optional<int> value, const char* what) {
    if (value && *value < 1) throw ConfigError(fmt::format("NCCL {} {} must be at least 1", what, *value));
  };
  positive(options.cga_cluster_size, "cgaClusterSize");
  positive(options.min_ctas, "minCTAs");
  positive(options.max_ctas, "maxCTAs");
  if (options.min_ctas && options.max_ctas && *options.min_ctas > *options.max_ctas) {
    throw ConfigError(fmt::format("NCCL minCTAs {} is above maxCTAs {}", *options.min_ctas, *options.max_ctas));
  }
  if (options.cga_cluster_size) config.cgaClusterSize = *options.cga_cluster_size;
  if (options.min_ctas) config.minCTAs = *options.min_ctas;
  if (options.max_ctas) config.maxCTAs = *options.max_ctas;
  if (!options.net_name.empty()) config.netName = options.net_name.c_str();
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  config.splitShare = options.share_resources ? 1 : 0;
#else
  if (options.share_resources) {
    throw ConfigError(
        fmt::format("share_resources (splitShare) needs NCCL 2.18 or newer; this is {}", nccl_version_text()));
  }
#endif
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 20, 0)
  if (!options.name.empty()) config.commName = options.name.c_str();
#endif
  return config;
}

// Pauses between polls: short for work that ends in microseconds, at most 1 ms for long work.
class Backoff {
 public:
  void pause() {
    std::this_thread::sleep_for(pause_);
    pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
  }

 private:
  std::chrono::microseconds pause_{10};
};

// Polls a communicator that no other thread can reach (being created or finalized)
// until NCCL no longer reports ncclInProgress for it: a non-blocking call is done when
// ncclCommGetAsyncError says so (src/init.cc ncclCommEnsureReady). Returns the final
// state, or ncclInProgress at `deadline`.
ncclResult_t settle(ncclComm_t comm, Clock::time_point deadline) {
  for (Backoff backoff;; backoff.pause()) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t queried = ncclCommGetAsyncError(comm, &state);
    if (queried != ncclSuccess) return queried;
    if (state != ncclInProgress || Clock::now() >= deadline) return state;
  }
}

// Makes a device current and gives the caller's back at the end of the scope: every
// function of the backend leaves the caller's device as it was, though NCCL itself
// switches devices and does not switch back (src/init.cc commDestroySync and
// commCleanup call cudaSetDevice(comm->cudaDev)).
class DeviceGuard {
 public:
  // Throws CommError if CUDA cannot switch.
  explicit DeviceGuard(int device) : DeviceGuard(device, std::nothrow) {
    if (failed_call_ != nullptr) check_cuda(error_, failed_call_);
  }
  // For paths that cannot throw (abort, destruction): switches if CUDA lets it.
  DeviceGuard(int device, std::nothrow_t) noexcept {
    if ((error_ = cudaGetDevice(&previous_)) != cudaSuccess) {
      previous_ = -1;
      failed_call_ = "cudaGetDevice";
    } else if ((error_ = cudaSetDevice(device)) != cudaSuccess) {
      failed_call_ = "cudaSetDevice";
    }
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  ~DeviceGuard() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
  cudaError_t error_ = cudaSuccess;
  const char* failed_call_ = nullptr;
};

// Whether NCCL cannot read `pointer` directly: plain or pinned host memory.
bool in_host_memory(const void* pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    cudaGetLastError();  // clear the error of an unknown pointer: it is host memory
    return true;
  }
  return attributes.type == cudaMemoryTypeUnregistered || attributes.type == cudaMemoryTypeHost;
}

// Device memory standing in for the host buffers of one collective. The collectives of
// the Communicator interface accept host memory (a ParallelContext compares its
// configuration in host memory, samples pass std::vectors), which NCCL cannot read; one
// rule for all of them: host buffers are copied to the device before and back after.
class Staging {
 public:
  Staging(const void* send, std::size_t send_bytes, void* recv, std::size_t recv_bytes, cudaStream_t stream)
      : send_(send), recv_(recv), host_recv_(recv), recv_bytes_(recv_bytes), stream_(stream) {
    const bool in_place = send == recv;
    const bool host_send = send_bytes > 0 && in_host_memory(send);
    const bool host_recv = recv_bytes > 0 && (in_place ? host_send : in_host_memory(recv));
    if (!host_send && !host_recv) return;
    constexpr std::size_t kAlignment = 256;
    const std::size_t send_room = host_send && !in_place ? (send_bytes + kAlignment - 1) / kAlignment * kAlignment : 0;
    const std::size_t recv_room = host_recv ? std::max(recv_bytes, in_place ? send_bytes : 0) : 0;
    check_cuda(cudaMalloc(&data_, send_room + recv_room), "cudaMalloc (staging host buffers)");
    auto* bytes = static_cast<std::byte*>(data_);
    if (host_recv) recv_ = bytes + send_room;
    if (host_send) send_ = in_place ? recv_ : bytes;
    copy_recv_back_ = host_recv;
    if (host_send) {
      const cudaError_t copied =
          cudaMemcpyAsync(const_cast<void*>(send_), send, send_bytes, cudaMemcpyDefault, stream_);
      if (copied != cudaSuccess) {
        cudaFree(data_);
        check_cuda(copied, "cudaMemcpyAsync (staging host buffers)");
      }
    }
  }
  Staging(const Staging&) = delete;
  Staging& operator=(const Staging&) = delete;
  ~Staging() {
    // Memory the device may still write into (the stream of a borrowed communicator that
    // timed out, which pcx does not abort) is left allocated rather than freed in use.
    if (data_ != nullptr && cudaStreamQuery(stream_) != cudaErrorNotReady) cudaFree(data_);
  }

  [[nodiscard]] const void* send() const noexcept { return send_; }
  [[nodiscard]] void* recv() const noexcept { return recv_; }
  // Enqueues the copy of the result to the caller's host buffer, once NCCL has put its
  // work on the stream.
  void copy_back() const {
    if (copy_recv_back_) {
      check_cuda(cudaMemcpyAsync(host_recv_, recv_, recv_bytes_, cudaMemcpyDefault, stream_),
                 "cudaMemcpyAsync (staging host buffers)");
    }
  }

 private:
  const void* send_;
  void* recv_;
  void* host_recv_;
  std::size_t recv_bytes_;
  cudaStream_t stream_;
  void* data_ = nullptr;
  bool copy_recv_back_ = false;
};

// The device of a rank that did not name one: its index on the node. Where each rank sees
// a single device (CUDA_VISIBLE_DEVICES set per rank, as Slurm's --gpu-bind does), every
// rank takes device 0, and distinct_devices() then checks they are distinct GPUs.
int default_device(int local_rank, int devices, int rank) {
  if (local_rank < devices) return local_rank;
  if (devices == 1) return 0;
  throw ConfigError(fmt::format(
      "rank {} is rank {} of its node, which has only {} visible CUDA devices: start at most {} ranks per node, "
      "or choose each rank's device with NcclWorldOptions::device",
      rank, local_rank, devices, devices));
}

// Unique ids per world (NcclWorldOptions::ranks_per_unique_id).
int unique_id_count(int size, std::optional<int> ranks_per_id) {
  if (ranks_per_id && *ranks_per_id < 1) {
    throw ConfigError(fmt::format("ranks per NCCL unique id {} is below 1", *ranks_per_id));
  }
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 23, 0)
  const long per_id = ranks_per_id.value_or(128);
  return static_cast<int>((size + per_id - 1) / per_id);
#else
  if (ranks_per_id && *ranks_per_id < size) {
    throw ConfigError(fmt::format("ranks per NCCL unique id {} below the world's {} ranks needs "
                                  "ncclCommInitRankScalable, NCCL 2.23 or newer; this is {}",
                                  *ranks_per_id, size, nccl_version_text()));
  }
  return 1;
#endif
}

// NCCL's blocks of ranks per unique id (src/bootstrap.cc, firstRankFromRoot and
// rootIdFromRank): `size` ranks over `ids` blocks, the first size % ids one rank larger.
int first_rank_of_block(int block, int size, int ids) { return block * (size / ids) + std::min(block, size % ids); }

int block_of_rank(int rank, int size, int ids) {
  const int larger = (size % ids) * (size / ids + 1);  // ranks in the larger blocks
  return rank < larger ? rank / (size / ids + 1) : (rank - larger) / (size / ids) + size % ids;
}

// Free memory of `device`, or null when CUDA cannot tell.
std::optional<std::uint64_t> free_memory(int device) {
  const DeviceGuard guard(device, std::nothrow);
  std::size_t free = 0;
  std::size_t total = 0;
  if (cudaMemGetInfo(&free, &total) != cudaSuccess) return std::nullopt;
  return free;
}

// What the device's free memory dropped by since `before`.
std::optional<std::uint64_t> used_since(int device, std::optional<std::uint64_t> before) {
  const std::optional<std::uint64_t> after = free_memory(device);
  if (!before || !after) return std::nullopt;
  return *before > *after ? *before - *after : 0;
}

constexpr std::size_t kBusIdBytes = 32;

// Two ranks of a node on one GPU would serialize, or deadlock in NCCL (which refuses them
// as "Duplicate GPU detected", src/init.cc): the ranks compare the PCI bus ids of their
// devices with those of the other ranks of their node. Collective over `bootstrap`; a
// rank that has no device yet (an empty id) takes part all the same.
void distinct_devices(const Communicator& bootstrap, const std::vector<int>& node,
                      const std::array<char, kBusIdBytes>& mine) {
  std::vector<char> all(kBusIdBytes * static_cast<std::size_t>(bootstrap.size()));
  bootstrap.all_gather(mine.data(), all.data(), kBusIdBytes, DataType::int8);
  const auto id = [&](int r) { return std::string_view(all.data() + kBusIdBytes * static_cast<std::size_t>(r)); };
  const int rank = bootstrap.rank();
  for (const int r : node) {
    if (r != rank && !id(r).empty() && id(r) == id(rank)) {
      throw ConfigError(
          fmt::format("rank {} and rank {} of its node would share the CUDA device at PCI {}: give each "
                      "rank its own device (NcclWorldOptions::device, or CUDA_VISIBLE_DEVICES)",
                      rank, r, id(r)));
    }
  }
}

// One block of an all-to-all: how many elements go to (or come from) a peer, and where
// they lie in the buffer, in elements.
struct Block {
  std::size_t count;
  std::size_t offset;
};

// The NCCL calls of an all-to-all: one send and one receive per peer, in one group (the
// pattern of NCCL's user guide, "Point-to-point communication: all-to-all"). Blocks of
// no elements are left out on both sides alike, since a receive count equals its
// sender's count. `sends(peer)` and `receives(peer)` give the blocks.
template <class Sends, class Receives>
ncclResult_t all_to_all_calls(const void* send, void* recv, Sends&& sends, Receives&& receives, ncclDataType_t type,
                              std::size_t element, int peers, ncclComm_t comm, cudaStream_t stream) {
  const auto ok = [](ncclResult_t code) { return code == ncclSuccess || code == ncclInProgress; };
  ncclResult_t code = ncclGroupStart();
  if (!ok(code)) return code;
  for (int peer = 0; peer < peers && ok(code); ++peer) {
    const Block out = sends(peer);
    const Block in = receives(peer);
    if (out.count > 0) {
      code = ncclSend(static_cast<const std::byte*>(send) + out.offset * element, out.count, type, peer, comm, stream);
    }
    if (ok(code) && in.count > 0) {
      code = ncclRecv(static_cast<std::byte*>(recv) + in.offset * element, in.count, type, peer, comm, stream);
    }
  }
  const ncclResult_t ended = ncclGroupEnd();  // also after an error: every ncclGroupStart needs its end
  return ok(code) ? ended : code;
}

// The blocks of an all-to-all of `count` elements per peer.
auto equal_blocks(std::size_t count) {
  return [count](int peer) { return Block{count, count * static_cast<std::size_t>(peer)}; };
}

// The blocks of an all_to_all_v.
auto listed_blocks(std::span<const std::size_t> counts, std::span<const std::size_t> offsets) {
  return [counts, offsets](int peer) {
    const auto index = static_cast<std::size_t>(peer);
    return Block{counts[index], offsets[index]};
  };
}

}  // namespace

struct NcclCommunicator::Deadline {
  static Deadline of(const CommOptions& options) {
    return {options.timeout.count() > 0 ? Clock::now() + options.timeout : Clock::time_point::max(), options.timeout};
  }
  Clock::time_point at;
  std::chrono::milliseconds timeout;
};

struct NcclCommunicator::State {
  State(int device_, bool owned_, CommOptions options_)
      : device(device_), owned(owned_), options(std::move(options_)) {}
  State(const State&) = delete;
  State& operator=(const State&) = delete;

  // Finalizes and destroys a live owned handle, then frees what this object made.
  ~State() {
    const DeviceGuard guard(device, std::nothrow);
    if (comm != nullptr && owned) {
      // NCCL's orderly end (src/init.cc): ncclCommFinalize flushes the communicator's work
      // (ncclInProgress until done on a non-blocking one), then ncclCommDestroy frees it.
      // Only a finalize that failed or missed the deadline falls back to ncclCommAbort; a
      // handle given to ncclCommDestroy is never aborted after.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
      ncclResult_t result = ncclCommFinalize(comm);
      if (result == ncclSuccess || result == ncclInProgress) result = settle(comm, Deadline::of(options).at);
#else
      const ncclResult_t result = ncclSuccess;  // no ncclCommFinalize before 2.14: destroy flushes
#endif
      if (result == ncclSuccess) {
        ncclCommDestroy(comm);
      } else {
        ncclCommAbort(comm);
      }
    }
    if (scratch != nullptr) cudaFree(scratch);
    if (owns_stream && stream != nullptr) cudaStreamDestroy(stream);
  }

  // Gives the handle up, once: ncclCommAbort if owned. Later calls find it null.
  void abort() noexcept {
    const std::lock_guard lock(mutex);
    if (comm != nullptr && owned) {
      const DeviceGuard guard(device, std::nothrow);
      ncclCommAbort(comm);
    }
    comm = nullptr;
  }

  // Guards `comm`: abort() from another thread frees the handle, so every use of it
  // holds the lock, and a waiting thread takes it only for each poll (as PyTorch c10d's
  // NCCLComm guards its ncclComm_t with a mutex for its watchdog).
  std::mutex mutex;
  // Null until created, and again once aborted. A split writes it from NCCL's thread
  // when the split completes.
  ncclComm_t comm = nullptr;
  const int device;
  const bool owned;
  bool owns_stream = false;
  cudaStream_t stream = nullptr;
  void* scratch = nullptr;  // one device int for barrier()
  const CommOptions options;
  // The drop in the device's free memory across the creation, when CUDA told both.
  std::optional<std::uint64_t> created_bytes;
};

void check_nccl(ncclResult_t code, const char* call, ncclComm_t comm) {
  if (code == ncclSuccess) return;
  const char* last = ncclGetLastError(comm);
  throw CommError(fmt::format("{} failed: {} (NCCL error {}){}{}", call, ncclGetErrorString(code),
                              static_cast<int>(code), last && *last ? "; last NCCL error: " : "", last ? last : ""),
                  static_cast<int>(code));
}

void check_cuda(cudaError_t code, const char* call) {
  if (code == cudaSuccess) return;
  throw CommError(fmt::format("{} failed: {} (CUDA error {})", call, cudaGetErrorString(code), static_cast<int>(code)),
                  static_cast<int>(code));
}

NcclCommunicator NcclCommunicator::create_world(const Communicator& bootstrap, const NcclWorldOptions& options) {
  // Everything that can fail on one rank alone happens before the all-gather, and the
  // ranks agree on the outcome (pcx::agree), so no rank waits for a peer that has given
  // up and every rank throws the first failing rank's error. Any exception counts,
  // whatever its type: none may skip the agreement.
  const int rank = bootstrap.rank();
  const int size = bootstrap.size();
  int device = -1;
  int ids = 1;
  ncclUniqueId id{};
  std::exception_ptr local_error;
  try {
    // A rank whose own checks fail still takes part in the collectives below.
    try {
      (void)make_config(options.communicator);
      ids = unique_id_count(size, options.ranks_per_unique_id);
    } catch (...) {
      local_error = std::current_exception();
    }
    // The ranks of the caller's host, ascending, hosts told apart as NCCL does.
    const std::vector<int> hosts = detail::nodes_by_host(bootstrap);
    std::vector<int> node;
    for (int r = 0; r < size; ++r) {
      if (hosts[static_cast<std::size_t>(r)] == hosts[static_cast<std::size_t>(rank)]) node.push_back(r);
    }
    const auto local_rank = static_cast<int>(std::ranges::find(node, rank) - node.begin());
    std::array<char, kBusIdBytes> bus_id{};
    try {
      int devices = 0;
      check_cuda(cudaGetDeviceCount(&devices), fmt::format("cudaGetDeviceCount on rank {}", rank).c_str());
      if (devices < 1) throw CommError("no CUDA device is visible", static_cast<int>(cudaErrorNoDevice));
      device = options.device.value_or(default_device(local_rank, devices, rank));
      if (device < 0 || device >= devices) {
        throw ConfigError(fmt::format("CUDA device {} is outside the {} visible devices", device, devices));
      }
      check_cuda(cudaDeviceGetPCIBusId(bus_id.data(), static_cast<int>(bus_id.size()) - 1, device),
                 "cudaDeviceGetPCIBusId");
    } catch (...) {
      if (!local_error) local_error = std::current_exception();
    }
    // A rank that has no device still takes part in the comparison, with an empty id.
    distinct_devices(bootstrap, node, local_error ? std::array<char, kBusIdBytes>{} : bus_id);
    if (!local_error && rank == first_rank_of_block(block_of_rank(rank, size, ids), size, ids)) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
    }
  } catch (...) {
    if (!local_error) local_error = std::current_exception();
  }
  // Ranks that chose other blocks would wait for ids no rank makes.
  const AgreedValue blocks[] = {
      {"ranks per NCCL unique id (NcclWorldOptions::ranks_per_unique_id, 0: the default)",
       options.ranks_per_unique_id.value_or(0)}};
  agree(bootstrap, AgreementStage::nccl_world, blocks, local_error);
  // Every rank's id, made or empty; the block's first ranks' are the ones.
  std::vector<ncclUniqueId> all(static_cast<std::size_t>(size));
  bootstrap.all_gather(std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(&id), sizeof(id)),
                       std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(all.data()), all.size() * sizeof(id)));
  std::vector<ncclUniqueId> made;
  for (int block = 0; block < ids; ++block) {
    made.push_back(all[static_cast<std::size_t>(first_rank_of_block(block, size, ids))]);
  }
  return init_rank(made, size, rank, device, options.communicator);
}

NcclCommunicator NcclCommunicator::init_rank(const ncclUniqueId& id, int size, int rank, int device,
                                             const CommOptions& options) {
  return init_rank(std::span<const ncclUniqueId>(&id, 1), size, rank, device, options);
}

NcclCommunicator NcclCommunicator::init_rank(std::span<const ncclUniqueId> ids, int size, int rank, int device,
                                             const CommOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw ConfigError(fmt::format("NCCL rank {} of {}: the rank must be in [0, size)", rank, size));
  }
  if (ids.empty() || std::cmp_greater(ids.size(), size)) {
    throw ConfigError(fmt::format("{} NCCL unique ids for {} ranks: NCCL takes 1 to {}", ids.size(), size, size));
  }
  auto state = std::make_unique<State>(device, true, options);
  ncclConfig_t config = make_config(state->options);
  const Deadline deadline = Deadline::of(options);
  const DeviceGuard guard(device);
  const std::optional<std::uint64_t> free_before = free_memory(device);
  // Non-blocking: NCCL writes the handle at once and initializes it on its own thread
  // (src/init.cc ncclCommInitRankDev). NCCL reads the ids, not writes them.
  auto* const unique = const_cast<ncclUniqueId*>(ids.data());
  const char* call = "ncclCommInitRankConfig";
  ncclResult_t result = ncclSuccess;
  if (ids.size() == 1) {
    result = ncclCommInitRankConfig(&state->comm, size, *unique, rank, &config);
  } else {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 23, 0)
    call = "ncclCommInitRankScalable";
    result = ncclCommInitRankScalable(&state->comm, size, rank, static_cast<int>(ids.size()), unique, &config);
#else
    throw ConfigError(fmt::format("{} NCCL unique ids need ncclCommInitRankScalable, NCCL 2.23 or newer; this is {}",
                                  ids.size(), nccl_version_text()));
#endif
  }
  if (result == ncclSuccess || result == ncclInProgress) result = settle(state->comm, deadline.at);
  if (result != ncclSuccess) {
    const std::string where = fmt::format("{} of NCCL communicator {} (rank {} of {}, device {}, {} unique ids)", call,
                                          quoted_name(options), rank, size, device, ids.size());
    if (result == ncclInProgress) {
      state->abort();
      throw Timeout(
          fmt::format("{} did not finish within {} ms; the communicator was aborted", where, deadline.timeout.count()));
    }
    const std::string text = nccl_text(result);
    state->abort();
    throw CommError(fmt::format("{} failed: {}; the communicator was aborted", where, text), static_cast<int>(result));
  }
  state->created_bytes = used_since(device, free_before);
  return NcclCommunicator(std::move(state));
}

NcclCommunicator NcclCommunicator::borrow(ncclComm_t comm, int device, cudaStream_t stream,
                                          const CommOptions& options) {
  if (comm == nullptr) throw ConfigError("an NCCL communicator cannot borrow a null ncclComm_t");
  auto state = std::make_unique<State>(device, false, options);
  state->comm = comm;
  state->stream = stream;
  return NcclCommunicator(std::move(state));
}

NcclCommunicator::NcclCommunicator(std::unique_ptr<State> state) : state_(std::move(state)) {
  try {
    const DeviceGuard guard(state_->device);
    check_nccl(ncclCommCount(state_->comm, &size_), "ncclCommCount", state_->comm);
    check_nccl(ncclCommUserRank(state_->comm, &rank_), "ncclCommUserRank", state_->comm);
    if (state_->stream == nullptr) {
      check_cuda(cudaStreamCreateWithFlags(&state_->stream, cudaStreamNonBlocking), "cudaStreamCreate");
      state_->owns_stream = true;
    }
    check_cuda(cudaMalloc(&state_->scratch, sizeof(std::int32_t)), "cudaMalloc");
  } catch (...) {
    state_->abort();  // never usable: give it up rather than finalize it
    throw;
  }
}

// A moved-from object is empty (size 0, rank -1), as the Communicator interface says.
NcclCommunicator::NcclCommunicator(NcclCommunicator&& other) noexcept
    : Communicator(std::move(other)),
      state_(std::move(other.state_)),
      size_(std::exchange(other.size_, 0)),
      rank_(std::exchange(other.rank_, -1)) {}

NcclCommunicator& NcclCommunicator::operator=(NcclCommunicator&& other) noexcept {
  if (this != &other) {
    Communicator::operator=(std::move(other));
    state_ = std::move(other.state_);
    size_ = std::exchange(other.size_, 0);
    rank_ = std::exchange(other.rank_, -1);
  }
  return *this;
}
NcclCommunicator::~NcclCommunicator() = default;

int NcclCommunicator::device() const noexcept { return state_ ? state_->device : -1; }

std::optional<std::uint64_t> NcclCommunicator::device_memory() const {
  if (!state_ || !state_->owned) return std::nullopt;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 29, 7)
  {
    const std::lock_guard lock(state_->mutex);
    std::uint64_t bytes = 0;
    if (state_->comm != nullptr && ncclCommMemStats(state_->comm, ncclStatGpuMemTotal, &bytes) == ncclSuccess) {
      return bytes;
    }
  }
#endif
  return state_->created_bytes;
}

cudaStream_t NcclCommunicator::stream() const noexcept { return state_ ? state_->stream : nullptr; }

ncclComm_t NcclCommunicator::native() const noexcept {
  if (!state_) return nullptr;
  const std::lock_guard lock(state_->mutex);
  return state_->comm;
}

bool NcclCommunicator::owned() const noexcept { return state_ && state_->owned; }

CommOptions NcclCommunicator::options() const { return state_ ? state_->options : CommOptions{}; }

NcclCommunicator::State& NcclCommunicator::state(std::string_view what) const {
  if (!state_) throw CommError(fmt::format("{} on a moved-from NCCL communicator", what), -1);
  return *state_;
}

std::string NcclCommunicator::describe() const {
  return fmt::format("NCCL communicator {} (rank {} of {})", state_ ? quoted_name(state_->options) : "(moved from)",
                     rank_, size_);
}

void NcclCommunicator::do_abort() const noexcept {
  if (state_) state_->abort();
}

template <class E>
void NcclCommunicator::fail(const E& error) const {
  abort();
  // NCCL's abort makes the kernels still running quit (src/init.cc ncclCommAbort:
  // setCommAbortFlags); wait for the stream to drain so that no staged buffer is freed
  // while in use. A borrowed handle is not aborted by pcx, so its stream is not waited on.
  if (state_ && state_->owned) cudaStreamSynchronize(state_->stream);
  throw error;
}

template <class Call>
void NcclCommunicator::enqueue(std::string_view what, const Deadline& deadline, Call&& call) const {
  State& s = state(what);
  const DeviceGuard guard(s.device);
  ncclResult_t started = ncclSuccess;
  bool gone = false;
  {
    const std::lock_guard lock(s.mutex);
    gone = s.comm == nullptr;
    if (!gone) started = call(s.comm);
  }
  if (gone) fail(CommError(fmt::format("{} on {}: the communicator was aborted", what, describe()), -1));
  if (started != ncclSuccess && started != ncclInProgress) {
    fail(CommError(
        fmt::format("{} on {} failed: {}; the communicator was aborted", what, describe(), nccl_text(started)),
        static_cast<int>(started)));
  }
  // A non-blocking communicator returns ncclInProgress and takes no other call until
  // NCCL is done with this one (src/init.cc ncclCommEnsureReady).
  wait(what, nullptr, deadline);
}

void NcclCommunicator::wait(std::string_view what, cudaStream_t stream, const Deadline& deadline) const {
  State& s = state(what);
  for (Backoff backoff;; backoff.pause()) {
    ncclResult_t async = ncclSuccess;
    bool gone = false;
    {
      const std::lock_guard lock(s.mutex);
      gone = s.comm == nullptr;
      if (!gone) {
        const ncclResult_t queried = ncclCommGetAsyncError(s.comm, &async);
        if (queried != ncclSuccess) async = queried;
      }
    }
    if (gone) fail(CommError(fmt::format("{} on {}: the communicator was aborted", what, describe()), -1));
    if (async != ncclSuccess && async != ncclInProgress) {
      fail(CommError(
          fmt::format("{} on {} failed: {}; the communicator was aborted", what, describe(), nccl_text(async)),
          static_cast<int>(async)));
    }
    const cudaError_t idle = stream != nullptr ? cudaStreamQuery(stream) : cudaSuccess;
    if (idle != cudaSuccess && idle != cudaErrorNotReady) {
      fail(CommError(fmt::format("{} on {} failed: {} (CUDA error {}); the communicator was aborted", what, describe(),
                                 cudaGetErrorString(idle), static_cast<int>(idle)),
                     static_cast<int>(idle)));
    }
    if (async == ncclSuccess && idle == cudaSuccess) return;
    if (Clock::now() >= deadline.at) {
      fail(Timeout(fmt::format("{} on {} did not finish within {} ms; the communicator was aborted", what, describe(),
                               deadline.timeout.count())));
    }
  }
}

template <class Call>
void NcclCommunicator::collective(std::string_view what, const void* send, std::size_t send_bytes, void* recv,
                                  std::size_t recv_bytes, Call&& call) const {
  State& s = state(what);
  const Deadline deadline = Deadline::of(s.options);
  const DeviceGuard guard(s.device);
  const Staging staged(send, send_bytes, recv, recv_bytes, s.stream);
  enqueue(what, deadline, [&](ncclComm_t comm) { return call(staged.send(), staged.recv(), comm, s.stream); });
  staged.copy_back();  // after enqueue(): only then is NCCL's work on the stream
  wait(what, s.stream, deadline);
}

std::unique_ptr<Communicator> NcclCommunicator::self() const {
  const State& s = state("self");
  const int device = s.device;
  const cudaStream_t stream = s.stream;
  return std::make_unique<SelfCommunicator>([device, stream](void* target, const void* source, std::size_t bytes) {
    const DeviceGuard guard(device);
    check_cuda(cudaMemcpyAsync(target, source, bytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  });
}

template <class Call>
std::unique_ptr<Communicator> NcclCommunicator::make_child(const std::string& what, const CommOptions& options,
                                                           bool joins, Call&& call) const {
  const State& parent = state(what);
  // The child's state is made first: NCCL's thread writes the child handle into
  // child->comm when the split completes (src/init.cc ncclCommInitRankFunc, "assign it to
  // user pointer"; until then ncclCommSplit leaves it NCCL_COMM_NULL), also for
  // NCCL_SPLIT_NOCOLOR, so that slot must outlive the call; the config points into
  // child->options.
  auto child = std::make_unique<State>(parent.device, true, options);
  ncclConfig_t config = make_config(child->options);
  const std::optional<std::uint64_t> free_before = free_memory(parent.device);
  // The call runs on the parent: the parent reports ncclInProgress until it is done
  // (src/group.cc ncclGroupEndInternal marks the job's communicator, the parent). The call
  // itself returns ncclSuccess (NCCL 2.28) or ncclInProgress (which the user guide allows);
  // enqueue takes both.
  const Deadline deadline = Deadline::of(options);
  try {
    enqueue(what, deadline, [&](ncclComm_t comm) { return call(comm, &child->comm, &config); });
  } catch (...) {
    if (!parent.owned) {
      // pcx does not abort a borrowed parent, so NCCL's thread may still write the slot.
      (void)child.release();
      throw;
    }
    // The parent is aborted, which joins NCCL's thread (src/init.cc ncclCommAbort ->
    // ncclCommEnsureReady -> ncclGroupJobAbort); a child it wrote is given up too.
    child->abort();
    throw;
  }
  if (!joins) return nullptr;
  if (child->comm == nullptr) {
    throw CommError(fmt::format("{} on {} completed without a child communicator", what, describe()), -1);
  }
  // The child is polled too, within the same deadline: NCCL 2.28 writes it ready, but its
  // maintainers expect a caller to be able to poll it as it polls an init (nccl#1472).
  if (const ncclResult_t ready = settle(child->comm, deadline.at); ready != ncclSuccess) {
    child->abort();
    if (ready == ncclInProgress) {
      throw Timeout(fmt::format("{} on {}: the child did not become ready within {} ms; it was aborted", what,
                                describe(), deadline.timeout.count()));
    }
    throw CommError(fmt::format("{} on {}: the child failed: {}; it was aborted", what, describe(), nccl_text(ready)),
                    static_cast<int>(ready));
  }
  child->created_bytes = used_since(parent.device, free_before);
  return std::make_unique<NcclCommunicator>(NcclCommunicator(std::move(child)));
}

std::unique_ptr<Communicator> NcclCommunicator::do_split(int colour, int key, int, const CommOptions& options) const {
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  return make_child(
      fmt::format("ncclCommSplit (colour {}, key {}) into NCCL communicator {}", colour, key, quoted_name(options)),
      options, colour != kNoColour, [&](ncclComm_t comm, ncclComm_t* out, ncclConfig_t* config) {
        return ncclCommSplit(comm, colour == kNoColour ? NCCL_SPLIT_NOCOLOR : colour, key, out, config);
      });
#else
  (void)colour, (void)key, (void)options;
  throw ConfigError(fmt::format("ncclCommSplit needs NCCL 2.18 or newer; this is {}", nccl_version_text()));
#endif
}

std::unique_ptr<Communicator> NcclCommunicator::do_shrink(std::span<const int> excluded, std::span<const int>,
                                                          const CommOptions& options) const {
  if (excluded.empty()) return do_dup(options);  // NCCL refuses an empty list
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 27, 0)
  // NCCL sorts the list in place (src/init.cc ncclCommShrink): it gets a copy.
  std::vector<int> list(excluded.begin(), excluded.end());
  const auto shrink = [&](int flags) {
    return make_child(fmt::format("ncclCommShrink (excluding [{}]) into NCCL communicator {}", fmt::join(list, ","),
                                  quoted_name(options)),
                      options, true, [&](ncclComm_t comm, ncclComm_t* out, ncclConfig_t* config) {
                        return ncclCommShrink(comm, list.data(), static_cast<int>(list.size()), out, config, flags);
                      });
  };
  // This communicator's outstanding operations wait for excluded ranks that may never
  // come; they end first. NCCL 2.28: ncclCommRevoke ("stops all in-flight operations ...
  // then, management operations (destroy, split, shrink) can proceed safely", nccl.h),
  // whose wait for quiescence runs in NCCL's job, under our deadline. It cannot be undone
  // and leaves a communicator that can be neither used nor finalized, so it is aborted
  // however the shrink ends (rather than destroyed: a destroy is refused while an error
  // is pending). A borrowed handle is its owner's to give up: it is not revoked.
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 28, 0)
  if (owned()) {
    (void)make_config(options);  // bad options fail before anything is revoked
    struct AbortOnExit {
      const NcclCommunicator& revoked;
      ~AbortOnExit() { revoked.abort(); }
    } const released{*this};
    enqueue("ncclCommRevoke", Deadline::of(state("ncclCommRevoke").options),
            [](ncclComm_t comm) { return ncclCommRevoke(comm, NCCL_REVOKE_DEFAULT); });
    return shrink(NCCL_SHRINK_DEFAULT);
  }
#endif
  // NCCL_SHRINK_ABORT: NCCL stops the outstanding operations itself (in the caller, with
  // no deadline of ours).
  return shrink(NCCL_SHRINK_ABORT);
#else
  (void)options;
  throw ConfigError(fmt::format("ncclCommShrink needs NCCL 2.27 or newer; this is {}", nccl_version_text()));
#endif
}

std::unique_ptr<Communicator> NcclCommunicator::do_dup(const CommOptions& options) const {
  return do_split(0, rank_, size_, options);
}

void NcclCommunicator::enqueue_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                                          cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclAllReduce", Deadline::of(state("ncclAllReduce").options),
          [&](ncclComm_t comm) { return ncclAllReduce(send, recv, count, element, nccl_op(op), comm, stream); });
}

void NcclCommunicator::enqueue_all_to_all(const void* send, void* recv, std::size_t count, DataType type,
                                          cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclSend/ncclRecv (all-to-all)", Deadline::of(state("all-to-all").options), [&](ncclComm_t comm) {
    return all_to_all_calls(send, recv, equal_blocks(count), equal_blocks(count), element, size_of(type), size_, comm,
                            stream);
  });
}

void NcclCommunicator::enqueue_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                            std::span<const std::size_t> send_offsets, void* recv,
                                            std::span<const std::size_t> recv_counts,
                                            std::span<const std::size_t> recv_offsets, DataType type,
                                            cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  const auto members = static_cast<std::size_t>(size_);
  if (send_counts.size() != members || send_offsets.size() != members || recv_counts.size() != members ||
      recv_offsets.size() != members) {
    throw ConfigError(
        fmt::format("enqueue_all_to_all_v needs {} counts and offsets of each kind, one per member", members));
  }
  enqueue("ncclSend/ncclRecv (all_to_all_v)", Deadline::of(state("all_to_all_v").options), [&](ncclComm_t comm) {
    return all_to_all_calls(send, recv, listed_blocks(send_counts, send_offsets),
                            listed_blocks(recv_counts, recv_offsets), element, size_of(type), size_, comm, stream);
  });
}

void NcclCommunicator::enqueue_send(const void* buffer, std::size_t count, DataType type, int peer,
                                    cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclSend", Deadline::of(state("ncclSend").options),
          [&](ncclComm_t comm) { return ncclSend(buffer, count, element, peer, comm, stream); });
}

void NcclCommunicator::enqueue_recv(void* buffer, std::size_t count, DataType type, int peer,
                                    cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclRecv", Deadline::of(state("ncclRecv").options),
          [&](ncclComm_t comm) { return ncclRecv(buffer, count, element, peer, comm, stream); });
}

void NcclCommunicator::enqueue_all_gather(const void* send, void* recv, std::size_t count, DataType type,
                                          cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclAllGather", Deadline::of(state("ncclAllGather").options),
          [&](ncclComm_t comm) { return ncclAllGather(send, recv, count, element, comm, stream); });
}

void NcclCommunicator::enqueue_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                              ReduceOp op, cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclReduceScatter", Deadline::of(state("ncclReduceScatter").options),
          [&](ncclComm_t comm) { return ncclReduceScatter(send, recv, count, element, nccl_op(op), comm, stream); });
}

void NcclCommunicator::enqueue_broadcast(void* buffer, std::size_t count, DataType type, int root,
                                         cudaStream_t stream) const {
  const ncclDataType_t element = nccl_type(type);
  enqueue("ncclBroadcast", Deadline::of(state("ncclBroadcast").options),
          [&](ncclComm_t comm) { return ncclBroadcast(buffer, buffer, count, element, root, comm, stream); });
}

void NcclCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                                     ReduceOp op) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t bytes = count * size_of(type);
  collective("ncclAllReduce", send, bytes, recv, bytes,
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return ncclAllReduce(from, to, count, element, nccl_op(op), comm, s);
             });
}

void NcclCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t block = count * size_of(type);
  const std::size_t bytes = block * static_cast<std::size_t>(size_);
  collective("ncclSend/ncclRecv (all-to-all)", send, bytes, recv, bytes,
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return all_to_all_calls(from, to, equal_blocks(count), equal_blocks(count), element, size_of(type),
                                       size_, comm, s);
             });
}

void NcclCommunicator::do_all_to_all_v(const void* send, std::span<const std::size_t> send_counts,
                                       std::span<const std::size_t> send_offsets, void* recv,
                                       std::span<const std::size_t> recv_counts,
                                       std::span<const std::size_t> recv_offsets, DataType type) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t last = send_counts.size() - 1;
  collective("ncclSend/ncclRecv (all_to_all_v)", send, (send_offsets[last] + send_counts[last]) * size_of(type), recv,
             (recv_offsets[last] + recv_counts[last]) * size_of(type),
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return all_to_all_calls(from, to, listed_blocks(send_counts, send_offsets),
                                       listed_blocks(recv_counts, recv_offsets), element, size_of(type), size_, comm,
                                       s);
             });
}

void NcclCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t block = count * size_of(type);
  collective("ncclAllGather", send, block, recv, block * static_cast<std::size_t>(size_),
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return ncclAllGather(from, to, count, element, comm, s);
             });
}

void NcclCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                         ReduceOp op) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t block = count * size_of(type);
  collective("ncclReduceScatter", send, block * static_cast<std::size_t>(size_), recv, block,
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return ncclReduceScatter(from, to, count, element, nccl_op(op), comm, s);
             });
}

void NcclCommunicator::do_broadcast(void* buffer, std::size_t count, DataType type, int root) const {
  const ncclDataType_t element = nccl_type(type);
  const std::size_t bytes = count * size_of(type);
  collective("ncclBroadcast", buffer, bytes, buffer, bytes,
             [&](const void* from, void* to, ncclComm_t comm, cudaStream_t s) {
               return ncclBroadcast(from, to, count, element, root, comm, s);
             });
}

void NcclCommunicator::do_send(const void* buffer, std::size_t count, DataType type, int peer) const {
  const ncclDataType_t element = nccl_type(type);
  collective("ncclSend", buffer, count * size_of(type), nullptr, 0,
             [&](const void* from, void*, ncclComm_t comm, cudaStream_t s) {
               return ncclSend(from, count, element, peer, comm, s);
             });
}

void NcclCommunicator::do_recv(void* buffer, std::size_t count, DataType type, int peer) const {
  const ncclDataType_t element = nccl_type(type);
  collective("ncclRecv", nullptr, 0, buffer, count * size_of(type),
             [&](const void*, void* to, ncclComm_t comm, cudaStream_t s) {
               return ncclRecv(to, count, element, peer, comm, s);
             });
}

const void* NcclCommunicator::native_handle() const noexcept { return state_ ? &state_->comm : nullptr; }

ncclComm_t nccl_handle(const Communicator& communicator) {
  if (communicator.backend() == "nccl") {
    const void* handle = communicator.native_handle();
    return handle != nullptr ? *static_cast<const ncclComm_t*>(handle) : nullptr;
  }
  if (communicator.backend() == "self") return nullptr;
  throw ConfigError(
      fmt::format("nccl_handle of a {} communicator: only NCCL communicators and groups of one member "
                  "have an ncclComm_t slot",
                  communicator.backend()));
}

void NcclCommunicator::do_barrier() const {
  const State& s = state("barrier");
  collective("barrier (ncclAllReduce)", s.scratch, sizeof(std::int32_t), s.scratch, sizeof(std::int32_t),
             [](const void* from, void* to, ncclComm_t comm, cudaStream_t stream) {
               return ncclAllReduce(from, to, 1, ncclInt32, ncclSum, comm, stream);
             });
}

}  // namespace pcx
