// Tests of the host emulator of the CUDA runtime and NCCL (libpcx_emulator.so), written from
// NCCL's and CUDA's documented behaviour, not from the emulator's code: every expectation
// cites the header line or documentation page it comes from.
//
// Sources cited below:
//   [nccl.h]    NCCL 2.28.9 src/nccl.h.in (tag v2.28.9-1), with its line numbers
//   [comms]     https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/api/comms.html
//   [types]     https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/api/types.html
//   [usage]     https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/usage/communicators.html
//   [p2p]       https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/usage/p2p.html
//   [ops]       https://docs.nvidia.com/deeplearning/nccl/user-guide/docs/usage/operations.html
//   [init.cc]   NCCL 2.28.9 src/init.cc:2571, "*newcomm should be NCCL_COMM_NULL until comm
//               split fully complete" (the reference implementation of the documented API)
//   [cudart]    CUDA 13.0 include/cuda_runtime_api.h, the doc comment of the named function
//   [emu]       test/emulation/pcx_emulator.h (environment variables and queries)
//
// Run under mpiexec at 1, 2, 4 and 8 ranks. MPI only distributes ncclUniqueIds and combines
// verdicts: a check that fails on one rank is combined (all-reduce MIN) before any step that
// would leave the others waiting, so all ranks fail together. Every wait has a deadline, and
// a watchdog ends the job, naming the test, if a call never returns.

#define BOOST_TEST_MODULE emulator
#define BOOST_TEST_NO_MAIN
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <boost/test/unit_test.hpp>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "pcx_emulator.h"

namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// How long a step that must finish may take; reached only when it fails.
constexpr milliseconds kDeadline{5000};
/// How long something that must not finish is watched.
constexpr milliseconds kHangWindow{200};
/// A test that runs longer than this has hung inside a call: the watchdog ends the job.
constexpr std::chrono::seconds kTestLimit{25};
/// Non-blocking calls stay ncclInProgress this long unless the environment says otherwise
/// (PCX_EMU_LAUNCH_DELAY_US [emu]): long enough that a check right after the call sees
/// ncclInProgress even at 8 ranks on 2 cores, short enough to keep the module fast.
constexpr const char* kLaunchDelayUs = "50000";

int g_rank = 0;
int g_size = 1;
int g_devices = 0;
/// This rank's verdict for the current test; reset by the fixture.
bool g_local_ok = true;

int my_device() { return g_devices > 0 ? g_rank % g_devices : 0; }

std::string result_name(ncclResult_t r) {
  switch (r) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError";
    case ncclSystemError: return "ncclSystemError";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError";
    case ncclInProgress: return "ncclInProgress";
    default: return "ncclResult_t(" + std::to_string(static_cast<int>(r)) + ")";
  }
}

std::string error_name(cudaError_t e) { return cudaGetErrorName(e) != nullptr ? cudaGetErrorName(e) : "?"; }

/// True on every rank when @p ok is true on every rank (all-reduce MIN of the verdicts).
bool everyone(bool ok) {
  int mine = ok ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// Fails the test on every rank together when @p ok is false on any rank.
void require_everyone(bool ok, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(everyone(ok), "rank " << g_rank << ": " << what << " failed on at least one rank");
}

}  // namespace

/// A local check: reports a failure with the rank, records it in this rank's verdict, and
/// yields the condition. It never stops the test, so it cannot leave peers waiting.
#define EXPECT(cond, msg)                                              \
  [&]() -> bool {                                                      \
    const bool expect_ok_ = static_cast<bool>(cond);                   \
    BOOST_CHECK_MESSAGE(expect_ok_, "rank " << g_rank << ": " << msg); \
    if (!expect_ok_) g_local_ok = false;                               \
    return expect_ok_;                                                 \
  }()

namespace {

// ---------------------------------------------------------------------------------------
// Watchdog and per-test fixture

class Watchdog {
 public:
  Watchdog() : thread_([this] { run(); }) {}
  ~Watchdog() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void arm(std::string what) {
    std::lock_guard lock(mutex_);
    what_ = std::move(what);
    deadline_ = Clock::now() + kTestLimit;
    armed_ = true;
    wake_.notify_all();
  }
  void disarm() {
    std::lock_guard lock(mutex_);
    armed_ = false;
    wake_.notify_all();
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!stop_) {
      if (!armed_) {
        wake_.wait(lock);
        continue;
      }
      wake_.wait_until(lock, deadline_);
      if (armed_ && !stop_ && Clock::now() >= deadline_) {
        std::fprintf(stderr, "rank %d: test '%s' did not finish within %lld s: a call hung; ending the job\n", g_rank,
                     what_.c_str(), static_cast<long long>(kTestLimit.count()));
        std::fflush(stderr);
        std::_Exit(124);
      }
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_;
  std::string what_;
  Clock::time_point deadline_{};
  bool armed_ = false;
  bool stop_ = false;
  std::thread thread_;
};

Watchdog* g_watchdog = nullptr;

/// Every test: starts together on every rank, on this rank's device, with a clean verdict
/// and a watchdog; ends with no communicator, allocation or stream left over.
struct EmulatorTest {
  EmulatorTest() {
    g_local_ok = true;
    if (g_watchdog != nullptr) g_watchdog->arm(boost::unit_test::framework::current_test_case().p_name.get());
    MPI_Barrier(MPI_COMM_WORLD);
    (void)cudaSetDevice(my_device());
    (void)cudaGetLastError();
    comms_at_start = pcxemu_live_communicators();
    allocations_at_start = pcxemu_live_allocations();
    streams_at_start = pcxemu_live_streams();
  }
  ~EmulatorTest() {
    BOOST_CHECK_MESSAGE(pcxemu_live_communicators() == comms_at_start,
                        "rank " << g_rank << ": communicators leaked: " << pcxemu_live_communicators() << " live, "
                                << comms_at_start << " at the start");
    BOOST_CHECK_MESSAGE(pcxemu_live_allocations() == allocations_at_start,
                        "rank " << g_rank << ": allocations leaked: " << pcxemu_live_allocations() << " live, "
                                << allocations_at_start << " at the start");
    BOOST_CHECK_MESSAGE(pcxemu_live_streams() == streams_at_start,
                        "rank " << g_rank << ": streams leaked: " << pcxemu_live_streams() << " live, "
                                << streams_at_start << " at the start");
    MPI_Barrier(MPI_COMM_WORLD);
    if (g_watchdog != nullptr) g_watchdog->disarm();
  }
  EmulatorTest(const EmulatorTest&) = delete;
  EmulatorTest& operator=(const EmulatorTest&) = delete;

  int comms_at_start = 0;
  int allocations_at_start = 0;
  int streams_at_start = 0;
};

// ---------------------------------------------------------------------------------------
// Owners of emulated resources (declare buffers and streams first, then communicators, so
// that communicators are aborted before the streams they may still hold are destroyed).

class Comm {
 public:
  Comm() = default;
  Comm(const Comm&) = delete;
  Comm& operator=(const Comm&) = delete;
  /// Aborts what is still held: the clean-up of a test that stopped early.
  ~Comm() {
    if (const ncclComm_t h = get(); h != nullptr) (void)ncclCommAbort(h);
  }
  /// Where NCCL writes the handle; stays valid as long as this object (a non-blocking split
  /// writes it from the background).
  ncclComm_t* out() { return &handle_; }
  [[nodiscard]] ncclComm_t get() const { return std::atomic_ref<ncclComm_t>(const_cast<ncclComm_t&>(handle_)).load(); }
  ncclResult_t destroy() { return ncclCommDestroy(take()); }
  ncclResult_t abort() { return ncclCommAbort(take()); }

