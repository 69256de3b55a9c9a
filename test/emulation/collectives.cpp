// NCCL's collectives and point-to-point operations, on the host. Calls are checked as
// src/enqueue.cc:ncclEnqueueCheck and src/misc/argcheck.cc:ArgsCheck check them, recorded
// into the thread's group (a call outside a group is a group of one), and launched at the
// outermost ncclGroupEnd as one task per communicator and stream. The task runs on the
// stream's thread: it publishes this rank's data in shared memory, then waits for the
// peers' and writes its result, so it completes later, and never if a peer never comes.
#include <algorithm>
#include <cstring>

#include "nccl_internal.hpp"

namespace pcxemu {
namespace {

bool is_collective(Kind kind) { return kind != Kind::send && kind != Kind::recv; }

// Bytes a rank contributes, or 0 when count * ranks * element size does not fit.
std::size_t bytes_of(const Op& op, int nranks) {
  const std::size_t n = op.kind == Kind::reduce_scatter ? static_cast<std::size_t>(nranks) : 1;
  const std::size_t element = type_size(op.type);
  if (op.count > SIZE_MAX / n / std::max<std::size_t>(element, 1)) return 0;
  return op.count * n * element;
}

// Bytes a rank writes to its receive buffer.
std::size_t result_bytes(const Op& op, int nranks) {
  const std::size_t block = op.count * type_size(op.type);
  return op.kind == Kind::all_gather ? block * static_cast<std::size_t>(nranks) : block;
}

std::string name_of(const ncclComm* comm, const Op& op, int publisher) {
  return segment_name(comm->pids[static_cast<std::size_t>(publisher)], comm->id,
                      op.tag + "." + std::to_string(publisher));
}

// What this rank publishes: before any waiting, so that no order of the operations of a
// group can deadlock.
bool contribute(const ncclComm* comm, const Op& op, std::string& error) {
  const int n = comm->nranks;
  const std::size_t bytes = bytes_of(op, n);
  switch (op.kind) {
    case Kind::recv: return true;
    case Kind::send: return publish(name_of(comm, op, comm->rank), op.send, bytes, 1, error);
    case Kind::broadcast:
      return comm->rank != op.peer || publish(name_of(comm, op, comm->rank), op.send, bytes, n - 1, error);
    case Kind::reduce:
      return comm->rank == op.peer || publish(name_of(comm, op, comm->rank), op.send, bytes, 1, error);
    default: return publish(name_of(comm, op, comm->rank), op.send, bytes, n - 1, error);
  }
}

// Reads the peers' contributions and writes this rank's result.
bool complete(const ncclComm* comm, const Op& op, std::string& error) {
  const int n = comm->nranks;
  const std::size_t bytes = bytes_of(op, n);
  std::vector<std::byte> result;
  // Calls `use` with rank r's contribution; ranks that disagree on the size are an error,
  // not a read past the end.
  const auto from = [&](int r, auto&& use) {
    if (r == comm->rank && op.kind != Kind::recv) {  // a receive from itself reads its own send
      use(static_cast<const std::byte*>(op.send));
      return true;
    }
    bool sized = true;
    const auto read = [&](const std::byte* data, std::size_t size) {
      sized = size == bytes;
      if (sized) use(data);
    };
    if (!consume(name_of(comm, op, r), comm->aborted, read, error)) return false;
    if (!sized) error = "rank " + std::to_string(r) + " sent a different number of bytes for the same operation";
    return sized;
  };
  switch (op.kind) {
    case Kind::send: return true;
    case Kind::recv:
      return from(op.peer, [&](const std::byte* data) { std::memcpy(op.recv, data, bytes); });
    case Kind::broadcast:
      return from(op.peer, [&](const std::byte* data) { std::memmove(op.recv, data, bytes); });
    case Kind::all_gather:
      result.resize(bytes * static_cast<std::size_t>(n));
      for (int r = 0; r < n; ++r) {
        if (!from(r, [&](const std::byte* data) { std::memcpy(&result[bytes * static_cast<std::size_t>(r)], data, bytes); }))
          return false;
      }
      break;
    case Kind::all_reduce:
    case Kind::reduce:
    case Kind::reduce_scatter: {
      if (op.kind == Kind::reduce && comm->rank != op.peer) return true;
      // Every rank reduces in rank order, so every rank gets the same bits. ncclAvg:
      // floating-point inputs are scaled by 1/n first, integer sums divided after.
      const std::size_t block = op.count * type_size(op.type);
      const std::size_t offset = op.kind == Kind::reduce_scatter ? block * static_cast<std::size_t>(comm->rank) : 0;
      const bool average = op.op == ncclAvg;
      const ncclRedOp_t combine = average ? ncclSum : op.op;
      std::vector<std::byte> operand(block);
      for (int r = 0; r < n; ++r) {
        const bool ok = from(r, [&](const std::byte* data) {
          std::memcpy(operand.data(), data + offset, block);
          if (average) premultiply(operand.data(), op.count, op.type, n);
          if (result.empty()) {
            result = operand;
          } else {
            reduce(result.data(), operand.data(), op.count, op.type, combine);
          }
        });
        if (!ok) return false;
      }
      if (average) divide(result.data(), op.count, op.type, n);
      break;
    }
  }
  if (!result.empty()) std::memcpy(op.recv, result.data(), result.size());
  return true;
}

// A kernel that touches memory its device cannot reach faults, and the fault ends the
// process's CUDA context: a sticky cudaErrorIllegalAddress.
bool reachable(const ncclComm* comm, const Op& op) {
  const bool root = comm->rank == op.peer;
  const bool reads = op.kind != Kind::recv && (op.kind != Kind::broadcast || root);
  const bool writes = op.kind != Kind::send && (op.kind != Kind::reduce || root);
  const std::size_t in = bytes_of(op, comm->nranks);
  const std::size_t out = result_bytes(op, comm->nranks);
  return (!reads || in == 0 || device_accessible(op.send, in, comm->device)) &&
         (!writes || out == 0 || device_accessible(op.recv, out, comm->device));
}

void execute(ncclComm* comm, const std::vector<Op>& ops, std::uint64_t number) {
  if (comm->faults.find("op_hang", comm->rank) == number) return hang(comm);
  if (!std::all_of(ops.begin(), ops.end(), [&](const Op& op) { return reachable(comm, op); })) {
    return set_sticky_error(cudaErrorIllegalAddress);
  }
  std::string error;
  bool ok = std::all_of(ops.begin(), ops.end(), [&](const Op& op) { return contribute(comm, op, error); });
  if (ok && comm->faults.find("op_error", comm->rank) == number) {
    return set_failure(comm, ncclRemoteError,
                       "operation " + std::to_string(number) + " failed (PCX_EMU_FAULT op_error)");
  }
  ok = ok && std::all_of(ops.begin(), ops.end(), [&](const Op& op) { return complete(comm, op, error); });
  if (!ok && !comm->aborted.load()) set_failure(comm, ncclSystemError, error);
}

// src/enqueue.cc:ncclEnqueueCheck: an operation on a revoked communicator is refused
// before anything else; only the group records it, the communicator's state is untouched.
ncclResult_t refuse_revoked(const ncclComm* comm, const char* call) {
  if (check_comm(comm, call) != ncclSuccess || !comm->revoked) return ncclSuccess;
  const ncclResult_t code = fail(ncclInvalidUsage, std::string(call) + ": communicator was revoked");
  if (group().depth > 0) group().error = code;
  return code;
}

// src/enqueue.cc:ncclEnqueueCheck. An error on a non-blocking communicator also becomes
// its result (its "fail" label). Collectives of no elements are dropped, and those of a
// one-rank communicator are copies launched at once (src/enqueue.cc:taskAppend).
ncclResult_t submit(Op op, ncclComm_t comm, cudaStream_t stream, const char* call) {
  if (const ncclResult_t e = refuse_revoked(comm, call)) return e;
  ncclResult_t code = ensure_ready(comm, call);
  if (code == ncclSuccess) {
    const std::string name(call);
    if (op.peer < 0 || op.peer >= comm->nranks) {
      code = fail(ncclInvalidArgument, name + " : invalid root " + std::to_string(op.peer) +
                                           " (root should be in the 0.." + std::to_string(comm->nranks) + " range)");
    } else if (op.type < 0 || op.type >= ncclNumTypes) {
      code = fail(ncclInvalidArgument, name + " : invalid type " + std::to_string(op.type));
    } else if (op.op < 0 || op.op >= ncclNumOps) {
      code = fail(ncclInvalidArgument, name + " : invalid reduction operation " + std::to_string(op.op));
    } else if (op.count > 0 && bytes_of(op, comm->nranks) == 0) {
      code = fail(ncclInvalidArgument, name + " : count " + std::to_string(op.count) + " is too large");
    }
  }
  Group& g = group();
  if (code != ncclSuccess) {
    if (check_comm(comm, call) == ncclSuccess && !comm->config.blocking) comm->state.store(code);
    if (g.depth > 0) g.error = code;
    return code;
  }
  switch (op.kind) {
    case Kind::send:
      op.tag = "p" + std::to_string(comm->rank) + "." + std::to_string(op.peer) + "." +
               std::to_string(++comm->sent[static_cast<std::size_t>(op.peer)]);
      break;
    case Kind::recv:
      op.tag = "p" + std::to_string(op.peer) + "." + std::to_string(comm->rank) + "." +
               std::to_string(++comm->received[static_cast<std::size_t>(op.peer)]);
      break;
    default:
      if (op.count == 0) return ncclSuccess;
      op.tag = "c" + std::to_string(++comm->collectives);
  }
  if (is_collective(op.kind) && comm->nranks == 1) {
    std::vector<const ncclComm*> alone;  // outside a group the call is an operation of its own
    return launch(Launch{comm, stream, {std::move(op)}}, g.depth > 0 ? g.numbered : alone);
  }
  auto it = std::find_if(g.launches.begin(), g.launches.end(),
                         [&](const Launch& l) { return l.comm == comm && l.stream == stream; });
  if (it == g.launches.end()) it = g.launches.insert(g.launches.end(), Launch{comm, stream, {}});
  it->ops.push_back(std::move(op));
  g.blocking = comm->config.blocking ? 1 : 0;  // include/group.h:123 ncclGroupCommJoin: the last one sets the mode
  if (g.depth > 0) return ncclSuccess;
  ++g.depth;
  return end_group();
}

}  // namespace

ncclResult_t launch(Launch work, std::vector<const ncclComm*>& numbered) {
  ncclComm* comm = work.comm;
  // A group is one operation of each communicator in it, for PCX_EMU_FAULT's K.
  if (std::find(numbered.begin(), numbered.end(), comm) == numbered.end()) {
    ++comm->operations;
    numbered.push_back(comm);
  }
  const std::uint64_t number = comm->operations;
  ++comm->pending;
  const cudaError_t queued = enqueue(work.stream, comm->device, [comm, ops = std::move(work.ops), number] {
    if (!comm->aborted.load()) execute(comm, ops, number);
    --comm->pending;
  });
  if (queued == cudaSuccess) return ncclSuccess;
  --comm->pending;
  return fail(ncclUnhandledCudaError, std::string("Cuda failure '") + cudaGetErrorString(queued) + "'");
}

}  // namespace pcxemu

