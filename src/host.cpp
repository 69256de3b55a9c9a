#include "host.hpp"

#include <unistd.h>

#include <array>
#include <cstdlib>
#include <fstream>
#include <string>

namespace pcx::detail {

std::uint64_t host_hash() {
  std::string id;
  if (const char* configured = std::getenv("NCCL_HOSTID"); configured != nullptr) {
    id = configured;
  } else {
    std::array<char, 256> name{};
    if (gethostname(name.data(), name.size() - 1) == 0) id = name.data();
    std::ifstream boot("/proc/sys/kernel/random/boot_id");
    std::string boot_id;
    if (boot >> boot_id) id += boot_id;
  }
  std::uint64_t hash = 14695981039346656037ULL;  // wraps by design
  for (const char c : id) hash = (hash ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return hash;
}

}  // namespace pcx::detail