 private:
  ncclComm_t take() {
    const ncclComm_t h = get();
    std::atomic_ref<ncclComm_t>(handle_).store(nullptr);
    return h;
  }
  ncclComm_t handle_ = nullptr;
};

class Stream {
 public:
  Stream() { created_ = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); }
  ~Stream() {
    if (created_ == cudaSuccess) (void)cudaStreamDestroy(stream_);
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  [[nodiscard]] cudaStream_t get() const { return stream_; }
  [[nodiscard]] bool ok() const { return created_ == cudaSuccess; }

 private:
  cudaStream_t stream_{};
  cudaError_t created_ = cudaErrorUnknown;
};

class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
    status_ = cudaMalloc(&pointer_, std::max<std::size_t>(bytes, 1));
  }
  ~DeviceBuffer() {
    if (status_ == cudaSuccess) (void)cudaFree(pointer_);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  [[nodiscard]] bool ok() const { return status_ == cudaSuccess; }
  [[nodiscard]] void* get() const { return pointer_; }
  [[nodiscard]] std::byte* at(std::size_t offset) const { return static_cast<std::byte*>(pointer_) + offset; }
  [[nodiscard]] std::size_t size() const { return bytes_; }

 private:
  void* pointer_ = nullptr;
  std::size_t bytes_ = 0;
  cudaError_t status_ = cudaErrorUnknown;
};

bool upload(void* device, const std::vector<std::byte>& host) {
  return cudaMemcpy(device, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess;
}

std::vector<std::byte> download(const void* device, std::size_t bytes) {
  std::vector<std::byte> host(bytes);
  if (cudaMemcpy(host.data(), device, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) host.clear();
  return host;
}

/// Polls the stream until it is no longer cudaErrorNotReady or the limit passes; the last answer.
cudaError_t wait_stream(cudaStream_t stream, milliseconds limit = kDeadline) {
  const auto end = Clock::now() + limit;
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e != cudaErrorNotReady || Clock::now() >= end) return e;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

/// Polls ncclCommGetAsyncError until the state is no longer ncclInProgress or the limit
/// passes; the last state (or the query's own error).
ncclResult_t wait_comm(ncclComm_t comm, milliseconds limit = kDeadline) {
  const auto end = Clock::now() + limit;
  for (;;) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t call = ncclCommGetAsyncError(comm, &state);
    if (call != ncclSuccess) return call;
    if (state != ncclInProgress || Clock::now() >= end) return state;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

/// The asynchronous state of @p comm right now.
ncclResult_t async_state(ncclComm_t comm) {
  ncclResult_t state = ncclNumResults;
  const ncclResult_t call = ncclCommGetAsyncError(comm, &state);
  return call == ncclSuccess ? state : call;
}

ncclConfig_t make_config(bool blocking) {
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = blocking ? 1 : 0;
  return config;
}

/// An id made by @p root and sent to every rank.
ncclUniqueId shared_id(int root = 0) {
  ncclUniqueId id{};
  int ok = 1;
  if (g_rank == root) ok = ncclGetUniqueId(&id) == ncclSuccess ? 1 : 0;
  MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, root, MPI_COMM_WORLD);
  MPI_Bcast(&ok, 1, MPI_INT, root, MPI_COMM_WORLD);
  BOOST_REQUIRE_MESSAGE(ok == 1, "ncclGetUniqueId failed on rank " << root);
  return id;
}

/// Every rank calls ncclCommInitRankConfig over all ranks; the call's result.
ncclResult_t init_world(Comm& comm, bool blocking) {
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(blocking);
  return ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
}

/// A ready communicator over all ranks, or the test stops on every rank.
void ready_world(Comm& comm, bool blocking) {
  ncclResult_t r = init_world(comm, blocking);
  if (!blocking && r == ncclInProgress && comm.get() != nullptr) r = wait_comm(comm.get());
  EXPECT(r == ncclSuccess, "world communicator (blocking=" << blocking << ") ended in " << result_name(r));
  require_everyone(r == ncclSuccess && comm.get() != nullptr, "creating the world communicator");
}

/// Sets PCX_EMU_FAULT on this rank only, for the creation of one communicator [emu].
class FaultScope {
 public:
  FaultScope(bool here, const std::string& spec) : here_(here) {
    if (here_) setenv("PCX_EMU_FAULT", spec.c_str(), 1);
  }
  ~FaultScope() {
    if (here_) unsetenv("PCX_EMU_FAULT");
  }
  FaultScope(const FaultScope&) = delete;
  FaultScope& operator=(const FaultScope&) = delete;

 private:
  bool here_;
};

/// Bytes from an emulator size variable ("64M"; K, M, G are powers of 1024) [emu].
std::size_t size_from_env(const char* name, std::size_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  std::size_t value = std::strtoull(text, &end, 10);
  switch (end != nullptr ? *end : '\0') {
    case 'K':
    case 'k': value <<= 10U; break;
    case 'M':
    case 'm': value <<= 20U; break;
    case 'G':
    case 'g': value <<= 30U; break;
    default: break;
  }
  return value;
}

/// Sum with ncclSum of one int64 per rank over @p comm (blocking or not); checks the total.
bool sum_is(ncclComm_t comm, std::int64_t contribution, std::int64_t expected, const std::string& what) {
  Stream stream;
  DeviceBuffer buffer(3 * sizeof(std::int64_t));
  bool ok = EXPECT(stream.ok() && buffer.ok(), what << ": stream or buffer creation failed");
  std::vector<std::int64_t> values(3, contribution);
  std::vector<std::byte> bytes(buffer.size());
  std::memcpy(bytes.data(), values.data(), bytes.size());
  ok = ok && EXPECT(upload(buffer.get(), bytes), what << ": upload failed");
  ncclResult_t r =
      ok ? ncclAllReduce(buffer.get(), buffer.get(), 3, ncclInt64, ncclSum, comm, stream.get()) : ncclInvalidUsage;
  if (r == ncclInProgress) r = wait_comm(comm);
  ok = EXPECT(r == ncclSuccess, what << ": ncclAllReduce ended in " << result_name(r)) && ok;
  const cudaError_t e = ok ? wait_stream(stream.get()) : cudaSuccess;
  ok = EXPECT(e == cudaSuccess, what << ": the stream ended in " << error_name(e)) && ok;
  if (!ok) return false;
  bytes = download(buffer.get(), buffer.size());
  if (!EXPECT(bytes.size() == buffer.size(), what << ": download failed")) return false;
  std::memcpy(values.data(), bytes.data(), bytes.size());
  return EXPECT(values[0] == expected && values[1] == expected && values[2] == expected,
                what << ": sum is " << values[0] << ", expected " << expected);
}

// ---------------------------------------------------------------------------------------
// Element types: encoding of host reference values (doubles, exact in every type used)

enum class Kind { signed_int, unsigned_int, floating };

struct TypeInfo {
  const char* name;
  std::size_t size;
  ncclDataType_t type;
  Kind kind;
  int exponent_bits;  // floating types narrower than float only
  int mantissa_bits;
};

// Every ncclDataType_t [nccl.h:300-313]; float8 types are tested on their own.
constexpr TypeInfo kTypes[] = {
    {"int8", 1, ncclInt8, Kind::signed_int, 0, 0},       {"uint8", 1, ncclUint8, Kind::unsigned_int, 0, 0},
    {"int32", 4, ncclInt32, Kind::signed_int, 0, 0},     {"uint32", 4, ncclUint32, Kind::unsigned_int, 0, 0},
    {"int64", 8, ncclInt64, Kind::signed_int, 0, 0},     {"uint64", 8, ncclUint64, Kind::unsigned_int, 0, 0},
    {"float16", 2, ncclFloat16, Kind::floating, 5, 10},  {"float32", 4, ncclFloat32, Kind::floating, 8, 23},
    {"float64", 8, ncclFloat64, Kind::floating, 11, 52}, {"bfloat16", 2, ncclBfloat16, Kind::floating, 8, 7},
};
constexpr TypeInfo kFloat8Types[] = {
    {"float8e4m3", 1, ncclFloat8e4m3, Kind::floating, 4, 3},
    {"float8e5m2", 1, ncclFloat8e5m2, Kind::floating, 5, 2},
};

bool is_float8(const TypeInfo& t) { return t.kind == Kind::floating && t.size == 1; }

/// Bits of @p v in a float format with the given field widths (IEEE layout, bias
/// 2^(e-1)-1); @p v must be exactly representable.
std::uint32_t encode_small_float(double v, int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const std::uint32_t sign = std::signbit(v) ? 1U : 0U;
  const double a = std::fabs(v);
  std::uint32_t magnitude = 0;
  if (a != 0.0) {
    int e = 0;
    const double f = std::frexp(a, &e);  // a = f * 2^e, f in [0.5, 1)
    int biased = e - 1 + bias;
    double mantissa = 0.0;
    if (biased >= 1) {
      mantissa = std::ldexp(2.0 * f - 1.0, mantissa_bits);
    } else {
      biased = 0;
      mantissa = std::ldexp(a, bias - 1 + mantissa_bits);
    }
    magnitude = (static_cast<std::uint32_t>(biased) << static_cast<unsigned>(mantissa_bits)) |
                static_cast<std::uint32_t>(mantissa);
  }
  return (sign << static_cast<unsigned>(exponent_bits + mantissa_bits)) | magnitude;
}

double decode_small_float(std::uint32_t bits, int exponent_bits, int mantissa_bits) {
  const int bias = (1 << (exponent_bits - 1)) - 1;
  const auto mb = static_cast<unsigned>(mantissa_bits);
  const std::uint32_t sign = (bits >> (mb + static_cast<unsigned>(exponent_bits))) & 1U;
  const std::uint32_t exponent = (bits >> mb) & ((1U << static_cast<unsigned>(exponent_bits)) - 1U);
  const std::uint32_t mantissa = bits & ((1U << mb) - 1U);
  const std::uint32_t all_ones = (1U << static_cast<unsigned>(exponent_bits)) - 1U;
  const bool e4m3 = exponent_bits == 4 && mantissa_bits == 3;
  if (exponent == all_ones && (!e4m3 || mantissa == (1U << mb) - 1U)) return std::nan("");
  double a = exponent == 0 ? std::ldexp(static_cast<double>(mantissa), 1 - bias - mantissa_bits)
                           : std::ldexp(1.0 + std::ldexp(static_cast<double>(mantissa), -mantissa_bits),
                                        static_cast<int>(exponent) - bias);
  return sign != 0U ? -a : a;
}

void encode_one(const TypeInfo& t, double v, std::byte* out) {
  switch (t.kind) {
    case Kind::signed_int: {
      const auto x = static_cast<std::int64_t>(std::llround(v));
      std::memcpy(out, &x, t.size);  // little-endian: the low bytes
      return;
    }
    case Kind::unsigned_int: {
      const auto x = static_cast<std::uint64_t>(v);
      std::memcpy(out, &x, t.size);
      return;
    }
    case Kind::floating:
      if (t.type == ncclFloat32) {
        const auto x = static_cast<float>(v);
        std::memcpy(out, &x, 4);
      } else if (t.type == ncclFloat64) {
        std::memcpy(out, &v, 8);
      } else {
        const std::uint32_t bits = encode_small_float(v, t.exponent_bits, t.mantissa_bits);
        std::memcpy(out, &bits, t.size);
      }
      return;
  }
}

double decode_one(const TypeInfo& t, const std::byte* in) {
  switch (t.kind) {
    case Kind::signed_int: {
      std::uint64_t raw = 0;
      std::memcpy(&raw, in, t.size);
      const unsigned shift = 64U - 8U * static_cast<unsigned>(t.size);
      const auto x = static_cast<std::int64_t>(raw << shift) >> shift;
      return static_cast<double>(x);
    }
    case Kind::unsigned_int: {
      std::uint64_t x = 0;
      std::memcpy(&x, in, t.size);
      return static_cast<double>(x);
    }
    case Kind::floating:
      if (t.type == ncclFloat32) {
        float x = 0;
        std::memcpy(&x, in, 4);
        return x;
      }
      if (t.type == ncclFloat64) {
        double x = 0;
        std::memcpy(&x, in, 8);
        return x;
      }
      {
        std::uint32_t bits = 0;
        std::memcpy(&bits, in, t.size);
        return decode_small_float(bits, t.exponent_bits, t.mantissa_bits);
      }
  }
  return std::nan("");
}

std::vector<std::byte> encode(const TypeInfo& t, const std::vector<double>& values) {
  std::vector<std::byte> bytes(values.size() * t.size);
  for (std::size_t i = 0; i < values.size(); ++i) encode_one(t, values[i], bytes.data() + i * t.size);
  return bytes;
}

std::vector<double> decode(const TypeInfo& t, const std::vector<std::byte>& bytes) {
  std::vector<double> values(bytes.size() / t.size);
  for (std::size_t i = 0; i < values.size(); ++i) values[i] = decode_one(t, bytes.data() + i * t.size);
  return values;
}

/// Checks @p got (device bytes) against @p want element by element; reports the first
/// difference and how many there are.
bool expect_values(const TypeInfo& t, const std::vector<std::byte>& got_bytes, const std::vector<double>& want,
                   const std::string& what) {
  if (!EXPECT(got_bytes.size() == want.size() * t.size, what << ": could not read the result back")) return false;
  const std::vector<double> got = decode(t, got_bytes);
  std::size_t wrong = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (!(got[i] == want[i])) {
      if (wrong == 0) first = i;
      ++wrong;
    }
  }
  return EXPECT(wrong == 0, what << ": " << wrong << " of " << want.size() << " elements wrong; element " << first
                                 << " is " << got[first] << ", expected " << want[first]);
}

// Input values of each reduction, chosen so that every partial result is exact in every
// type (half, bfloat16 and float8 included) whatever the order of reduction, and that
// no integer type overflows at 8 ranks.

double unsigned_step(const TypeInfo& t) {
  // k * step for k in 0..6 sets the top bit at k = 6: a signed comparison would be wrong.
  return t.size == 1 ? 40.0 : t.size == 4 ? 6.0e8 : 2.0e18;
}

double reduce_input(ncclRedOp_t op, const TypeInfo& t, int rank, std::size_t i) {
  const auto r = static_cast<std::size_t>(rank);
  switch (op) {
    case ncclSum: {
      if (is_float8(t)) return static_cast<double>((r + i) % 2);
      const auto v = static_cast<double>((r + 2 * i) % 3);
      return t.kind == Kind::unsigned_int ? v : v - 1.0;
    }
    case ncclProd: {
      const std::size_t k = (r + i) % 4;
      if (k == 0) return 2.0;
      if (k == 1 && t.kind != Kind::unsigned_int) return -1.0;
      return 1.0;
    }
    case ncclMax:
    case ncclMin: {
      const auto k = static_cast<double>((r * 5 + i * 3) % 7);
      return t.kind == Kind::unsigned_int ? k * unsigned_step(t) : k - 3.0;
    }
    case ncclAvg:
      // The sum over an even number of ranks is a multiple of the count; float8 gets the same
      // value on every rank so that each partial sum stays exact.
      if (is_float8(t)) return static_cast<double>(i % 3);
      return static_cast<double>(i % 3 + 2 * (r % 2));
    default: return 0.0;
  }
}

double reduce_reference(ncclRedOp_t op, const TypeInfo& t, std::size_t i, int ranks) {
  double acc = reduce_input(op, t, 0, i);
  for (int r = 1; r < ranks; ++r) {
    const double v = reduce_input(op, t, r, i);
    switch (op) {
      case ncclSum:
      case ncclAvg: acc += v; break;
      case ncclProd: acc *= v; break;
      case ncclMax: acc = std::max(acc, v); break;
      case ncclMin: acc = std::min(acc, v); break;
      default: break;
    }
  }
  return op == ncclAvg ? acc / ranks : acc;
}

/// Values for the copying collectives: small, distinct per (source, index), exact in every type.
double copy_value(const TypeInfo& t, int source, std::size_t i) {
  const auto v = static_cast<double>((static_cast<std::size_t>(source) * 5 + i) % 8);
  return t.kind == Kind::unsigned_int ? v : v - 4.0;
}

struct OpInfo {
  ncclRedOp_t op;
  const char* name;
};
// Every built-in reduction [nccl.h:282-286].
constexpr OpInfo kOps[] = {{ncclSum, "sum"}, {ncclProd, "prod"}, {ncclMax, "max"}, {ncclMin, "min"}, {ncclAvg, "avg"}};

/// Enqueues nothing; waits for @p stream after a call returned @p r and requires every rank
/// to have got that far.
void finish_step(ncclResult_t r, cudaStream_t stream, const std::string& what) {
  const bool called = EXPECT(r == ncclSuccess, what << ": returned " << result_name(r));
  const cudaError_t e = called ? wait_stream(stream) : cudaSuccess;
  const bool done = EXPECT(e == cudaSuccess, what << ": the stream ended in " << error_name(e));
  require_everyone(called && done, what);
}

// ---------------------------------------------------------------------------------------
// Collective checks, each over a list of element types

void check_all_reduce(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types, bool in_place) {
  constexpr std::size_t count = 1027;
  for (const TypeInfo& t : types) {
    for (const OpInfo& op : kOps) {
      const std::string what = std::string(in_place ? "in-place " : "") + "ncclAllReduce " + op.name + " " + t.name;
      std::vector<double> mine(count);
      std::vector<double> want(count);
      for (std::size_t i = 0; i < count; ++i) {
        mine[i] = reduce_input(op.op, t, g_rank, i);
        want[i] = reduce_reference(op.op, t, i, g_size);
      }
      DeviceBuffer send(count * t.size);
      DeviceBuffer recv(count * t.size);
      const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), encode(t, mine)), what << ": setup");
      void* out = in_place ? send.get() : recv.get();
      const ncclResult_t r =
          ready ? ncclAllReduce(send.get(), out, count, t.type, op.op, comm, stream) : ncclInvalidUsage;
      finish_step(r, stream, what);
      expect_values(t, download(out, count * t.size), want, what);
    }
  }
}

