#pragma once
// Tests of the host emulator of the CUDA runtime and NCCL (libpcx_emulator.so), written from
// NCCL's and CUDA's documented behaviour, not from the emulator's code: every expectation
// cites the header line or documentation page it comes from.
//
// Sources cited in the tests:
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
//
// One Boost.Test module, emulator_test, made of:
//   emulator_test_main.cpp      the module and main(): MPI, the watchdog, the launch delay
//   emulator_test_support.hpp   this header: the helpers every test uses (declared here,
//   emulator_test_support.cpp   defined there), the EXPECT macro and the per-test fixture
//   cuda_runtime_test.cpp       suite cuda_runtime
//   communicator_test.cpp       suites nccl_queries and communicator_lifecycle
//   collectives_test.cpp        suite collectives
//   faults_test.cpp             suite asynchrony_and_faults

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <boost/test/unit_test.hpp>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "result_name.hpp"

namespace emutest {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

/// How long a step that must finish may take; reached only when it fails.
inline constexpr milliseconds kDeadline{5000};
/// How long something that must not finish is watched.
inline constexpr milliseconds kHangWindow{200};
/// A test that runs longer than this has hung inside a call: the watchdog ends the job.
inline constexpr std::chrono::seconds kTestLimit{25};
/// Non-blocking calls stay ncclInProgress this long unless the environment says otherwise
/// (PCX_EMU_LAUNCH_DELAY_US [emu]): long enough that a check right after the call sees
/// ncclInProgress even at 8 ranks on 2 cores, short enough to keep the module fast.
inline constexpr const char* kLaunchDelayUs = "50000";

// Set by main() before the tests run; defined in emulator_test_support.cpp.
extern int g_rank;
extern int g_size;
extern int g_devices;
/// This rank's verdict for the current test; reset by the fixture.
extern bool g_local_ok;

int my_device();

std::string error_name(cudaError_t e);

/// True on every rank when @p ok is true on every rank (all-reduce MIN of the verdicts).
bool everyone(bool ok);

/// Fails the test on every rank together when @p ok is false on any rank.
void require_everyone(bool ok, const std::string& what);

}  // namespace emutest

/// A local check: reports a failure with the rank, records it in this rank's verdict, and
/// yields the condition. It never stops the test, so it cannot leave peers waiting.
#define EXPECT(cond, msg)                                                         \
  [&]() -> bool {                                                                 \
    const bool expect_ok_ = static_cast<bool>(cond);                              \
    BOOST_CHECK_MESSAGE(expect_ok_, "rank " << ::emutest::g_rank << ": " << msg); \
    if (!expect_ok_) ::emutest::g_local_ok = false;                               \
    return expect_ok_;                                                            \
  }()

namespace emutest {

// ---------------------------------------------------------------------------------------
// Watchdog and per-test fixture

class Watchdog {
 public:
  Watchdog();
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  void arm(std::string what);
  void disarm();

 private:
  void run();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::string what_;
  Clock::time_point deadline_{};
  bool armed_ = false;
  bool stop_ = false;
  std::thread thread_;
};

/// The watchdog of the running module (set by main()), or null.
extern Watchdog* g_watchdog;

/// Every test: starts together on every rank, on this rank's device, with a clean verdict
/// and a watchdog; ends with no communicator, allocation or stream left over.
struct EmulatorTest {
  EmulatorTest();
  ~EmulatorTest();
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
  ~Comm();
  /// Where NCCL writes the handle; stays valid as long as this object (a non-blocking split
  /// writes it from the background).
  ncclComm_t* out() { return &handle_; }
  [[nodiscard]] ncclComm_t get() const;
  ncclResult_t destroy();
  ncclResult_t abort();

 private:
  ncclComm_t take();
  ncclComm_t handle_ = nullptr;
};

class Stream {
 public:
  Stream();
  ~Stream();
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
  explicit DeviceBuffer(std::size_t bytes);
  ~DeviceBuffer();
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

bool upload(void* device, const std::vector<std::byte>& host);

std::vector<std::byte> download(const void* device, std::size_t bytes);

/// Polls the stream until it is no longer cudaErrorNotReady or the limit passes; the last answer.
cudaError_t wait_stream(cudaStream_t stream, milliseconds limit = kDeadline);

/// Polls ncclCommGetAsyncError until the state is no longer ncclInProgress or the limit
/// passes; the last state (or the query's own error).
ncclResult_t wait_comm(ncclComm_t comm, milliseconds limit = kDeadline);

/// The asynchronous state of @p comm right now.
ncclResult_t async_state(ncclComm_t comm);

ncclConfig_t make_config(bool blocking);

/// An id made by @p root and sent to every rank.
ncclUniqueId shared_id(int root = 0);

/// Every rank calls ncclCommInitRankConfig over all ranks; the call's result.
ncclResult_t init_world(Comm& comm, bool blocking);

/// A ready communicator over all ranks, or the test stops on every rank.
void ready_world(Comm& comm, bool blocking);

/// Sets PCX_EMU_FAULT on this rank only, for the creation of one communicator [emu].
class FaultScope {
 public:
  FaultScope(bool here, const std::string& spec);
  ~FaultScope();
  FaultScope(const FaultScope&) = delete;
  FaultScope& operator=(const FaultScope&) = delete;

