#include "pcx/nccl/nccl_communicator.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <thread>
#include <utility>

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
    case DataType::float32: return ncclFloat32;
    case DataType::float64: return ncclFloat64;
  }
  throw ConfigError("unknown data type");
}

ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

[[maybe_unused]] std::string nccl_version_text() { return fmt::format("{}.{}.{}", NCCL_MAJOR, NCCL_MINOR, NCCL_PATCH); }

// The NCCL configuration of a new communicator. It points into `options`, which must
// outlive the init or split call.
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

// Waits for a non-blocking communicator to leave ncclInProgress. Past the deadline it
// throws Timeout; the caller aborts the communicator.
void wait_ready(ncclComm_t comm, const char* call, Clock::time_point deadline) {
  for (auto pause = std::chrono::microseconds(10);; pause = std::min(pause * 2, std::chrono::microseconds(10000))) {
    ncclResult_t state = ncclInProgress;
    check_nccl(ncclCommGetAsyncError(comm, &state), "ncclCommGetAsyncError", comm);
    if (state == ncclSuccess) return;
    if (state != ncclInProgress) check_nccl(state, call, comm);
    if (Clock::now() >= deadline) throw Timeout(fmt::format("{} did not finish before its deadline", call));
    std::this_thread::sleep_for(pause);
  }
}

Clock::time_point deadline_of(const CommOptions& options) {
  return options.timeout.count() > 0 ? Clock::now() + options.timeout : Clock::time_point::max();
}

// Owns a communicator that is still being created: aborted unless released.
class PendingComm {
 public:
  PendingComm() = default;
  PendingComm(const PendingComm&) = delete;
  PendingComm& operator=(const PendingComm&) = delete;
  ~PendingComm() {
    if (comm_ != nullptr) ncclCommAbort(comm_);
  }
  ncclComm_t* out() noexcept { return &comm_; }
  [[nodiscard]] ncclComm_t get() const noexcept { return comm_; }
  ncclComm_t release() noexcept { return std::exchange(comm_, nullptr); }

 private:
  ncclComm_t comm_ = nullptr;
};

// Whether NCCL cannot read `pointer` directly: plain or pinned host memory.
bool in_host_memory(const void* pointer) {
  cudaPointerAttributes attributes{};
  if (cudaPointerGetAttributes(&attributes, pointer) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error of an unknown pointer: it is host memory
    return true;
  }
  return attributes.type == cudaMemoryTypeUnregistered || attributes.type == cudaMemoryTypeHost;
}

// Device memory for one call, freed on every path.
class DeviceScratch {
 public:
  DeviceScratch(int device, std::size_t bytes) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaMalloc(&data_, std::max<std::size_t>(bytes, 1)), "cudaMalloc");
  }
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() { cudaFree(data_); }
  [[nodiscard]] void* get() const noexcept { return data_; }

 private:
  void* data_ = nullptr;
};

// The rank's index on its node, from an MPI shared-memory split.
int node_local_rank(const MpiCommunicator& bootstrap) {
  MPI_Comm node = MPI_COMM_NULL;
  check_mpi(MPI_Comm_split_type(bootstrap.native(), MPI_COMM_TYPE_SHARED, bootstrap.rank(), MPI_INFO_NULL, &node),
            "MPI_Comm_split_type");
  return MpiCommunicator::adopt(node).rank();
}

}  // namespace

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