void check_broadcast(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types) {
  constexpr std::size_t count = 515;
  for (const TypeInfo& t : types) {
    for (const bool in_place : {false, true}) {
      const int root = in_place ? 0 : g_size - 1;
      const std::string what =
          std::string(in_place ? "in-place " : "") + "ncclBroadcast " + t.name + " from root " + std::to_string(root);
      std::vector<double> mine(count);
      std::vector<double> want(count);
      std::vector<double> junk(count);
      for (std::size_t i = 0; i < count; ++i) {
        mine[i] = copy_value(t, g_rank == root ? root : g_rank + 3, i);
        want[i] = copy_value(t, root, i);
        junk[i] = copy_value(t, 7, i + 1);
      }
      DeviceBuffer send(count * t.size);
      DeviceBuffer recv(count * t.size);
      const bool ready =
          EXPECT(send.ok() && recv.ok() && upload(send.get(), encode(t, mine)) && upload(recv.get(), encode(t, junk)),
                 what << ": setup");
      void* out = in_place ? send.get() : recv.get();
      const ncclResult_t r =
          ready ? ncclBroadcast(send.get(), out, count, t.type, root, comm, stream) : ncclInvalidUsage;
      finish_step(r, stream, what);
      expect_values(t, download(out, count * t.size), want, what);
    }
  }
}

void check_all_gather(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types) {
  constexpr std::size_t count = 129;  // per rank
  const auto n = static_cast<std::size_t>(g_size);
  const auto me = static_cast<std::size_t>(g_rank);
  for (const TypeInfo& t : types) {
    for (const bool in_place : {false, true}) {
      const std::string what = std::string(in_place ? "in-place " : "") + "ncclAllGather " + t.name;
      std::vector<double> mine(count);
      std::vector<double> want(n * count);
      for (std::size_t i = 0; i < count; ++i) mine[i] = copy_value(t, g_rank, i);
      for (std::size_t k = 0; k < n; ++k)
        for (std::size_t i = 0; i < count; ++i) want[k * count + i] = copy_value(t, static_cast<int>(k), i);
      DeviceBuffer send(count * t.size);
      DeviceBuffer recv(n * count * t.size);
      // In place: sendbuff == recvbuff + rank * sendcount [nccl.h:445].
      const void* in = in_place ? static_cast<const void*>(recv.at(me * count * t.size)) : send.get();
      const bool ready =
          EXPECT(send.ok() && recv.ok() && upload(const_cast<void*>(in), encode(t, mine)), what << ": setup");
      const ncclResult_t r = ready ? ncclAllGather(in, recv.get(), count, t.type, comm, stream) : ncclInvalidUsage;
      finish_step(r, stream, what);
      expect_values(t, download(recv.get(), recv.size()), want, what);
    }
  }
}

void check_reduce_scatter(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types) {
  constexpr std::size_t count = 129;  // per rank
  const auto n = static_cast<std::size_t>(g_size);
  const auto me = static_cast<std::size_t>(g_rank);
  struct Variant {
    ncclRedOp_t op;
    const char* name;
    bool in_place;
  };
  constexpr Variant kVariants[] = {{ncclSum, "sum", false}, {ncclMax, "max", false}, {ncclSum, "sum", true}};
  for (const TypeInfo& t : types) {
    for (const Variant& v : kVariants) {
      const std::string what =
          std::string(v.in_place ? "in-place " : "") + "ncclReduceScatter " + v.name + " " + t.name;
      std::vector<double> mine(n * count);
      std::vector<double> want(count);
      for (std::size_t j = 0; j < n * count; ++j) mine[j] = reduce_input(v.op, t, g_rank, j);
      for (std::size_t i = 0; i < count; ++i) want[i] = reduce_reference(v.op, t, me * count + i, g_size);
      DeviceBuffer send(n * count * t.size);
      DeviceBuffer recv(count * t.size);
      const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), encode(t, mine)), what << ": setup");
      // In place: recvbuff == sendbuff + rank * recvcount [nccl.h:428].
      void* out = v.in_place ? static_cast<void*>(send.at(me * count * t.size)) : recv.get();
      const ncclResult_t r =
          ready ? ncclReduceScatter(send.get(), out, count, t.type, v.op, comm, stream) : ncclInvalidUsage;
      finish_step(r, stream, what);
      expect_values(t, download(out, count * t.size), want, what);
    }
  }
}

void check_ring(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types) {
  constexpr std::size_t count = 257;
  const int next = (g_rank + 1) % g_size;
  const int previous = (g_rank + g_size - 1) % g_size;
  for (const TypeInfo& t : types) {
    const std::string what = std::string("ncclSend/ncclRecv ring ") + t.name;
    std::vector<double> mine(count);
    std::vector<double> want(count);
    for (std::size_t i = 0; i < count; ++i) {
      mine[i] = copy_value(t, g_rank, i);
      want[i] = copy_value(t, previous, i);
    }
    DeviceBuffer send(count * t.size);
    DeviceBuffer recv(count * t.size);
    const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), encode(t, mine)), what << ": setup");
    ncclResult_t r = ncclInvalidUsage;
    if (ready) {
      // Sends and receives that must progress together are fused in a group [nccl.h:503-505].
      const ncclResult_t start = ncclGroupStart();
      const ncclResult_t s = ncclSend(send.get(), count, t.type, next, comm, stream);
      const ncclResult_t v = ncclRecv(recv.get(), count, t.type, previous, comm, stream);
      const ncclResult_t end = ncclGroupEnd();
      r = start != ncclSuccess ? start : s != ncclSuccess ? s : v != ncclSuccess ? v : end;
    }
    finish_step(r, stream, what);
    expect_values(t, download(recv.get(), recv.size()), want, what);
  }
}

/// Elements rank @p source sends to rank @p destination in the uneven all-to-all.
std::size_t a2a_count(int source, int destination) {
  return static_cast<std::size_t>(((source + 2 * destination) % 3 + 1) * 7);
}

void check_uneven_all_to_all(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types) {
  std::vector<std::size_t> send_offset(static_cast<std::size_t>(g_size) + 1, 0);
  std::vector<std::size_t> recv_offset(static_cast<std::size_t>(g_size) + 1, 0);
  for (int p = 0; p < g_size; ++p) {
    const auto k = static_cast<std::size_t>(p);
    send_offset[k + 1] = send_offset[k] + a2a_count(g_rank, p);
    recv_offset[k + 1] = recv_offset[k] + a2a_count(p, g_rank);
  }
  const std::size_t send_total = send_offset.back();
  const std::size_t recv_total = recv_offset.back();
  for (const TypeInfo& t : types) {
    const std::string what = std::string("uneven all-to-all (ncclSend/ncclRecv group) ") + t.name;
    std::vector<double> mine(send_total);
    std::vector<double> want(recv_total);
    for (int p = 0; p < g_size; ++p) {
      const auto k = static_cast<std::size_t>(p);
      for (std::size_t j = 0; j < a2a_count(g_rank, p); ++j)
        mine[send_offset[k] + j] = copy_value(t, g_rank * 3 + p, j);
      for (std::size_t j = 0; j < a2a_count(p, g_rank); ++j)
        want[recv_offset[k] + j] = copy_value(t, p * 3 + g_rank, j);
    }
    DeviceBuffer send(send_total * t.size);
    DeviceBuffer recv(recv_total * t.size);
    const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), encode(t, mine)), what << ": setup");
    ncclResult_t r = ncclInvalidUsage;
    if (ready) {
      // The all-to-all of [p2p]: one send and one receive per peer, self included, in a group.
      r = ncclGroupStart();
      for (int p = 0; p < g_size && r == ncclSuccess; ++p) {
        const auto k = static_cast<std::size_t>(p);
        r = ncclSend(send.at(send_offset[k] * t.size), a2a_count(g_rank, p), t.type, p, comm, stream);
        if (r == ncclSuccess)
          r = ncclRecv(recv.at(recv_offset[k] * t.size), a2a_count(p, g_rank), t.type, p, comm, stream);
      }
      const ncclResult_t end = ncclGroupEnd();
      if (r == ncclSuccess) r = end;
    }
    finish_step(r, stream, what);
    expect_values(t, download(recv.get(), recv.size()), want, what);
  }
}

}  // namespace

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(cuda_runtime, EmulatorTest)

BOOST_AUTO_TEST_CASE(device_count_is_PCX_EMU_DEVICES_with_default_8) {
  // [emu] PCX_EMU_DEVICES: visible devices (default 8).
  const char* text = std::getenv("PCX_EMU_DEVICES");
  const int expected = text != nullptr && *text != '\0' ? std::atoi(text) : 8;
  int count = -1;
  const cudaError_t e = cudaGetDeviceCount(&count);
  EXPECT(e == cudaSuccess, "cudaGetDeviceCount returned " << error_name(e));
  EXPECT(count == expected, "cudaGetDeviceCount gave " << count << ", expected " << expected);
}

BOOST_AUTO_TEST_CASE(current_device_is_per_host_thread_and_starts_at_0) {
  // [cudart] cudaSetDevice: "Sets device as the current device for the calling host thread."
  // A host thread that never called it uses device 0 (CUDA C++ Programming Guide, "Device
  // Selection": "device 0 is used if cudaSetDevice() is not called").
  if (!EXPECT(g_devices >= 2, "needs 2 devices, has " << g_devices)) return;
  const int main_device = std::min(3, g_devices - 1);
  EXPECT(cudaSetDevice(main_device) == cudaSuccess, "cudaSetDevice(" << main_device << ")");
  int seen_by_thread = -1;
  int after_thread_set = -1;
  cudaError_t thread_get = cudaErrorUnknown;
  std::thread other([&] {
    thread_get = cudaGetDevice(&seen_by_thread);
    (void)cudaSetDevice(1);
    (void)cudaGetDevice(&after_thread_set);
  });
  other.join();
  int seen_by_main = -1;
  EXPECT(cudaGetDevice(&seen_by_main) == cudaSuccess, "cudaGetDevice");
  EXPECT(thread_get == cudaSuccess, "cudaGetDevice in a new thread returned " << error_name(thread_get));
  EXPECT(seen_by_thread == 0, "a new host thread sees device " << seen_by_thread << ", expected 0");
  EXPECT(after_thread_set == 1, "the thread set device 1 and sees " << after_thread_set);
  EXPECT(seen_by_main == main_device,
         "the main thread set " << main_device << " and sees " << seen_by_main << " after another thread set 1");
}

BOOST_AUTO_TEST_CASE(set_device_out_of_range_fails_with_invalid_device_and_is_not_sticky) {
  // [cudart] cudaSetDevice: "Valid device id's are 0 to (cudaGetDeviceCount() - 1)"; returns
  // cudaErrorInvalidDevice. cudaGetLastError "Returns the last error that has been produced
  // by any of the runtime calls ... and resets it to cudaSuccess": the error is not sticky.
  (void)cudaGetLastError();
  const cudaError_t too_high = cudaSetDevice(g_devices);
  const cudaError_t negative = cudaSetDevice(-1);
  EXPECT(too_high == cudaErrorInvalidDevice, "cudaSetDevice(" << g_devices << ") returned " << error_name(too_high));
  EXPECT(negative == cudaErrorInvalidDevice, "cudaSetDevice(-1) returned " << error_name(negative));
  const cudaError_t first = cudaGetLastError();
  const cudaError_t second = cudaGetLastError();
  EXPECT(first == cudaErrorInvalidDevice, "first cudaGetLastError returned " << error_name(first));
  EXPECT(second == cudaSuccess, "second cudaGetLastError returned " << error_name(second));
  int device = -1;
  EXPECT(cudaGetDevice(&device) == cudaSuccess && device == my_device(),
         "the failed cudaSetDevice changed the current device to " << device);
  void* p = nullptr;
  const cudaError_t m = cudaMalloc(&p, 1024);
  EXPECT(m == cudaSuccess, "cudaMalloc after the error returned " << error_name(m));
  if (m == cudaSuccess) EXPECT(cudaFree(p) == cudaSuccess, "cudaFree");
  const char* text = cudaGetErrorString(cudaErrorInvalidDevice);
  EXPECT(text != nullptr && *text != '\0', "cudaGetErrorString(cudaErrorInvalidDevice) is empty");
}

