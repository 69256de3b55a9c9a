// Definitions of the helpers declared in emulator_test_support.hpp (see there for what the
// tests check and the sources they cite).

#include "emulator_test_support.hpp"

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "pcx_emulator.h"

namespace emutest {

int g_rank = 0;
int g_size = 1;
int g_devices = 0;
bool g_local_ok = true;

int my_device() { return g_devices > 0 ? g_rank % g_devices : 0; }

std::string error_name(cudaError_t e) { return cudaGetErrorName(e) != nullptr ? cudaGetErrorName(e) : "?"; }

bool everyone(bool ok) {
  int mine = ok ? 1 : 0;
  int all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

void require_everyone(bool ok, const std::string& what) {
  BOOST_REQUIRE_MESSAGE(everyone(ok), "rank " << g_rank << ": " << what << " failed on at least one rank");
}

// ---------------------------------------------------------------------------------------
// Watchdog and per-test fixture

Watchdog::Watchdog() : thread_([this] { run(); }) {}

Watchdog::~Watchdog() {
  {
    std::lock_guard lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  thread_.join();
}

void Watchdog::arm(std::string what) {
  std::lock_guard lock(mutex_);
  what_ = std::move(what);
  deadline_ = Clock::now() + kTestLimit;
  armed_ = true;
  wake_.notify_all();
}

void Watchdog::disarm() {
  std::lock_guard lock(mutex_);
  armed_ = false;
  wake_.notify_all();
}

void Watchdog::run() {
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

Watchdog* g_watchdog = nullptr;

EmulatorTest::EmulatorTest() {
  g_local_ok = true;
  if (g_watchdog != nullptr) g_watchdog->arm(boost::unit_test::framework::current_test_case().p_name.get());
  MPI_Barrier(MPI_COMM_WORLD);
  (void)cudaSetDevice(my_device());
  (void)cudaGetLastError();
  comms_at_start = pcxemu_live_communicators();
  allocations_at_start = pcxemu_live_allocations();
  streams_at_start = pcxemu_live_streams();
}

EmulatorTest::~EmulatorTest() {
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

// ---------------------------------------------------------------------------------------
// Owners of emulated resources

Comm::~Comm() {
  if (const ncclComm_t h = get(); h != nullptr) (void)ncclCommAbort(h);
}

ncclComm_t Comm::get() const { return std::atomic_ref<ncclComm_t>(const_cast<ncclComm_t&>(handle_)).load(); }

ncclResult_t Comm::destroy() { return ncclCommDestroy(take()); }

ncclResult_t Comm::abort() { return ncclCommAbort(take()); }

ncclComm_t Comm::take() {
  const ncclComm_t h = get();
  std::atomic_ref<ncclComm_t>(handle_).store(nullptr);
  return h;
}

Stream::Stream() { created_ = cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking); }

Stream::~Stream() {
  if (created_ == cudaSuccess) (void)cudaStreamDestroy(stream_);
}

DeviceBuffer::DeviceBuffer(std::size_t bytes) : bytes_(bytes) {
  status_ = cudaMalloc(&pointer_, std::max<std::size_t>(bytes, 1));
}

DeviceBuffer::~DeviceBuffer() {
  if (status_ == cudaSuccess) (void)cudaFree(pointer_);
}

bool upload(void* device, const std::vector<std::byte>& host) {
  return cudaMemcpy(device, host.data(), host.size(), cudaMemcpyHostToDevice) == cudaSuccess;
}

std::vector<std::byte> download(const void* device, std::size_t bytes) {
  std::vector<std::byte> host(bytes);
  if (cudaMemcpy(host.data(), device, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) host.clear();
  return host;
}

cudaError_t wait_stream(cudaStream_t stream, milliseconds limit) {
  const auto end = Clock::now() + limit;
  for (;;) {
    const cudaError_t e = cudaStreamQuery(stream);
    if (e != cudaErrorNotReady || Clock::now() >= end) return e;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

ncclResult_t wait_comm(ncclComm_t comm, milliseconds limit) {
  const auto end = Clock::now() + limit;
  for (;;) {
    ncclResult_t state = ncclInProgress;
    const ncclResult_t call = ncclCommGetAsyncError(comm, &state);
    if (call != ncclSuccess) return call;
    if (state != ncclInProgress || Clock::now() >= end) return state;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

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

ncclUniqueId shared_id(int root) {
  ncclUniqueId id{};
  int ok = 1;
  if (g_rank == root) ok = ncclGetUniqueId(&id) == ncclSuccess ? 1 : 0;
  MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, root, MPI_COMM_WORLD);
  MPI_Bcast(&ok, 1, MPI_INT, root, MPI_COMM_WORLD);
  BOOST_REQUIRE_MESSAGE(ok == 1, "ncclGetUniqueId failed on rank " << root);
  return id;
}

ncclResult_t init_world(Comm& comm, bool blocking) {
  const ncclUniqueId id = shared_id();
  ncclConfig_t config = make_config(blocking);
  return ncclCommInitRankConfig(comm.out(), g_size, id, g_rank, &config);
}

void ready_world(Comm& comm, bool blocking) {
  ncclResult_t r = init_world(comm, blocking);
  if (!blocking && r == ncclInProgress && comm.get() != nullptr) r = wait_comm(comm.get());
  EXPECT(r == ncclSuccess, "world communicator (blocking=" << blocking << ") ended in " << result_name(r));
  require_everyone(r == ncclSuccess && comm.get() != nullptr, "creating the world communicator");
}

FaultScope::FaultScope(bool here, const std::string& spec) : here_(here) {
  if (here_) setenv("PCX_EMU_FAULT", spec.c_str(), 1);
}

FaultScope::~FaultScope() {
  if (here_) unsetenv("PCX_EMU_FAULT");
}

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

bool is_float8(const TypeInfo& t) { return t.kind == Kind::floating && t.size == 1; }

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

double copy_value(const TypeInfo& t, int source, std::size_t i) {
  const auto v = static_cast<double>((static_cast<std::size_t>(source) * 5 + i) % 8);
  return t.kind == Kind::unsigned_int ? v : v - 4.0;
}

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

}  // namespace emutest
