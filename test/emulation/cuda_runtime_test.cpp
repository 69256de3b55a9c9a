// Emulator tests, suite cuda_runtime: the emulated CUDA runtime (devices, memory, copies,
// streams) and the test helpers' own encodings. The sources cited ([cudart], [emu])
// and how the module runs are explained in emulator_test_support.hpp.

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <algorithm>
#include <boost/test/unit_test.hpp>
#include <cstddef>
#include <cstdlib>
#include <thread>
#include <vector>

#include "emulator_test_support.hpp"
#include "pcx_emulator.h"

using namespace emutest;  // NOLINT(google-build-using-namespace): the helpers every test uses

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