BOOST_AUTO_TEST_CASE(device_allocation_is_device_memory_of_its_device_also_inside) {
  // [cudart] cudaPointerGetAttributes: type cudaMemoryTypeDevice for device memory; "device is
  // the device against which ptr was allocated"; devicePointer "the device pointer alias
  // through which the memory referred to by ptr may be accessed on the current device".
  if (!EXPECT(g_devices >= 2, "needs 2 devices, has " << g_devices)) return;
  const int other = (my_device() + 1) % g_devices;
  EXPECT(cudaSetDevice(other) == cudaSuccess, "cudaSetDevice(" << other << ")");
  DeviceBuffer on_other(4096);
  EXPECT(cudaSetDevice(my_device()) == cudaSuccess, "cudaSetDevice back");
  DeviceBuffer on_mine(4096);
  if (!EXPECT(on_other.ok() && on_mine.ok(), "cudaMalloc failed")) return;
  struct Probe {
    const DeviceBuffer* buffer;
    int device;
  };
  for (const Probe& probe : {Probe{&on_mine, my_device()}, Probe{&on_other, other}}) {
    for (const std::size_t offset : {std::size_t{0}, std::size_t{100}, std::size_t{4095}}) {
      const void* p = probe.buffer->at(offset);
      cudaPointerAttributes a{};
      const cudaError_t e = cudaPointerGetAttributes(&a, p);
      EXPECT(e == cudaSuccess, "cudaPointerGetAttributes(base+" << offset << ") returned " << error_name(e));
      EXPECT(a.type == cudaMemoryTypeDevice,
             "base+" << offset << " on device " << probe.device << " has type " << static_cast<int>(a.type));
      EXPECT(a.device == probe.device,
             "base+" << offset << " reported on device " << a.device << ", allocated on " << probe.device);
      if (probe.device == my_device())
        EXPECT(a.devicePointer == p, "devicePointer of base+" << offset << " is " << a.devicePointer << ", not " << p);
    }
  }
}

BOOST_AUTO_TEST_CASE(host_pointer_is_reported_as_unregistered) {
  // [cudart] cudaPointerGetAttributes: "In CUDA 11.0 forward passing host pointer will return
  // cudaMemoryTypeUnregistered in cudaPointerAttributes::type and call will return cudaSuccess."
  std::vector<int> heap(16);
  int stack = 0;
  for (const void* p : {static_cast<const void*>(heap.data()), static_cast<const void*>(&stack)}) {
    cudaPointerAttributes a{};
    a.type = cudaMemoryTypeDevice;
    const cudaError_t e = cudaPointerGetAttributes(&a, p);
    EXPECT(e == cudaSuccess, "cudaPointerGetAttributes(host) returned " << error_name(e));
    EXPECT(a.type == cudaMemoryTypeUnregistered, "a host pointer has type " << static_cast<int>(a.type));
  }
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(memcpy_of_every_kind_round_trips) {
  // [cudart] cudaMemcpy / cudaMemcpyAsync with each cudaMemcpyKind, cudaMemcpyDefault
  // inferring the direction from the pointers (unified addressing).
  constexpr std::size_t bytes = 4099;
  std::vector<std::byte> pattern(bytes);
  for (std::size_t i = 0; i < bytes; ++i) pattern[i] = static_cast<std::byte>((i * 131 + 7) % 251);
  DeviceBuffer a(bytes);
  DeviceBuffer b(bytes);
  Stream stream;
  if (!EXPECT(a.ok() && b.ok() && stream.ok(), "setup")) return;
  std::vector<std::byte> out(bytes);
  std::vector<std::byte> host_copy(bytes);

  EXPECT(cudaMemcpy(a.get(), pattern.data(), bytes, cudaMemcpyHostToDevice) == cudaSuccess, "HostToDevice");
  EXPECT(cudaMemcpy(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice) == cudaSuccess, "DeviceToDevice");
  EXPECT(cudaMemcpy(out.data(), b.get(), bytes, cudaMemcpyDeviceToHost) == cudaSuccess, "DeviceToHost");
  EXPECT(out == pattern, "HostToDevice, DeviceToDevice, DeviceToHost changed the data");

  EXPECT(cudaMemcpy(host_copy.data(), pattern.data(), bytes, cudaMemcpyHostToHost) == cudaSuccess, "HostToHost");
  EXPECT(host_copy == pattern, "HostToHost changed the data");

  std::vector<std::byte> reversed(pattern.rbegin(), pattern.rend());
  std::fill(out.begin(), out.end(), std::byte{0});
  EXPECT(cudaMemcpy(a.get(), reversed.data(), bytes, cudaMemcpyDefault) == cudaSuccess, "Default (to device)");
  EXPECT(cudaMemcpy(b.get(), a.get(), bytes, cudaMemcpyDefault) == cudaSuccess, "Default (device to device)");
  EXPECT(cudaMemcpy(out.data(), b.get(), bytes, cudaMemcpyDefault) == cudaSuccess, "Default (to host)");
  EXPECT(out == reversed, "cudaMemcpyDefault changed the data");

  std::fill(out.begin(), out.end(), std::byte{0});
  EXPECT(cudaMemcpyAsync(a.get(), pattern.data(), bytes, cudaMemcpyHostToDevice, stream.get()) == cudaSuccess,
         "cudaMemcpyAsync HostToDevice");
  EXPECT(cudaMemcpyAsync(out.data(), a.get(), bytes, cudaMemcpyDeviceToHost, stream.get()) == cudaSuccess,
         "cudaMemcpyAsync DeviceToHost");
  const cudaError_t e = wait_stream(stream.get());
  EXPECT(e == cudaSuccess, "the stream ended in " << error_name(e));
  EXPECT(out == pattern, "cudaMemcpyAsync round trip changed the data");
}

BOOST_AUTO_TEST_CASE(mem_get_info_free_drops_by_an_allocation_until_it_is_freed) {
  // [cudart] cudaMemGetInfo: "*free the amount of memory on the device that is free", "*total
  // the total amount of memory"; [emu] PCX_EMU_DEVICE_MEMORY bytes per device (default 80G),
  // pcxemu_live_allocations / pcxemu_allocated_bytes count cudaMalloc not yet freed.
  constexpr std::size_t size = std::size_t{64} << 20U;  // a multiple of any allocation granularity
  std::size_t free0 = 0;
  std::size_t total0 = 0;
  EXPECT(cudaMemGetInfo(&free0, &total0) == cudaSuccess, "cudaMemGetInfo");
  const std::size_t expected_total = size_from_env("PCX_EMU_DEVICE_MEMORY", std::size_t{80} << 30U);
  EXPECT(total0 == expected_total, "total is " << total0 << ", PCX_EMU_DEVICE_MEMORY gives " << expected_total);
  EXPECT(free0 <= total0, "free " << free0 << " exceeds total " << total0);
  const int allocations0 = pcxemu_live_allocations();
  const std::size_t bytes0 = pcxemu_allocated_bytes();
  {
    DeviceBuffer buffer(size);
    if (EXPECT(buffer.ok(), "cudaMalloc(64 MiB)")) {
      std::size_t free1 = 0;
      std::size_t total1 = 0;
      EXPECT(cudaMemGetInfo(&free1, &total1) == cudaSuccess, "cudaMemGetInfo");
      EXPECT(free0 - free1 == size,
             "free dropped by " << static_cast<long long>(free0 - free1) << ", allocated " << size);
      EXPECT(total1 == total0, "total changed from " << total0 << " to " << total1);
      EXPECT(pcxemu_live_allocations() == allocations0 + 1, "live allocations " << pcxemu_live_allocations());
      EXPECT(pcxemu_allocated_bytes() == bytes0 + size, "allocated bytes " << pcxemu_allocated_bytes());
    }
  }
  std::size_t free2 = 0;
  std::size_t total2 = 0;
  EXPECT(cudaMemGetInfo(&free2, &total2) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free2 == free0, "after cudaFree free is " << free2 << ", was " << free0);
  EXPECT(pcxemu_live_allocations() == allocations0, "live allocations after cudaFree " << pcxemu_live_allocations());
  EXPECT(pcxemu_allocated_bytes() == bytes0, "allocated bytes after cudaFree " << pcxemu_allocated_bytes());
}

BOOST_AUTO_TEST_CASE(allocation_larger_than_free_memory_fails_and_is_not_sticky) {
  // [cudart] cudaMalloc returns cudaErrorMemoryAllocation when it cannot allocate; the error
  // is not sticky: cudaGetLastError returns it once and later calls work.
  std::size_t free0 = 0;
  std::size_t total0 = 0;
  EXPECT(cudaMemGetInfo(&free0, &total0) == cudaSuccess, "cudaMemGetInfo");
  (void)cudaGetLastError();
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, total0 + (std::size_t{1} << 30U));
  EXPECT(e == cudaErrorMemoryAllocation, "cudaMalloc(total + 1 GiB) returned " << error_name(e));
  if (e == cudaSuccess) (void)cudaFree(p);
  EXPECT(cudaGetLastError() == cudaErrorMemoryAllocation, "cudaGetLastError after the failed cudaMalloc");
  EXPECT(cudaGetLastError() == cudaSuccess, "second cudaGetLastError");
  DeviceBuffer small(4096);
  EXPECT(small.ok(), "cudaMalloc after the failure");
}

BOOST_AUTO_TEST_CASE(streams_are_counted_while_they_live) {
  // [emu] pcxemu_live_streams: streams created and not yet destroyed.
  const int before = pcxemu_live_streams();
  {
    Stream a;
    Stream b;
    EXPECT(a.ok() && b.ok(), "cudaStreamCreateWithFlags");
    EXPECT(pcxemu_live_streams() == before + 2,
           "live streams " << pcxemu_live_streams() << ", expected " << before + 2);
    EXPECT(cudaStreamQuery(a.get()) == cudaSuccess, "an empty stream is complete");
  }
  EXPECT(pcxemu_live_streams() == before, "live streams after destroy " << pcxemu_live_streams());
}

