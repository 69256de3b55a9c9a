#include "host.hpp"

#include <unistd.h>

#include <algorithm>
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

std::vector<int> nodes_by_host(const Communicator& comm) {
  const std::array<std::uint64_t, 1> mine = {host_hash()};
  std::vector<std::uint64_t> hosts(static_cast<std::size_t>(comm.size()));
  comm.all_gather(mine, hosts);
  std::vector<int> nodes(hosts.size());
  for (std::size_t r = 0; r < hosts.size(); ++r) {
    nodes[r] = static_cast<int>(std::ranges::find(hosts, hosts[r]) - hosts.begin());
  }
  return nodes;
}

}  // namespace pcx::detail
