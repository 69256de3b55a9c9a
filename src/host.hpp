#pragma once
// Which host this process runs on, shared by the backends that tell nodes apart by host.

#include <cstdint>
#include <vector>

#include "pcx/communicator.hpp"

namespace pcx::detail {

/// A hash of the host's identity as NCCL tells hosts apart (src/misc/utils.cc
/// getHostHash): NCCL_HOSTID if set, else the host name followed by the boot id, so that
/// containers with one host name on several machines differ. FNV-1a of that text.
[[nodiscard]] std::uint64_t host_hash();

/// The host of every member of @p comm, named by its lowest member: one all-gather of
/// host_hash() over @p comm, which needs nothing of MPI.
[[nodiscard]] std::vector<int> nodes_by_host(const Communicator& comm);

}  // namespace pcx::detail