BOOST_AUTO_TEST_CASE(test_helpers_encode_half_bfloat16_and_float8_like_cuda) {
  // The test's own encoders, checked against CUDA's host conversions (cuda_fp16.h,
  // cuda_bf16.h, cuda_fp8.h) for every value the tests use (multiples of 1/8 in [-16, 16]).
  const TypeInfo& half = kTypes[6];
  const TypeInfo& bf16 = kTypes[9];
  for (int k = -128; k <= 128; ++k) {
    const double v = k / 8.0;
    const auto f = static_cast<float>(v);
    const __half_raw h = __float2half(f);
    const __nv_bfloat16_raw b = __float2bfloat16(f);
    EXPECT(encode_small_float(v, 5, 10) == h.x, "float16 " << v);
    EXPECT(encode_small_float(v, 8, 7) == b.x, "bfloat16 " << v);
    std::byte bytes[2];
    encode_one(half, v, bytes);
    EXPECT(decode_one(half, bytes) == v, "float16 round trip " << v);
    encode_one(bf16, v, bytes);
    EXPECT(decode_one(bf16, bytes) == v, "bfloat16 round trip " << v);
    for (const TypeInfo& t : kFloat8Types) {
      encode_one(t, v, bytes);
      if (decode_one(t, bytes) != v) continue;  // not representable: never used for this type
      const __nv_fp8_storage_t cuda =
          __nv_cvt_float_to_fp8(f, __NV_SATFINITE, t.type == ncclFloat8e4m3 ? __NV_E4M3 : __NV_E5M2);
      EXPECT(static_cast<unsigned>(bytes[0]) == static_cast<unsigned>(cuda), t.name << " " << v);
    }
  }
  for (const TypeInfo& t : kTypes) {
    for (const std::size_t i : {std::size_t{0}, std::size_t{1}, std::size_t{5}}) {
      for (const OpInfo& op : kOps) {
        std::byte bytes[8];
        const double v = reduce_reference(op.op, t, i, 8);
        encode_one(t, v, bytes);
        EXPECT(decode_one(t, bytes) == v, t.name << " " << op.name << " reference " << v << " not exact");
      }
    }
  }
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(nccl_queries, EmulatorTest)

BOOST_AUTO_TEST_CASE(get_version_returns_NCCL_VERSION_CODE) {
  // [comms] ncclGetVersion: "The version number returned will be the same as the
  // NCCL_VERSION_CODE defined in nccl.h."
  int version = 0;
  EXPECT(ncclGetVersion(&version) == ncclSuccess, "ncclGetVersion");
  EXPECT(version == NCCL_VERSION_CODE, "version " << version << ", NCCL_VERSION_CODE " << NCCL_VERSION_CODE);
}

BOOST_AUTO_TEST_CASE(error_strings_and_last_error_are_readable) {
  // [comms] ncclGetErrorString "Returns a human-readable string corresponding to the passed
  // error code"; ncclGetLastError "Returns a human-readable string corresponding to the last
  // error" (comm may be NULL [nccl.h:238-239]).
  for (const ncclResult_t r : {ncclSuccess, ncclUnhandledCudaError, ncclSystemError, ncclInternalError,
                               ncclInvalidArgument, ncclInvalidUsage, ncclRemoteError, ncclInProgress}) {
    const char* text = ncclGetErrorString(r);
    EXPECT(text != nullptr && *text != '\0', "ncclGetErrorString(" << result_name(r) << ") is empty");
  }
  EXPECT(ncclGetLastError(nullptr) != nullptr, "ncclGetLastError(NULL) returned NULL");
}

BOOST_AUTO_TEST_CASE(comm_cu_device_is_the_device_current_at_init) {
  // [nccl.h:166-167] "Each rank is associated to a CUDA device, which has to be set before
  // calling ncclCommInitRank"; ncclCommCuDevice "Returns the cuda device number associated
  // with the communicator" [nccl.h:256].
  const int device = (my_device() + 1) % g_devices;
  EXPECT(cudaSetDevice(device) == cudaSuccess, "cudaSetDevice(" << device << ")");
  Comm comm;
  ready_world(comm, true);
  EXPECT(cudaSetDevice(my_device()) == cudaSuccess, "cudaSetDevice back");
  int reported = -1;
  EXPECT(ncclCommCuDevice(comm.get(), &reported) == ncclSuccess, "ncclCommCuDevice");
  EXPECT(reported == device, "ncclCommCuDevice gave " << reported << ", device at init was " << device);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(communicator_lifecycle, EmulatorTest)

BOOST_AUTO_TEST_CASE(blocking_init_is_ready_when_it_returns) {
  // [comms] ncclCommInitRankConfig with config.blocking=1 returns when the communicator is
  // initialized; ncclCommCount / ncclCommUserRank [nccl.h:252-262].
  Comm comm;
  const ncclResult_t r = init_world(comm, true);
  EXPECT(r == ncclSuccess, "blocking init returned " << result_name(r));
  require_everyone(r == ncclSuccess && comm.get() != nullptr, "blocking init");
  EXPECT(async_state(comm.get()) == ncclSuccess,
         "state right after a blocking init is " << result_name(async_state(comm.get())));
  EXPECT(pcxemu_live_communicators() == comms_at_start + 1, "live communicators " << pcxemu_live_communicators());
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size, "ncclCommCount gave " << count);
  EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank, "ncclCommUserRank gave " << rank);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2, "all-reduce on the new communicator");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after destroy " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(non_blocking_init_returns_in_progress_then_succeeds) {
  // [usage] / [types]: with config.blocking=0 calls return ncclInProgress, "A NCCL operation on
  // the communicator is being enqueued and is being progressed in the background"; the
  // application polls ncclCommGetAsyncError until it is no longer ncclInProgress. The handle
  // is written by the call itself (NCCL's non-blocking init example polls *comm right away).
  // Rank 0 calls first, alone: init is collective [nccl.h:169-170], so it cannot be complete
  // before the others call. At 1 rank the emulator's launch delay [emu] keeps it in progress.
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(false);
  Comm comm;
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
    EXPECT(r == ncclInProgress, "non-blocking init before the peers called returned " << result_name(r));
    EXPECT(comm.get() != nullptr, "*comm is NULL right after a non-blocking init");
    if (comm.get() != nullptr) {
      const ncclResult_t state = async_state(comm.get());
      EXPECT(state == ncclInProgress, "ncclCommGetAsyncError right after the call gave " << result_name(state));
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking init returned " << result_name(r));
    EXPECT(comm.get() != nullptr, "*comm is NULL right after a non-blocking init");
  }
  const ncclResult_t state = comm.get() != nullptr ? wait_comm(comm.get()) : ncclInvalidUsage;
  EXPECT(state == ncclSuccess, "non-blocking init ended in " << result_name(state));
  require_everyone(state == ncclSuccess, "non-blocking init");
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size, "ncclCommCount gave " << count);
  EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank, "ncclCommUserRank gave " << rank);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2,
         "all-reduce on the non-blocking communicator");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(init_rank_scalable_with_one_or_two_ids_works_like_init_rank) {
  // [nccl.h:227-231] ncclCommInitRankScalable: "similar to ncclCommInitRankConfig. Allows to
  // use more than one ncclUniqueId (up to one per rank) ... The number of ncclUniqueIds and
  // their order must be the same for every rank." Id k is made by rank k*n/nId. "Up to one
  // per rank": at 1 rank only nId=1.
  if (g_size < 2) BOOST_TEST_MESSAGE("1 rank: nId=2 would exceed one id per rank; only nId=1");
  for (const int ids_count : {1, 2}) {
    if (ids_count > g_size) continue;
    std::vector<ncclUniqueId> ids;
    for (int k = 0; k < ids_count; ++k) ids.push_back(shared_id(k * g_size / ids_count));
    ncclConfig_t config = make_config(true);
    Comm comm;
    const ncclResult_t r = ncclCommInitRankScalable(comm.out(), g_size, g_rank, ids_count, ids.data(), &config);
    EXPECT(r == ncclSuccess, "ncclCommInitRankScalable with nId=" << ids_count << " returned " << result_name(r));
    require_everyone(r == ncclSuccess && comm.get() != nullptr, "ncclCommInitRankScalable");
    int count = -1;
    int rank = -1;
    EXPECT(ncclCommCount(comm.get(), &count) == ncclSuccess && count == g_size,
           "nId=" << ids_count << " count " << count);
    EXPECT(ncclCommUserRank(comm.get(), &rank) == ncclSuccess && rank == g_rank,
           "nId=" << ids_count << " rank " << rank);
    sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2,
           "all-reduce over ncclCommInitRankScalable nId=" + std::to_string(ids_count));
    EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  }
}

BOOST_AUTO_TEST_CASE(blocking_split_child_is_ready_when_it_returns) {
  // [nccl.h:209-215] ncclCommSplit: "Ranks with the same color will end up in the same
  // communicator. Within the new communicator, key will be used to order ranks." A NULL config
  // inherits the (blocking) parent's: the child is ready at return.
  Comm child;
  Comm parent;
  ready_world(parent, true);
  const int color = g_rank % 2;
  const ncclResult_t r = ncclCommSplit(parent.get(), color, g_rank, child.out(), nullptr);
  EXPECT(r == ncclSuccess, "blocking ncclCommSplit returned " << result_name(r));
  require_everyone(r == ncclSuccess && child.get() != nullptr, "blocking split");
  EXPECT(async_state(child.get()) == ncclSuccess, "child state " << result_name(async_state(child.get())));
  const int expected_count = color == 0 ? (g_size + 1) / 2 : g_size / 2;
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == expected_count,
         "child count " << count << ", expected " << expected_count);
  EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank / 2,
         "child rank " << rank << ", expected " << g_rank / 2);
  std::int64_t expected_sum = 0;
  for (int p = color; p < g_size; p += 2) expected_sum += p;
  sum_is(child.get(), g_rank, expected_sum, "all-reduce of parent ranks over the child");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(non_blocking_split_publishes_child_only_when_parent_reports_success) {
  // [init.cc] "*newcomm should be NCCL_COMM_NULL until comm split fully complete"; the
  // non-blocking split is progressed on, and reported by, the parent (ncclCommGetAsyncError
  // on the parent) [usage]. Split is collective over the parent [nccl.h:209-215], so rank 0,
  // calling alone first, cannot be complete; at 1 rank the emulator's launch delay [emu] keeps
  // it in progress. The user guide has such a call return ncclInProgress [types]; NCCL
  // 2.28.9's source returns ncclSuccess (init.cc:ncclCommSplit returns ncclCommInitChildComm's
  // result, and checks.h's NCCLCHECK lets the group's ncclInProgress through). Either return
  // leaves *newcomm NULL until the parent reports ncclSuccess, which is what a caller can use.
  Comm child;
  Comm parent;
  ready_world(parent, false);
  ncclConfig_t config = make_config(false);
  const int color = g_rank % 2;
  const int key = -g_rank;  // reversed order within each colour
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = ncclCommSplit(parent.get(), color, key, child.out(), &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess,
           "non-blocking split before the peers called returned " << result_name(r));
    EXPECT(child.get() == nullptr, "*newcomm is not NULL right after a non-blocking split");
    const ncclResult_t state = async_state(parent.get());
    EXPECT(state == ncclInProgress, "the parent reports " << result_name(state) << " during the split");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    r = ncclCommSplit(parent.get(), color, key, child.out(), &config);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking split returned " << result_name(r));
    // *newcomm is written from the background when the split completes [init.cc], whatever
    // the call returned: only the parent's ncclSuccess says it is there.
  }
  const ncclResult_t state = wait_comm(parent.get());
  EXPECT(state == ncclSuccess, "the parent ended the split in " << result_name(state));
  EXPECT(child.get() != nullptr, "*newcomm is still NULL after the parent reported ncclSuccess");
  require_everyone(state == ncclSuccess && child.get() != nullptr, "non-blocking split");
  EXPECT(async_state(child.get()) == ncclSuccess, "the child reports " << result_name(async_state(child.get())));
  const int expected_count = color == 0 ? (g_size + 1) / 2 : g_size / 2;
  int count = -1;
  int rank = -1;
  EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == expected_count,
         "child count " << count << ", expected " << expected_count);
  EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_count - 1 - g_rank / 2,
         "child rank " << rank << ", expected " << expected_count - 1 - g_rank / 2);
  std::int64_t expected_sum = 0;
  for (int p = color; p < g_size; p += 2) expected_sum += p;
  sum_is(child.get(), g_rank, expected_sum, "all-reduce over the non-blocking child");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_with_null_config_inherits_non_blocking) {
  // [nccl.h:214-215] "If config is NULL, the new communicator will inherit the original
  // communicator's configuration": the child of a non-blocking parent is non-blocking, so a
  // split of that child (all ranks at once) comes back before it is complete, with *newcomm
  // NULL and the child reporting ncclInProgress [init.cc], [usage]; a blocking child would
  // return the grandchild ready. The emulator keeps non-blocking calls in progress for
  // PCX_EMU_LAUNCH_DELAY_US [emu], so the in-progress state is seen right after the call.
  Comm grandchild;
  Comm child;
  Comm parent;
  ready_world(parent, false);
  if (g_rank == 0) {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclInProgress || r == ncclSuccess,
           "split of a non-blocking parent (peers absent) returned " << result_name(r));
    EXPECT(child.get() == nullptr, "*newcomm set while in progress");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclInProgress || r == ncclSuccess, "split of a non-blocking parent returned " << result_name(r));
  }
  const ncclResult_t parent_state = wait_comm(parent.get());
  EXPECT(parent_state == ncclSuccess, "the parent ended the split in " << result_name(parent_state));
  require_everyone(parent_state == ncclSuccess && child.get() != nullptr, "split with NULL config");

  const ncclResult_t r = ncclCommSplit(child.get(), 0, g_rank, grandchild.out(), nullptr);
  const bool published_at_return = grandchild.get() != nullptr;
  const ncclResult_t state_at_return = async_state(child.get());
  // A blocking child returns the split complete: grandchild set, child ncclSuccess. A
  // non-blocking one reports ncclInProgress for the launch delay [emu].
  EXPECT(state_at_return == ncclInProgress, "right after a split of the child it reports "
                                                << result_name(state_at_return) << " (*newcomm "
                                                << (published_at_return ? "set" : "NULL")
                                                << "): the child did not inherit blocking=0");
  // [init.cc] *newcomm is written when the split completes, not while it is in progress.
  if (state_at_return == ncclInProgress)
    EXPECT(!published_at_return, "the grandchild was published while the child still reports ncclInProgress");
  EXPECT(r == ncclInProgress || r == ncclSuccess,
         "a split of the non-blocking child returned " << result_name(r) << " while still in progress");
  const ncclResult_t child_state = (r == ncclSuccess || r == ncclInProgress) ? wait_comm(child.get()) : r;
  EXPECT(child_state == ncclSuccess, "the child ended its split in " << result_name(child_state));
  require_everyone(child_state == ncclSuccess && grandchild.get() != nullptr, "split of the inherited child");
  int count = -1;
  EXPECT(ncclCommCount(grandchild.get(), &count) == ncclSuccess && count == g_size, "grandchild count " << count);
  EXPECT(grandchild.destroy() == ncclSuccess, "ncclCommDestroy(grandchild)");
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_with_no_color_returns_null) {
  // [nccl.h:212-213] "NCCL_SPLIT_NOCOLOR as color will indicate the rank will not be part of
  // any group and will therefore return a NULL communicator." Odd ranks (and a lone rank)
  // pass it; the handle starts non-NULL to see it written.
  Comm child;
  Comm parent;
  ready_world(parent, true);
  const bool outside = g_size == 1 || g_rank % 2 == 1;
  if (outside) {
    int sentinel = 0;
    auto raw = reinterpret_cast<ncclComm_t>(&sentinel);
    const ncclResult_t r = ncclCommSplit(parent.get(), NCCL_SPLIT_NOCOLOR, g_rank, &raw, nullptr);
    EXPECT(r == ncclSuccess, "NOCOLOR split returned " << result_name(r));
    EXPECT(raw == nullptr, "NOCOLOR split left *newcomm " << static_cast<void*>(raw) << " instead of NULL");
    if (raw != nullptr && raw != reinterpret_cast<ncclComm_t>(&sentinel)) (void)ncclCommAbort(raw);
  } else {
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
    EXPECT(r == ncclSuccess, "split returned " << result_name(r));
    int count = -1;
    int rank = -1;
    if (EXPECT(child.get() != nullptr, "the coloured rank got a NULL communicator")) {
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == (g_size + 1) / 2, "child count " << count);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank / 2, "child rank " << rank);
    }
  }
  require_everyone(g_local_ok, "NOCOLOR split");
  if (!outside) {
    std::int64_t expected_sum = 0;
    for (int p = 0; p < g_size; p += 2) expected_sum += p;
    sum_is(child.get(), g_rank, expected_sum, "all-reduce over the even ranks");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  }
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(split_key_orders_child_ranks_and_ties_keep_parent_order) {
  // [comms] ncclCommSplit: "The value of key will determine the rank order, and the smaller
  // key means the smaller rank in new communicator. If keys are equal between ranks, then the
  // rank in the original communicator will be used to order ranks."
  struct KeyCase {
    const char* name;
    std::function<int(int)> key;
  };
  const std::vector<KeyCase> cases = {
      {"all keys 0", [](int) { return 0; }},
      {"reversed keys", [](int r) { return g_size - 1 - r; }},
      {"reversed pairs of equal keys", [](int r) { return (g_size - 1 - r) / 2; }},
  };
  Comm parent;
  ready_world(parent, true);
  for (const KeyCase& c : cases) {
    std::vector<int> order(static_cast<std::size_t>(g_size));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return c.key(a) < c.key(b); });
    const auto expected_rank = static_cast<int>(std::find(order.begin(), order.end(), g_rank) - order.begin());
    Comm child;
    const ncclResult_t r = ncclCommSplit(parent.get(), 0, c.key(g_rank), child.out(), nullptr);
    EXPECT(r == ncclSuccess, c.name << ": split returned " << result_name(r));
    require_everyone(r == ncclSuccess && child.get() != nullptr, c.name);
    int rank = -1;
    EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_rank,
           c.name << ": child rank " << rank << ", expected " << expected_rank);
    // The child's collectives use that order: an all-gather of parent ranks lists `order`.
    Stream stream;
    DeviceBuffer send(sizeof(std::int32_t));
    DeviceBuffer recv(order.size() * sizeof(std::int32_t));
    const std::int32_t mine = g_rank;
    std::vector<std::byte> bytes(sizeof mine);
    std::memcpy(bytes.data(), &mine, sizeof mine);
    const bool ready = EXPECT(stream.ok() && send.ok() && recv.ok() && upload(send.get(), bytes), "setup");
    const ncclResult_t g =
        ready ? ncclAllGather(send.get(), recv.get(), 1, ncclInt32, child.get(), stream.get()) : ncclInvalidUsage;
    finish_step(g, stream.get(), std::string(c.name) + ": all-gather over the child");
    const std::vector<std::byte> got = download(recv.get(), recv.size());
    std::vector<std::int32_t> gathered(order.size(), -1);
    if (got.size() == recv.size()) std::memcpy(gathered.data(), got.data(), got.size());
    EXPECT(std::equal(gathered.begin(), gathered.end(), order.begin()),
           c.name << ": the all-gather over the child is not in key order");
    EXPECT(child.destroy() == ncclSuccess, c.name << ": ncclCommDestroy(child)");
  }
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

