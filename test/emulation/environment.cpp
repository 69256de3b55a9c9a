// The emulator's settings, read from the environment once (see pcx_emulator.h).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <algorithm>

#include "emulator.hpp"

namespace pcxemu {
namespace {

long long parse_count(const char* text) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  return end == text || *end != '\0' || errno != 0 || value < 0 ? -1 : value;
}

// A bad value is reported and replaced by the default rather than guessed at.
long long read(const char* name, long long fallback, long long smallest, long long largest, bool bytes) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  const long long value = bytes ? parse_bytes(text) : parse_count(text);
  if (value < smallest || value > largest) {
    std::fprintf(stderr, "pcx emulator: %s='%s' is not %s from %lld to %lld; using %lld\n", name, text,
                 bytes ? "a byte count (digits, then K, M or G)" : "a whole number", smallest, largest, fallback);
    return fallback;
  }
  return value;
}

// CUDA_VISIBLE_DEVICES as CUDA reads it: a comma-separated list of the machine's device
// indices, of which those before the first invalid or repeated entry are visible, in
// that order (CUDA C Programming Guide, "CUDA Environment Variables"). Unset: all.
std::vector<int> visible_devices(int machine) {
  std::vector<int> visible;
  const char* text = std::getenv("CUDA_VISIBLE_DEVICES");
  if (text == nullptr) {
    for (int d = 0; d < machine; ++d) visible.push_back(d);
    return visible;
  }
  std::string_view rest = text;
  while (!rest.empty()) {
    const std::string item(rest.substr(0, rest.find(',')));
    rest.remove_prefix(std::min(rest.size(), item.size() + 1));
    const long long d = parse_count(item.c_str());
    if (d < 0 || d >= machine || std::find(visible.begin(), visible.end(), d) != visible.end()) break;
    visible.push_back(static_cast<int>(d));
  }
  return visible;
}

// NCCL's host identity (src/misc/utils.cc, getHostHashOnce): NCCL_HOSTID when set,
// otherwise the host name followed by /proc/sys/kernel/random/boot_id. Ranks with the same
// identity are on one host for NCCL, whatever their network namespace.
std::uint64_t host_hash() {
  std::string id;
  if (const char* configured = std::getenv("NCCL_HOSTID"); configured != nullptr) {
    id = configured;
  } else {
    char name[256] = {};
    if (gethostname(name, sizeof(name) - 1) == 0) id = name;
    if (std::FILE* boot = std::fopen("/proc/sys/kernel/random/boot_id", "r")) {
      char boot_id[64] = {};
      if (std::fscanf(boot, "%63s", boot_id) == 1) id += boot_id;
      std::fclose(boot);
    }
  }
  std::uint64_t hash = 14695981039346656037ULL;  // FNV-1a; only equality matters
  for (const char c : id) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return hash;
}

}  // namespace

long long parse_bytes(const char* text) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  if (end == text || errno != 0 || value < 0) return -1;
  int shift = 0;
  switch (*end) {
    case '\0': break;
    case 'K': shift = 10; break;
    case 'M': shift = 20; break;
    case 'G': shift = 30; break;
    default: return -1;
  }
  if (shift != 0 && end[1] != '\0') return -1;
  if (value > (0x7fffffffffffffffLL >> shift)) return -1;
  return value << shift;
}

const Settings& settings() {
  static const Settings values = [] {
    Settings s;
    constexpr long long kTerabyte = 1LL << 40;
    const int machine = static_cast<int>(read("PCX_EMU_DEVICES", s.devices, 0, 1024, false));
    s.visible = visible_devices(machine);
    s.devices = static_cast<int>(s.visible.size());
    s.device_memory = static_cast<std::size_t>(
        read("PCX_EMU_DEVICE_MEMORY", static_cast<long long>(s.device_memory), 1, kTerabyte, true));
    s.comm_memory = static_cast<std::size_t>(
        read("PCX_EMU_COMM_MEMORY", static_cast<long long>(s.comm_memory), 0, kTerabyte, true));
    s.launch_delay =
        std::chrono::microseconds(read("PCX_EMU_LAUNCH_DELAY_US", s.launch_delay.count(), 0, 60'000'000, false));
    s.split_in_progress = read("PCX_EMU_SPLIT_IN_PROGRESS", 0, 0, 1, false) == 1;
    s.host = host_hash();
    return s;
  }();
  return values;
}

void Backoff::pause() {
  std::this_thread::sleep_for(pause_);
  pause_ = std::min(pause_ * 2, std::chrono::microseconds(1000));
}

}  // namespace pcxemu