NcclCommunicator NcclCommunicator::create_world(const MpiCommunicator& bootstrap, const NcclWorldOptions& options) {
  const ncclConfig_t checked = make_config(options.communicator);  // option errors before any communication
  (void)checked;

  // Everything that can fail on one rank alone happens before the broadcast, and the
  // ranks agree on the outcome, so no rank waits for a peer that has given up.
  int device = -1;
  ncclUniqueId id{};
  std::exception_ptr local_error;
  try {
    const int local_rank = node_local_rank(bootstrap);
    int devices = 0;
    check_cuda(cudaGetDeviceCount(&devices), fmt::format("cudaGetDeviceCount on rank {}", bootstrap.rank()).c_str());
    if (devices < 1) throw CommError("no CUDA device is visible", static_cast<int>(cudaErrorNoDevice));
    device = options.device.value_or(local_rank % devices);
    if (device < 0 || device >= devices) {
      throw ConfigError(fmt::format("CUDA device {} is outside the {} visible devices", device, devices));
    }
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    if (bootstrap.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
  } catch (const Error&) {
    local_error = std::current_exception();
  }
  std::int32_t failed = local_error ? 1 : 0;
  bootstrap.all_reduce(std::span<std::int32_t>(&failed, 1), ReduceOp::max);
  if (local_error) std::rethrow_exception(local_error);
  if (failed != 0) {
    throw CommError(
        fmt::format("building the NCCL world on rank {}: another rank failed to prepare its device", bootstrap.rank()),
        -1);
  }
  bootstrap.broadcast(std::span<std::uint8_t>(reinterpret_cast<std::uint8_t*>(&id), sizeof(id)), 0);

  return init_rank(id, bootstrap.size(), bootstrap.rank(), device, options.communicator);
}

NcclCommunicator NcclCommunicator::init_rank(const ncclUniqueId& id, int size, int rank, int device,
                                             const CommOptions& options) {
  if (size < 1 || rank < 0 || rank >= size) {
    throw ConfigError(fmt::format("NCCL rank {} of {}: the rank must be in [0, size)", rank, size));
  }
  ncclConfig_t config = make_config(options);
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  PendingComm comm;
  ncclUniqueId unique = id;
  const ncclResult_t started = ncclCommInitRankConfig(comm.out(), size, unique, rank, &config);
  if (started != ncclInProgress) check_nccl(started, "ncclCommInitRankConfig", comm.get());
  wait_ready(comm.get(), "ncclCommInitRankConfig", deadline_of(options));
  return NcclCommunicator(comm.release(), device, true, nullptr);
}

NcclCommunicator NcclCommunicator::borrow(ncclComm_t comm, int device, cudaStream_t stream) {
  if (comm == nullptr) throw ConfigError("an NCCL communicator cannot borrow a null ncclComm_t");
  return NcclCommunicator(comm, device, false, stream);
}

NcclCommunicator::NcclCommunicator(ncclComm_t comm, int device, bool owned, cudaStream_t stream)
    : comm_(comm), device_(device), owned_(owned), owns_stream_(stream == nullptr), stream_(stream) {
  try {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    check_nccl(ncclCommCount(comm_, &size_), "ncclCommCount", comm_);
    check_nccl(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank", comm_);
    if (owns_stream_) check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    check_cuda(cudaMalloc(&scratch_, sizeof(std::int32_t)), "cudaMalloc");
  } catch (...) {
    release();
    throw;
  }
}

NcclCommunicator::NcclCommunicator(NcclCommunicator&& other) noexcept
    : Communicator(std::move(other)),
      comm_(std::exchange(other.comm_, nullptr)),
      device_(other.device_),
      owned_(std::exchange(other.owned_, false)),
      owns_stream_(std::exchange(other.owns_stream_, false)),
      stream_(std::exchange(other.stream_, nullptr)),
      scratch_(std::exchange(other.scratch_, nullptr)),
      size_(other.size_),
      rank_(other.rank_),
      failed_(std::exchange(other.failed_, std::make_unique<std::atomic<bool>>(false))) {}

NcclCommunicator& NcclCommunicator::operator=(NcclCommunicator&& other) noexcept {
  if (this != &other) {
    release();
    comm_ = std::exchange(other.comm_, nullptr);
    device_ = other.device_;
    owned_ = std::exchange(other.owned_, false);
    owns_stream_ = std::exchange(other.owns_stream_, false);
    stream_ = std::exchange(other.stream_, nullptr);
    scratch_ = std::exchange(other.scratch_, nullptr);
    size_ = other.size_;
    rank_ = other.rank_;
    failed_ = std::exchange(other.failed_, std::make_unique<std::atomic<bool>>(false));
  }
  return *this;
}

NcclCommunicator::~NcclCommunicator() { release(); }

void NcclCommunicator::release() noexcept {
  if (comm_ != nullptr || stream_ != nullptr || scratch_ != nullptr) cudaSetDevice(device_);
  if (owned_ && comm_ != nullptr) {
    // A communicator whose operation failed may have peers that never arrive:
    // destroying it could wait for them forever, aborting cannot.
    if (failed()) {
      ncclCommAbort(comm_);
    } else if (ncclCommDestroy(comm_) != ncclSuccess) {
      ncclCommAbort(comm_);
    }
  }
  if (scratch_ != nullptr) cudaFree(scratch_);
  if (owns_stream_ && stream_ != nullptr) cudaStreamDestroy(stream_);
  comm_ = nullptr;
  scratch_ = nullptr;
  stream_ = nullptr;
  owned_ = false;
  owns_stream_ = false;
}

void NcclCommunicator::abort() noexcept {
  failed_->store(true);
  if (owned_ && comm_ != nullptr) {
    cudaSetDevice(device_);
    ncclCommAbort(comm_);
  }
  comm_ = nullptr;
}

void NcclCommunicator::check(ncclResult_t code, const char* call) const {
  if (code == ncclSuccess || code == ncclInProgress) return;
  failed_->store(true);
  check_nccl(code, call, comm_);
}

template <class Call>
void NcclCommunicator::enqueue(const char* what, cudaStream_t stream, Call&& call) const {
  if (comm_ == nullptr) throw CommError(fmt::format("{} on an aborted NCCL communicator", what), ncclInvalidUsage);
  try {
    check_cuda(cudaSetDevice(device_), "cudaSetDevice");
    const ncclResult_t code = call(stream);
    check(code, what);
    if (code == ncclInProgress) wait_ready(comm_, what, Clock::time_point::max());
  } catch (...) {
    failed_->store(true);
    throw;
  }
}

void NcclCommunicator::synchronize(const char* what) const {
  if (comm_ == nullptr) throw CommError(fmt::format("{} on an aborted NCCL communicator", what), ncclInvalidUsage);
  const cudaError_t code = cudaStreamSynchronize(stream_);
  if (code != cudaSuccess) {
    failed_->store(true);
    check_cuda(code, what);
  }
  ncclResult_t state = ncclSuccess;
  check(ncclCommGetAsyncError(comm_, &state), "ncclCommGetAsyncError");
  check(state, what);
}

std::unique_ptr<Communicator> NcclCommunicator::self() const {
  const int device = device_;
  const cudaStream_t stream = stream_;
  return std::make_unique<SelfCommunicator>([device, stream](void* target, const void* source, std::size_t bytes) {
    check_cuda(cudaSetDevice(device), "cudaSetDevice");
    check_cuda(cudaMemcpyAsync(target, source, bytes, cudaMemcpyDefault, stream), "cudaMemcpyAsync");
    check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  });
}

std::unique_ptr<Communicator> NcclCommunicator::do_split(int colour, int key, int, const CommOptions& options) const {
  if (comm_ == nullptr) throw CommError("ncclCommSplit on an aborted NCCL communicator", ncclInvalidUsage);
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 18, 0)
  ncclConfig_t config = make_config(options);
  PendingComm child;
  check_cuda(cudaSetDevice(device_), "cudaSetDevice");
  const ncclResult_t started =
      ncclCommSplit(comm_, colour == kNoColour ? NCCL_SPLIT_NOCOLOR : colour, key, child.out(), &config);
  check(started, "ncclCommSplit");
  if (child.get() == nullptr) return nullptr;  // NCCL_SPLIT_NOCOLOR
  try {
    wait_ready(child.get(), "ncclCommSplit", deadline_of(options));
  } catch (const Error&) {
    failed_->store(true);  // the parent's split did not finish either
    throw;
  }
  return std::unique_ptr<Communicator>(new NcclCommunicator(child.release(), device_, true, nullptr));
#else
  (void)colour, (void)key, (void)options;
  throw ConfigError(fmt::format("ncclCommSplit needs NCCL 2.18 or newer; this is {}", nccl_version_text()));
#endif
}

std::unique_ptr<Communicator> NcclCommunicator::do_dup(const CommOptions& options) const {
  return do_split(0, rank_, size_, options);
}

void NcclCommunicator::enqueue_all_reduce(const void* send, void* recv, std::size_t count, DataType type, ReduceOp op,
                                          cudaStream_t stream) const {
  enqueue("ncclAllReduce", stream,
          [&](cudaStream_t s) { return ncclAllReduce(send, recv, count, nccl_type(type), nccl_op(op), comm_, s); });
}

void NcclCommunicator::enqueue_all_to_all(const void* send, void* recv, std::size_t count, DataType type,
                                          cudaStream_t stream) const {
  const std::size_t bytes = count * size_of(type);
  enqueue("ncclSend/ncclRecv (all-to-all)", stream, [&](cudaStream_t s) {
    ncclResult_t code = ncclGroupStart();
    for (int peer = 0; peer < size_ && (code == ncclSuccess || code == ncclInProgress); ++peer) {
      const auto offset = bytes * static_cast<std::size_t>(peer);
      code = ncclSend(static_cast<const std::byte*>(send) + offset, count, nccl_type(type), peer, comm_, s);
      if (code == ncclSuccess || code == ncclInProgress) {
        code = ncclRecv(static_cast<std::byte*>(recv) + offset, count, nccl_type(type), peer, comm_, s);
      }
    }
    const ncclResult_t ended = ncclGroupEnd();
    return code == ncclSuccess || code == ncclInProgress ? ended : code;
  });
}

void NcclCommunicator::enqueue_all_gather(const void* send, void* recv, std::size_t count, DataType type,
                                          cudaStream_t stream) const {
  enqueue("ncclAllGather", stream,
          [&](cudaStream_t s) { return ncclAllGather(send, recv, count, nccl_type(type), comm_, s); });
}

void NcclCommunicator::enqueue_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                              ReduceOp op, cudaStream_t stream) const {
  enqueue("ncclReduceScatter", stream,
          [&](cudaStream_t s) { return ncclReduceScatter(send, recv, count, nccl_type(type), nccl_op(op), comm_, s); });
}