/// At 1 rank there is no rank to exclude: NCCL rejects an empty exclusion list
/// (src/init.cc:2560-2561 of 2.28.9: PtrCheck(excludeRanksList) and excludeRanksCount > 0,
/// else ncclInvalidArgument) and gives no communicator.
void check_shrink_of_nothing_is_rejected(int flags) {
  Comm child;
  Comm parent;
  ready_world(parent, true);
  BOOST_TEST_MESSAGE("1 rank: no rank can be excluded; an empty exclusion list must be rejected");
  const ncclResult_t r = ncclCommShrink(parent.get(), nullptr, 0, child.out(), nullptr, flags);
  EXPECT(r == ncclInvalidArgument, "ncclCommShrink excluding nothing returned " << result_name(r));
  EXPECT(child.get() == nullptr, "ncclCommShrink excluding nothing gave a communicator");
  EXPECT(parent.abort() == ncclSuccess, "ncclCommAbort(parent)");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(shrink_default_renumbers_survivors_in_parent_order) {
  // [nccl.h:219-224] ncclCommShrink: "Ranks in excludeRanksList will be removed form the
  // existing communicator. Within the new communicator, ranks will be re-ordered to fill the
  // gap of removed ones." Only survivors call it. Rank 1 is excluded (a gap in the middle).
  if (g_size < 2) {
    check_shrink_of_nothing_is_rejected(NCCL_SHRINK_DEFAULT);
    return;
  }
  Comm child;
  Comm parent;
  ready_world(parent, true);
  std::vector<int> excluded = {1};
  const bool survivor = g_rank != 1;
  if (survivor) {
    const ncclResult_t r = ncclCommShrink(parent.get(), excluded.data(), static_cast<int>(excluded.size()), child.out(),
                                          nullptr, NCCL_SHRINK_DEFAULT);
    EXPECT(r == ncclSuccess, "ncclCommShrink(NCCL_SHRINK_DEFAULT) returned " << result_name(r));
    if (EXPECT(child.get() != nullptr, "ncclCommShrink gave a NULL communicator")) {
      const int expected_rank = g_rank > 1 ? g_rank - 1 : g_rank;
      int count = -1;
      int rank = -1;
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == g_size - 1,
             "shrunk count " << count << ", expected " << g_size - 1);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == expected_rank,
             "shrunk rank " << rank << ", expected " << expected_rank);
    }
  }
  require_everyone(g_local_ok, "ncclCommShrink");
  if (survivor) {
    const std::int64_t expected = std::int64_t{g_size} * (g_size - 1) / 2 - 1;
    sum_is(child.get(), g_rank, expected, "all-reduce of parent ranks over the survivors");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(shrunk)");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(parent.destroy() == ncclSuccess, "ncclCommDestroy(parent)");
}