using namespace pcxemu;

extern "C" {

ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::all_reduce, send, recv, count, type, op, 0, {}}, comm, stream, "AllReduce");
}

ncclResult_t ncclReduce(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::reduce, send, recv, count, type, op, root, {}}, comm, stream, "Reduce");
}

ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, ncclDataType_t type, int root,
                           ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::broadcast, send, recv, count, type, ncclSum, root, {}}, comm, stream, "Broadcast");
}

ncclResult_t ncclBcast(void* buffer, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                       cudaStream_t stream) {
  return ncclBroadcast(buffer, buffer, count, type, root, comm, stream);
}

ncclResult_t ncclAllGather(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
  return submit(Op{Kind::all_gather, send, recv, count, type, ncclSum, 0, {}}, comm, stream, "AllGather");
}

ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::reduce_scatter, send, recv, count, type, op, 0, {}}, comm, stream, "ReduceScatter");
}

ncclResult_t ncclSend(const void* send, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
  return submit(Op{Kind::send, send, nullptr, count, type, ncclSum, peer, {}}, comm, stream, "Send");
}

ncclResult_t ncclRecv(void* recv, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
  return submit(Op{Kind::recv, nullptr, recv, count, type, ncclSum, peer, {}}, comm, stream, "Recv");
}

// All-to-all, gather and scatter are grouped sends and receives in NCCL 2.28 too
// (src/enqueue.cc:taskAppend, ncclFuncAlltoAll, ncclFuncGather, ncclFuncScatter).
ncclResult_t ncclAlltoAll(const void* send, void* recv, size_t count, ncclDataType_t type, ncclComm_t comm,
                          cudaStream_t stream) {
  if (const ncclResult_t e = refuse_revoked(comm, "AlltoAll")) return e;
  if (const ncclResult_t e = ensure_ready(comm, "AlltoAll")) return e;
  const std::size_t block = count * type_size(type);
  ncclGroupStart();
  for (int peer = 0; peer < comm->nranks; ++peer) {
    const auto offset = block * static_cast<std::size_t>(peer);
    ncclSend(static_cast<const std::byte*>(send) + offset, count, type, peer, comm, stream);
    ncclRecv(static_cast<std::byte*>(recv) + offset, count, type, peer, comm, stream);
  }
  return ncclGroupEnd();
}