void NcclCommunicator::enqueue_broadcast(void* buffer, std::size_t count, DataType type, int root,
                                         cudaStream_t stream) const {
  enqueue("ncclBroadcast", stream,
          [&](cudaStream_t s) { return ncclBroadcast(buffer, buffer, count, nccl_type(type), root, comm_, s); });
}

void NcclCommunicator::do_all_reduce(const void* send, void* recv, std::size_t count, DataType type,
                                     ReduceOp op) const {
  if (in_host_memory(send) || in_host_memory(recv)) {
    // Code written against the Communicator interface (a context comparing its
    // configuration across ranks) reduces small host buffers: stage them on the device.
    const std::size_t bytes = count * size_of(type);
    DeviceScratch staged(device_, bytes);
    check_cuda(cudaMemcpyAsync(staged.get(), send, bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
    enqueue_all_reduce(staged.get(), staged.get(), count, type, op, stream_);
    check_cuda(cudaMemcpyAsync(recv, staged.get(), bytes, cudaMemcpyDefault, stream_), "cudaMemcpyAsync");
    synchronize("ncclAllReduce");
    return;
  }
  enqueue_all_reduce(send, recv, count, type, op, stream_);
  synchronize("ncclAllReduce");
}

void NcclCommunicator::do_all_to_all(const void* send, void* recv, std::size_t count, DataType type) const {
  enqueue_all_to_all(send, recv, count, type, stream_);
  synchronize("all-to-all");
}

void NcclCommunicator::do_all_gather(const void* send, void* recv, std::size_t count, DataType type) const {
  enqueue_all_gather(send, recv, count, type, stream_);
  synchronize("ncclAllGather");
}

void NcclCommunicator::do_reduce_scatter(const void* send, void* recv, std::size_t count, DataType type,
                                         ReduceOp op) const {
  enqueue_reduce_scatter(send, recv, count, type, op, stream_);
  synchronize("ncclReduceScatter");
}

void NcclCommunicator::do_broadcast(void* buffer, std::size_t count, DataType type, int root) const {
  enqueue_broadcast(buffer, count, type, root, stream_);
  synchronize("ncclBroadcast");
}

void NcclCommunicator::do_barrier() const {
  enqueue_all_reduce(scratch_, scratch_, 1, DataType::int32, ReduceOp::sum, stream_);
  synchronize("barrier");
}

}  // namespace pcx