BOOST_AUTO_TEST_CASE(shrink_abort_terminates_hung_parent_operations) {
  // [nccl.h:70] NCCL_SHRINK_ABORT: "First, terminate ongoing parent operations, and then shrink
  // the parent communicator". The last rank is excluded and never joins an all-reduce the
  // survivors started on the parent; the shrink must succeed and the survivors' streams come
  // free.
  if (g_size < 2) {
    check_shrink_of_nothing_is_rejected(NCCL_SHRINK_ABORT);
    return;
  }
  Stream stream;
  DeviceBuffer buffer(64 * sizeof(float));
  Comm child;
  Comm parent;
  ready_world(parent, true);
  std::vector<int> excluded = {g_size - 1};
  const bool survivor = g_rank != g_size - 1;
  if (survivor) {
    const ncclResult_t r =
        ncclAllReduce(buffer.get(), buffer.get(), 64, ncclFloat32, ncclSum, parent.get(), stream.get());
    EXPECT(r == ncclSuccess, "ncclAllReduce on the parent returned " << result_name(r));
    std::this_thread::sleep_for(milliseconds(50));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the all-reduce without the last rank completed");
    const ncclResult_t s = ncclCommShrink(parent.get(), excluded.data(), static_cast<int>(excluded.size()), child.out(),
                                          nullptr, NCCL_SHRINK_ABORT);
    EXPECT(s == ncclSuccess, "ncclCommShrink(NCCL_SHRINK_ABORT) returned " << result_name(s));
    if (EXPECT(child.get() != nullptr, "ncclCommShrink gave a NULL communicator")) {
      int count = -1;
      int rank = -1;
      EXPECT(ncclCommCount(child.get(), &count) == ncclSuccess && count == g_size - 1, "shrunk count " << count);
      EXPECT(ncclCommUserRank(child.get(), &rank) == ncclSuccess && rank == g_rank, "shrunk rank " << rank);
    }
    const cudaError_t e = wait_stream(stream.get());
    EXPECT(e != cudaErrorNotReady, "the parent's all-reduce still holds its stream after NCCL_SHRINK_ABORT");
  }
  require_everyone(g_local_ok, "ncclCommShrink(NCCL_SHRINK_ABORT)");
  if (survivor) {
    const std::int64_t expected = std::int64_t{g_size} * (g_size - 1) / 2 - (g_size - 1);
    sum_is(child.get(), g_rank, expected, "all-reduce over the survivors");
    EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(shrunk)");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(parent.abort() == ncclSuccess, "ncclCommAbort(parent)");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(finalize_then_destroy_releases_a_blocking_communicator) {
  // [nccl.h:183-193] ncclCommFinalize "flushes all issued communications ... then, calling
  // ncclCommDestroy can locally free the rest of the resources".
  Comm comm;
  ready_world(comm, true);
  sum_is(comm.get(), 1, g_size, "all-reduce before finalize");
  const ncclResult_t f = ncclCommFinalize(comm.get());
  EXPECT(f == ncclSuccess, "blocking ncclCommFinalize returned " << result_name(f));
  EXPECT(async_state(comm.get()) == ncclSuccess, "state after finalize " << result_name(async_state(comm.get())));
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy after finalize");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(non_blocking_finalize_is_polled_to_success_then_destroyed) {
  // [nccl.h:183-187] ncclCommFinalize "marks communicator state as ncclInProgress. The state
  // will change to ncclSuccess when the communicator is globally quiescent".
  Comm comm;
  ready_world(comm, false);
  sum_is(comm.get(), 1, g_size, "all-reduce before finalize");
  const ncclResult_t f = ncclCommFinalize(comm.get());
  EXPECT(f == ncclInProgress || f == ncclSuccess, "non-blocking ncclCommFinalize returned " << result_name(f));
  const ncclResult_t state = wait_comm(comm.get());
  EXPECT(state == ncclSuccess, "finalize ended in " << result_name(state));
  require_everyone(state == ncclSuccess, "non-blocking finalize");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy after finalize");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(destroy_without_finalize_releases_the_communicator) {
  // [nccl.h:191-192] ncclCommDestroy "Frees local resources associated with communicator object."
  Comm comm;
  ready_world(comm, true);
  sum_is(comm.get(), 1, g_size, "all-reduce before destroy");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  EXPECT(pcxemu_live_communicators() == comms_at_start, "live communicators " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(communicator_charges_its_device_memory_while_it_lives) {
  // [emu] PCX_EMU_COMM_MEMORY: bytes every live communicator charges to its device (default
  // 64M); [cudart] cudaMemGetInfo reports the device's free memory.
  const std::size_t charge = size_from_env("PCX_EMU_COMM_MEMORY", std::size_t{64} << 20U);
  std::size_t free0 = 0;
  std::size_t total = 0;
  EXPECT(cudaMemGetInfo(&free0, &total) == cudaSuccess, "cudaMemGetInfo");
  Comm child;
  Comm comm;
  ready_world(comm, true);
  std::size_t free1 = 0;
  EXPECT(cudaMemGetInfo(&free1, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free0 - free1 == charge, "a communicator charged " << static_cast<long long>(free0 - free1) << " bytes, "
                                                            << "PCX_EMU_COMM_MEMORY gives " << charge);
  const ncclResult_t r = ncclCommSplit(comm.get(), 0, g_rank, child.out(), nullptr);
  EXPECT(r == ncclSuccess, "split returned " << result_name(r));
  std::size_t free2 = 0;
  EXPECT(cudaMemGetInfo(&free2, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free0 - free2 == 2 * charge, "two communicators charged " << static_cast<long long>(free0 - free2));
  EXPECT(child.destroy() == ncclSuccess, "ncclCommDestroy(child)");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
  std::size_t free3 = 0;
  EXPECT(cudaMemGetInfo(&free3, &total) == cudaSuccess, "cudaMemGetInfo");
  EXPECT(free3 == free0, "after destroy free is " << free3 << ", was " << free0);
}

BOOST_AUTO_TEST_CASE(two_communicators_of_different_sizes_work_alternately) {
  // Independent communicators [usage, "Creating more communicators"]: operations on each are
  // matched only with the same communicator's operations. World and a half (first or second
  // half of the ranks), each on its own stream, enqueued alternately before any wait.
  Stream world_stream;
  Stream half_stream;
  constexpr int kRounds = 4;
  constexpr std::size_t count = 64;
  std::vector<std::unique_ptr<DeviceBuffer>> world_buffers;
  std::vector<std::unique_ptr<DeviceBuffer>> half_buffers;
  for (int i = 0; i < kRounds; ++i) {
    world_buffers.push_back(std::make_unique<DeviceBuffer>(count * sizeof(std::int32_t)));
    half_buffers.push_back(std::make_unique<DeviceBuffer>(count * sizeof(std::int32_t)));
  }
  Comm half;
  Comm world;
  ready_world(world, true);
  const int first_half = (g_size + 1) / 2;
  const int colour = g_rank < first_half ? 0 : 1;
  const ncclResult_t s = ncclCommSplit(world.get(), colour, g_rank, half.out(), nullptr);
  EXPECT(s == ncclSuccess, "split returned " << result_name(s));
  require_everyone(s == ncclSuccess && half.get() != nullptr, "splitting the half");
  auto value = [](int rank, int round, std::size_t i) { return (rank + 1) * (round + 1) + static_cast<int>(i); };
  bool enqueued = true;
  for (int round = 0; round < kRounds; ++round) {
    for (const bool on_world : {true, false}) {
      DeviceBuffer& b =
          on_world ? *world_buffers[static_cast<std::size_t>(round)] : *half_buffers[static_cast<std::size_t>(round)];
      std::vector<std::int32_t> host(count);
      for (std::size_t i = 0; i < count; ++i) host[i] = value(g_rank, round, i) * (on_world ? 1 : 10);
      std::vector<std::byte> bytes(b.size());
      std::memcpy(bytes.data(), host.data(), bytes.size());
      enqueued = EXPECT(b.ok() && upload(b.get(), bytes), "setup") && enqueued;
      const ncclResult_t r =
          ncclAllReduce(b.get(), b.get(), count, ncclInt32, ncclSum, on_world ? world.get() : half.get(),
                        on_world ? world_stream.get() : half_stream.get());
      enqueued =
          EXPECT(r == ncclSuccess, "round " << round << (on_world ? " world" : " half") << ": " << result_name(r)) &&
          enqueued;
    }
  }
  const cudaError_t we = wait_stream(world_stream.get());
  const cudaError_t he = wait_stream(half_stream.get());
  EXPECT(we == cudaSuccess && he == cudaSuccess, "streams ended in " << error_name(we) << ", " << error_name(he));
  require_everyone(enqueued && we == cudaSuccess && he == cudaSuccess, "alternating all-reduces");
  const int lo = colour == 0 ? 0 : first_half;
  const int hi = colour == 0 ? first_half : g_size;
  for (int round = 0; round < kRounds; ++round) {
    for (const bool on_world : {true, false}) {
      DeviceBuffer& b =
          on_world ? *world_buffers[static_cast<std::size_t>(round)] : *half_buffers[static_cast<std::size_t>(round)];
      const std::vector<std::byte> bytes = download(b.get(), b.size());
      std::vector<std::int32_t> got(count, -1);
      if (bytes.size() == b.size()) std::memcpy(got.data(), bytes.data(), bytes.size());
      bool right = true;
      for (std::size_t i = 0; i < count; ++i) {
        std::int32_t want = 0;
        for (int p = on_world ? 0 : lo; p < (on_world ? g_size : hi); ++p)
          want += value(p, round, i) * (on_world ? 1 : 10);
        right = right && got[i] == want;
      }
      EXPECT(right, "round " << round << (on_world ? " world" : " half") << " all-reduce is wrong");
    }
  }
  EXPECT(half.destroy() == ncclSuccess, "ncclCommDestroy(half)");
  EXPECT(world.destroy() == ncclSuccess, "ncclCommDestroy(world)");
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(collectives, EmulatorTest)

BOOST_AUTO_TEST_CASE(all_reduce_of_every_type_and_op_matches_host_reference) {
  // [nccl.h:406-417] ncclAllReduce "Reduces data arrays of length count in sendbuff using op
  // operation, and leaves identical copies of result on each recvbuff"; ops [nccl.h:282-286].
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kTypes, false);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(in_place_all_reduce_matches_host_reference) {
  // [nccl.h:412] "In-place operation will happen if sendbuff == recvbuff."
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kTypes, true);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(broadcast_copies_the_root_data_to_every_rank) {
  // [nccl.h:392-400] ncclBroadcast "Copies count values from root to all other devices ...
  // In-place operation will happen if sendbuff == recvbuff."
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_broadcast(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(all_gather_places_rank_i_data_at_offset_i) {
  // [nccl.h:437-446] ncclAllGather: "receiving data from rank i at offset i*sendcount"; in place
  // when sendbuff == recvbuff + rank * sendcount.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_gather(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(reduce_scatter_leaves_block_i_of_the_result_on_rank_i) {
  // [nccl.h:419-429] ncclReduceScatter: "recvbuff on rank i will contain the i-th block of the
  // result"; in place when recvbuff == sendbuff + rank * recvcount.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_reduce_scatter(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(send_recv_ring_in_a_group_passes_data_to_the_next_rank) {
  // [nccl.h:495-527] ncclSend/ncclRecv: "Rank peer needs to call ncclRecv with the same
  // datatype and the same count"; concurrent ones "must be fused within a ncclGroupStart/
  // ncclGroupEnd section". At 1 rank the ring sends to itself.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_ring(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(uneven_all_to_all_in_a_group_delivers_every_segment) {
  // [p2p] "All-to-all": one ncclSend and one ncclRecv per peer inside ncclGroupStart/End;
  // counts differ per pair (7, 14 or 21 elements), matched on both sides.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_uneven_all_to_all(comm.get(), stream.get(), kTypes);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(grouped_collectives_all_complete_with_right_results) {
  // [nccl.h:546-548] "Group semantics also allow to fuse multiple operations on the same
  // device"; [nccl.h:561-566] ncclGroupEnd starts them all.
  Stream stream;
  DeviceBuffer a(16 * sizeof(std::int32_t));
  DeviceBuffer b(16 * sizeof(std::int32_t));
  DeviceBuffer c(static_cast<std::size_t>(g_size) * 16 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, true);
  std::vector<std::int32_t> host(16, g_rank + 1);
  std::vector<std::byte> bytes(a.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(a.ok() && b.ok() && c.ok() && upload(a.get(), bytes) && upload(b.get(), bytes), "setup");
  ncclResult_t r = ncclInvalidUsage;
  if (ready) {
    r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclAllReduce(a.get(), a.get(), 16, ncclInt32, ncclSum, comm.get(), stream.get());
    if (r == ncclSuccess) r = ncclAllReduce(b.get(), b.get(), 16, ncclInt32, ncclMax, comm.get(), stream.get());
    if (r == ncclSuccess) r = ncclAllGather(a.get(), c.get(), 16, ncclInt32, comm.get(), stream.get());
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
  }
  finish_step(r, stream.get(), "group of two all-reduces and an all-gather");
  auto read = [](const DeviceBuffer& buffer) {
    std::vector<std::int32_t> values(buffer.size() / sizeof(std::int32_t), -1);
    const std::vector<std::byte> got = download(buffer.get(), buffer.size());
    if (got.size() == buffer.size()) std::memcpy(values.data(), got.data(), got.size());
    return values;
  };
  const std::int32_t sum = g_size * (g_size + 1) / 2;
  const std::vector<std::int32_t> sums = read(a);
  const std::vector<std::int32_t> maxima = read(b);
  EXPECT(std::all_of(sums.begin(), sums.end(), [&](std::int32_t v) { return v == sum; }), "grouped sum is wrong");
  EXPECT(std::all_of(maxima.begin(), maxima.end(), [&](std::int32_t v) { return v == g_size; }),
         "grouped max is wrong");
  // Operations in a group may run in any order: the all-gather of `a` sees either the
  // contributions or the sums, the same on all ranks; either is a consistent result.
  const std::vector<std::int32_t> gathered = read(c);
  bool consistent = true;
  for (std::size_t k = 0; k < gathered.size(); ++k) {
    const auto rank = static_cast<std::int32_t>(k / 16);
    consistent = consistent && (gathered[k] == rank + 1 || gathered[k] == sum);
  }
  EXPECT(consistent, "grouped all-gather is neither the contributions nor the sums");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(float8_types_are_reduced_and_copied) {
  // ncclFloat8e4m3 and ncclFloat8e5m2 are data types of NCCL 2.28 [nccl.h:310-311]; values
  // are chosen exact in both formats.
  Stream stream;
  Comm comm;
  ready_world(comm, true);
  check_all_reduce(comm.get(), stream.get(), kFloat8Types, false);
  check_broadcast(comm.get(), stream.get(), kFloat8Types);
  check_all_gather(comm.get(), stream.get(), kFloat8Types);
  check_reduce_scatter(comm.get(), stream.get(), kFloat8Types);
  check_ring(comm.get(), stream.get(), kFloat8Types);
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(large_all_reduce_is_exact) {
  // 2 MiB per rank, not a multiple of any chunk: larger than a staging chunk would be.
  constexpr std::size_t count = (std::size_t{1} << 19U) + 3;
  const TypeInfo& t = kTypes[7];  // float32
  Stream stream;
  DeviceBuffer buffer(count * sizeof(float));
  Comm comm;
  ready_world(comm, true);
  std::vector<double> mine(count);
  std::vector<double> want(count, 0.0);
  for (std::size_t i = 0; i < count; ++i) {
    mine[i] = static_cast<double>((static_cast<std::size_t>(g_rank) + i) % 5);
    for (int r = 0; r < g_size; ++r) want[i] += static_cast<double>((static_cast<std::size_t>(r) + i) % 5);
  }
  const bool ready = EXPECT(buffer.ok() && upload(buffer.get(), encode(t, mine)), "setup");
  const ncclResult_t r =
      ready ? ncclAllReduce(buffer.get(), buffer.get(), count, ncclFloat32, ncclSum, comm.get(), stream.get())
            : ncclInvalidUsage;
  finish_step(r, stream.get(), "2 MiB all-reduce");
  expect_values(t, download(buffer.get(), buffer.size()), want, "2 MiB all-reduce");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(non_blocking_communicator_runs_collectives_and_groups) {
  // [usage] non-blocking communicators: any call may return ncclInProgress; the operation is
  // enqueued once ncclCommGetAsyncError reports ncclSuccess.
  Stream stream;
  DeviceBuffer send(32 * sizeof(std::int32_t));
  DeviceBuffer recv(32 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, false);
  sum_is(comm.get(), g_rank + 1, std::int64_t{g_size} * (g_size + 1) / 2, "all-reduce on a non-blocking communicator");
  std::vector<std::int32_t> host(32, g_rank);
  std::vector<std::byte> bytes(send.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(send.ok() && recv.ok() && upload(send.get(), bytes), "setup");
  ncclResult_t r = ncclInvalidUsage;
  if (ready) {
    r = ncclGroupStart();
    if (r == ncclSuccess) r = ncclSend(send.get(), 32, ncclInt32, (g_rank + 1) % g_size, comm.get(), stream.get());
    if (r == ncclSuccess)
      r = ncclRecv(recv.get(), 32, ncclInt32, (g_rank + g_size - 1) % g_size, comm.get(), stream.get());
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
    if (r == ncclInProgress) r = wait_comm(comm.get());
  }
  finish_step(r, stream.get(), "ring on a non-blocking communicator");
  const std::vector<std::byte> got = download(recv.get(), recv.size());
  std::vector<std::int32_t> values(32, -1);
  if (got.size() == recv.size()) std::memcpy(values.data(), got.data(), got.size());
  const int previous = (g_rank + g_size - 1) % g_size;
  EXPECT(std::all_of(values.begin(), values.end(), [&](std::int32_t v) { return v == previous; }),
         "ring on a non-blocking communicator delivered the wrong data");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================
BOOST_FIXTURE_TEST_SUITE(asynchrony_and_faults, EmulatorTest)

BOOST_AUTO_TEST_CASE(collective_waits_on_its_stream_for_peers_that_have_not_called_it) {
  // [nccl.h:355] collectives "return when operations have been enqueued on the CUDA stream";
  // [cudart] cudaStreamQuery returns cudaErrorNotReady until all work in the stream is done.
  if (g_size < 2) {
    BOOST_TEST_MESSAGE("needs 2 ranks: with 1 rank no peer can be missing");
    return;
  }
  Stream stream;
  DeviceBuffer buffer(16 * sizeof(std::int32_t));
  Comm comm;
  ready_world(comm, true);
  std::vector<std::int32_t> host(16, g_rank + 1);
  std::vector<std::byte> bytes(buffer.size());
  std::memcpy(bytes.data(), host.data(), bytes.size());
  const bool ready = EXPECT(buffer.ok() && upload(buffer.get(), bytes), "setup");
  auto call = [&] {
    return ready ? ncclAllReduce(buffer.get(), buffer.get(), 16, ncclInt32, ncclSum, comm.get(), stream.get())
                 : ncclInvalidUsage;
  };
  ncclResult_t r = ncclNumResults;
  if (g_rank == 0) {
    r = call();
    EXPECT(r == ncclSuccess, "ncclAllReduce returned " << result_name(r));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the stream is complete before any peer called");
    std::this_thread::sleep_for(milliseconds(20));
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the stream completed while peers were absent");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (g_rank != 0) r = call();
  finish_step(r, stream.get(), "all-reduce after the peers arrived");
  const std::vector<std::byte> got = download(buffer.get(), buffer.size());
  std::vector<std::int32_t> values(16, -1);
  if (got.size() == buffer.size()) std::memcpy(values.data(), got.data(), got.size());
  const std::int32_t sum = g_size * (g_size + 1) / 2;
  EXPECT(std::all_of(values.begin(), values.end(), [&](std::int32_t v) { return v == sum; }), "wrong sum");
  EXPECT(comm.destroy() == ncclSuccess, "ncclCommDestroy");
}

BOOST_AUTO_TEST_CASE(absent_peer_keeps_the_stream_busy_until_abort) {
  // The last rank never calls the all-reduce: the others' streams must not complete.
  // [nccl.h:195-198] ncclCommAbort "Frees resources associated with communicator object and
  // aborts any operations that might still be running on the device": it returns, the
  // aborted operation no longer holds the stream, the communicator is gone. Using the handle
  // after abort is use of freed memory, not a documented error, so it is not tested.
  if (g_size < 2) {
    BOOST_TEST_MESSAGE("needs 2 ranks: with 1 rank no peer can be absent (op_hang covers 1 rank)");
    return;
  }
  Stream stream;
  DeviceBuffer buffer(16 * sizeof(float));
  Comm comm;
  ready_world(comm, true);
  const bool absent = g_rank == g_size - 1;
  if (!absent) {
    const ncclResult_t r =
        ncclAllReduce(buffer.get(), buffer.get(), 16, ncclFloat32, ncclSum, comm.get(), stream.get());
    EXPECT(r == ncclSuccess, "ncclAllReduce returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (!absent)
    EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the all-reduce completed without the last rank");
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = comm.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  if (!absent) {
    const cudaError_t e = wait_stream(stream.get());
    EXPECT(e != cudaErrorNotReady, "the aborted all-reduce still holds the stream");
  }
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(op_hang_fault_keeps_the_stream_busy_until_abort) {
  // [emu] op_hang:K: "the K-th operation (1-based; a group counts once) of rank R never
  // completes". Operation 1 is a group of two all-reduces and completes; operation 2 hangs on
  // the chosen rank. ncclCommAbort then ends it [nccl.h:195-198].
  const int chosen = g_size - 1;
  Stream stream;
  DeviceBuffer a(8 * sizeof(std::int32_t));
  DeviceBuffer b(8 * sizeof(std::int32_t));
  Comm comm;
  {
    FaultScope fault(g_rank == chosen, "op_hang:2");
    ready_world(comm, true);
  }
  const bool ready = EXPECT(a.ok() && b.ok(), "setup");
  ncclResult_t r = ready ? ncclGroupStart() : ncclInvalidUsage;
  if (r == ncclSuccess) r = ncclAllReduce(a.get(), a.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  if (r == ncclSuccess) r = ncclAllReduce(b.get(), b.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  if (ready) {
    const ncclResult_t end = ncclGroupEnd();
    if (r == ncclSuccess) r = end;
  }
  finish_step(r, stream.get(), "operation 1 (a group of two all-reduces) before the hang");
  r = ncclAllReduce(a.get(), a.get(), 8, ncclInt32, ncclSum, comm.get(), stream.get());
  EXPECT(r == ncclSuccess, "operation 2 returned " << result_name(r));
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen) EXPECT(cudaStreamQuery(stream.get()) == cudaErrorNotReady, "the hung operation 2 completed");
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t aborted = comm.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(aborted == ncclSuccess, "ncclCommAbort returned " << result_name(aborted));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  const cudaError_t e = wait_stream(stream.get());
  EXPECT(e != cudaErrorNotReady, "the aborted operation still holds the stream");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(op_error_fault_is_reported_by_comm_get_async_error) {
  // [emu] op_error:K@R: "the K-th operation of rank R fails with an asynchronous error
  // (ncclRemoteError)"; [nccl.h:248-250] ncclCommGetAsyncError "Checks whether the comm has
  // encountered any asynchronous errors"; [types] ncclRemoteError "A call failed possibly due
  // to a network error or a remote process exiting prematurely". The remedy is abort [usage].
  const int chosen = 0;
  Stream stream;
  DeviceBuffer buffer(8 * sizeof(float));
  Comm comm;
  {
    FaultScope fault(g_rank == chosen, "op_error:1@" + std::to_string(chosen));
    ready_world(comm, true);
  }
  const ncclResult_t r = ncclAllReduce(buffer.get(), buffer.get(), 8, ncclFloat32, ncclSum, comm.get(), stream.get());
  EXPECT(r == ncclSuccess, "the faulty operation returned " << result_name(r) << " instead of failing asynchronously");
  if (g_rank == chosen) {
    ncclResult_t state = ncclSuccess;
    const auto end = Clock::now() + kDeadline;
    do {
      state = async_state(comm.get());
      if (state != ncclSuccess && state != ncclInProgress) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    } while (Clock::now() < end);
    EXPECT(state != ncclSuccess && state != ncclInProgress,
           "ncclCommGetAsyncError still reports " << result_name(state));
    EXPECT(state == ncclRemoteError, "the asynchronous error is " << result_name(state) << ", not ncclRemoteError");
    const char* text = ncclGetLastError(comm.get());
    EXPECT(text != nullptr, "ncclGetLastError returned NULL after an error");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  EXPECT(comm.abort() == ncclSuccess, "ncclCommAbort");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
  const cudaError_t e = wait_stream(stream.get());
  EXPECT(e != cudaErrorNotReady, "after ncclCommAbort the failed operation still holds the stream");
  (void)cudaGetLastError();
}

BOOST_AUTO_TEST_CASE(init_hang_fault_stays_in_progress_until_every_rank_aborts) {
  // [emu] init_hang: the init of that rank never completes; [usage] a non-blocking init that
  // does not finish in time is ended with ncclCommAbort, which frees it [nccl.h:195-198].
  const int chosen = g_size - 1;
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(false);
  Comm comm;
  ncclResult_t r = ncclNumResults;
  {
    FaultScope fault(g_rank == chosen, "init_hang");
    r = ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
  }
  EXPECT(comm.get() != nullptr, "*comm is NULL after a non-blocking init");
  if (g_rank == chosen) {
    EXPECT(r == ncclInProgress, "the hanging init returned " << result_name(r));
  } else {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "non-blocking init returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen && comm.get() != nullptr) {
    const ncclResult_t state = async_state(comm.get());
    EXPECT(state == ncclInProgress,
           "the hanging init reports " << result_name(state) << " after " << kHangWindow.count() << " ms");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = comm.get() != nullptr ? comm.abort() : ncclSuccess;
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_CASE(split_hang_fault_stays_in_progress_until_every_rank_aborts) {
  // [emu] split_hang: ncclCommSplit called by that parent rank never completes. [init.cc] the
  // child stays NULL until the split completes; [usage] the non-blocking parent reports
  // ncclInProgress meanwhile; aborting the parent frees it and what it was creating.
  const int chosen = g_size - 1;
  Comm child;
  Comm parent;
  ncclResult_t r = ncclNumResults;
  {
    // Set around the parent's creation and the split: whichever reads it [emu].
    FaultScope fault(g_rank == chosen, "split_hang");
    ready_world(parent, false);
    r = ncclCommSplit(parent.get(), 0, g_rank, child.out(), nullptr);
  }
  if (g_rank == chosen) {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "the hanging split returned " << result_name(r));
  } else {
    EXPECT(r == ncclInProgress || r == ncclSuccess, "split returned " << result_name(r));
  }
  std::this_thread::sleep_for(kHangWindow);
  if (g_rank == chosen) {
    EXPECT(child.get() == nullptr, "the hanging split published *newcomm");
    const ncclResult_t state = async_state(parent.get());
    EXPECT(state == ncclInProgress,
           "the parent reports " << result_name(state) << " after " << kHangWindow.count() << " ms of a hanging split");
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const auto start = Clock::now();
  const ncclResult_t a = parent.abort();
  const auto took = std::chrono::duration_cast<milliseconds>(Clock::now() - start);
  EXPECT(a == ncclSuccess, "ncclCommAbort(parent) returned " << result_name(a));
  EXPECT(took < kDeadline, "ncclCommAbort took " << took.count() << " ms");
  if (g_rank == chosen) EXPECT(child.get() == nullptr, "*newcomm was published after the parent was aborted");
  if (child.get() != nullptr) EXPECT(child.abort() == ncclSuccess, "ncclCommAbort(child)");
  EXPECT(pcxemu_live_communicators() == comms_at_start,
         "live communicators after abort " << pcxemu_live_communicators());
}

BOOST_AUTO_TEST_SUITE_END()

// =======================================================================================

int main(int argc, char** argv) {
  // Read by the emulator once, at its first call [emu]: set before any CUDA or NCCL call.
  setenv("PCX_EMU_LAUNCH_DELAY_US", kLaunchDelayUs, 0);
  unsetenv("PCX_EMU_FAULT");
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  if (cudaGetDeviceCount(&g_devices) != cudaSuccess) g_devices = 0;
  int rc = 0;
  {
    Watchdog watchdog;
    g_watchdog = &watchdog;
#ifdef BOOST_TEST_DYN_LINK
    rc = boost::unit_test::unit_test_main(&init_unit_test, argc, argv);
#else
    rc = boost::unit_test::unit_test_main(&init_unit_test_suite, argc, argv);
#endif
    g_watchdog = nullptr;
  }
  // A rank that failed makes the job fail, whichever rank mpiexec reports.
  int worst = rc;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