 private:
  bool here_;
};

/// Bytes from an emulator size variable ("64M"; K, M, G are powers of 1024) [emu].
std::size_t size_from_env(const char* name, std::size_t fallback);

/// Sum with ncclSum of one int64 per rank over @p comm (blocking or not); checks the total.
bool sum_is(ncclComm_t comm, std::int64_t contribution, std::int64_t expected, const std::string& what);

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
inline constexpr TypeInfo kTypes[] = {
    {"int8", 1, ncclInt8, Kind::signed_int, 0, 0},       {"uint8", 1, ncclUint8, Kind::unsigned_int, 0, 0},
    {"int32", 4, ncclInt32, Kind::signed_int, 0, 0},     {"uint32", 4, ncclUint32, Kind::unsigned_int, 0, 0},
    {"int64", 8, ncclInt64, Kind::signed_int, 0, 0},     {"uint64", 8, ncclUint64, Kind::unsigned_int, 0, 0},
    {"float16", 2, ncclFloat16, Kind::floating, 5, 10},  {"float32", 4, ncclFloat32, Kind::floating, 8, 23},
    {"float64", 8, ncclFloat64, Kind::floating, 11, 52}, {"bfloat16", 2, ncclBfloat16, Kind::floating, 8, 7},
};
inline constexpr TypeInfo kFloat8Types[] = {
    {"float8e4m3", 1, ncclFloat8e4m3, Kind::floating, 4, 3},
    {"float8e5m2", 1, ncclFloat8e5m2, Kind::floating, 5, 2},
};

bool is_float8(const TypeInfo& t);

/// Bits of @p v in a float format with the given field widths (IEEE layout, bias
/// 2^(e-1)-1); @p v must be exactly representable.
std::uint32_t encode_small_float(double v, int exponent_bits, int mantissa_bits);

double decode_small_float(std::uint32_t bits, int exponent_bits, int mantissa_bits);

void encode_one(const TypeInfo& t, double v, std::byte* out);

double decode_one(const TypeInfo& t, const std::byte* in);

std::vector<std::byte> encode(const TypeInfo& t, const std::vector<double>& values);

std::vector<double> decode(const TypeInfo& t, const std::vector<std::byte>& bytes);

/// Checks @p got (device bytes) against @p want element by element; reports the first
/// difference and how many there are.
bool expect_values(const TypeInfo& t, const std::vector<std::byte>& got_bytes, const std::vector<double>& want,
                   const std::string& what);

// Input values of each reduction, chosen so that every partial result is exact in every
// type (half, bfloat16 and float8 included) whatever the order of reduction, and that
// no integer type overflows at 8 ranks.

double unsigned_step(const TypeInfo& t);

double reduce_input(ncclRedOp_t op, const TypeInfo& t, int rank, std::size_t i);

double reduce_reference(ncclRedOp_t op, const TypeInfo& t, std::size_t i, int ranks);

/// Values for the copying collectives: small, distinct per (source, index), exact in every type.
double copy_value(const TypeInfo& t, int source, std::size_t i);

struct OpInfo {
  ncclRedOp_t op;
  const char* name;
};
// Every built-in reduction [nccl.h:282-286].
inline constexpr OpInfo kOps[] = {
    {ncclSum, "sum"}, {ncclProd, "prod"}, {ncclMax, "max"}, {ncclMin, "min"}, {ncclAvg, "avg"}};

/// Enqueues nothing; waits for @p stream after a call returned @p r and requires every rank
/// to have got that far.
void finish_step(ncclResult_t r, cudaStream_t stream, const std::string& what);

// ---------------------------------------------------------------------------------------
// Collective checks, each over a list of element types

void check_all_reduce(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types, bool in_place);

void check_broadcast(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types);

void check_all_gather(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types);

void check_reduce_scatter(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types);

void check_ring(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types);

/// Elements rank @p source sends to rank @p destination in the uneven all-to-all.
std::size_t a2a_count(int source, int destination);

void check_uneven_all_to_all(ncclComm_t comm, cudaStream_t stream, std::span<const TypeInfo> types);

}  // namespace emutest