ncclResult_t ncclGather(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                        cudaStream_t stream) {
  if (const ncclResult_t e = refuse_revoked(comm, "Gather")) return e;
  if (const ncclResult_t e = ensure_ready(comm, "Gather")) return e;
  const std::size_t block = count * type_size(type);
  ncclGroupStart();
  if (comm->rank == root) {
    for (int peer = 0; peer < comm->nranks; ++peer) {
      ncclRecv(static_cast<std::byte*>(recv) + block * static_cast<std::size_t>(peer), count, type, peer, comm, stream);
    }
  }
  ncclSend(send, count, type, root, comm, stream);
  return ncclGroupEnd();
}

ncclResult_t ncclScatter(const void* send, void* recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                         cudaStream_t stream) {
  if (const ncclResult_t e = refuse_revoked(comm, "Scatter")) return e;
  if (const ncclResult_t e = ensure_ready(comm, "Scatter")) return e;
  const std::size_t block = count * type_size(type);
  ncclGroupStart();
  if (comm->rank == root) {
    for (int peer = 0; peer < comm->nranks; ++peer) {
      ncclSend(static_cast<const std::byte*>(send) + block * static_cast<std::size_t>(peer), count, type, peer, comm,
               stream);
    }
  }
  ncclRecv(recv, count, type, root, comm, stream);
  return ncclGroupEnd();
}

}  // extern "C"
