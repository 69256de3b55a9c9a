// collectives_mpi_bench: latency and bandwidth of the MPI backend's collectives over
// the expert parallel group of a ParallelContext, against the same MPI call made
// directly on the same MPI_Comm (MpiCommunicator::native()), under mpiexec.
//
//   mpiexec -n 8 collectives_mpi_bench [--ep 8] [--min-bytes 8] [--max-bytes 4194304]
//                                      [--factor 4] [--reps 6] [--target-ms 50]
//
// Sizes follow nccl-tests: float32 elements; `size` is the larger buffer of one rank
// (all_reduce, broadcast: the buffer; all_gather: the receive buffer; reduce_scatter:
// the send buffer; all_to_all: either). The block collectives need at least one
// element per member, so their smallest sizes are rounded up (and a size that rounds
// to the previous one is left out). algbw = size / time; busbw = algbw times
// 2(n-1)/n for all_reduce, (n-1)/n for all_gather, reduce_scatter and all_to_all, 1 for
// broadcast (n = group size).
//
// A measurement runs the collective `iterations` times between two barriers and takes
// the slowest rank's time per call; `iterations` is set once per size so that a
// measurement lasts about --target-ms. pcx and raw MPI alternate, --reps times each;
// the table on rank 0 gives the medians. Over a network (even a shared-memory one on
// an oversubscribed machine) the wrapper's cost is far below the noise, so a last table
// measures it alone: the same 8-byte calls on MPI_COMM_SELF, through pcx and directly.

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "pcx/error.hpp"
#include "pcx/flight_recorder.hpp"
#include "pcx/mpi/mpi_communicator.hpp"
#include "pcx/parallel_context.hpp"

namespace {

enum class Op { all_reduce, all_to_all, all_gather, reduce_scatter, broadcast };

constexpr Op kOps[] = {Op::all_reduce, Op::all_to_all, Op::all_gather, Op::reduce_scatter, Op::broadcast};

const char* name(Op op) {
  switch (op) {
    case Op::all_reduce: return "all_reduce";
    case Op::all_to_all: return "all_to_all";
    case Op::all_gather: return "all_gather";
    case Op::reduce_scatter: return "reduce_scatter";
    case Op::broadcast: return "broadcast";
  }
  return "?";
}

bool is_block_op(Op op) { return op == Op::all_to_all || op == Op::all_gather || op == Op::reduce_scatter; }

double bus_factor(Op op, int n) {
  switch (op) {
    case Op::all_reduce: return 2.0 * (n - 1) / n;
    case Op::broadcast: return 1.0;
    default: return static_cast<double>(n - 1) / n;
  }
}

void check(int code, const char* call) { pcx::check_mpi(code, call); }

// Buffers and element counts of one collective at one size.
struct Buffers {
  std::size_t bytes;  // the size as reported: the larger buffer
  std::size_t count;  // elements per call argument: the whole buffer, or one block
  std::vector<float> send;
  std::vector<float> recv;

  Buffers(Op op, std::size_t nominal_bytes, int members) {
    const auto n = static_cast<std::size_t>(members);
    std::size_t elements = std::max<std::size_t>(1, nominal_bytes / sizeof(float));
    if (is_block_op(op)) {
      count = std::max<std::size_t>(1, elements / n);
      elements = count * n;
    } else {
      count = elements;
    }
    bytes = elements * sizeof(float);
    switch (op) {
      case Op::all_reduce:
      case Op::all_to_all:
        send.assign(elements, 1.0F);
        recv.assign(elements, 0.0F);
        break;
      case Op::all_gather:
        send.assign(count, 1.0F);
        recv.assign(elements, 0.0F);
        break;
      case Op::reduce_scatter:
        send.assign(elements, 1.0F);
        recv.assign(count, 0.0F);
        break;
      case Op::broadcast: send.assign(elements, 1.0F); break;
    }
  }
};

// The collective through pcx's typed interface, as a user writes it.
void run_pcx(Op op, const pcx::Communicator& comm, Buffers& b) {
  switch (op) {
    case Op::all_reduce:
      comm.all_reduce(std::span<const float>(b.send), std::span<float>(b.recv), pcx::ReduceOp::sum);
      break;
    case Op::all_to_all: comm.all_to_all(std::span<const float>(b.send), std::span<float>(b.recv)); break;
    case Op::all_gather: comm.all_gather(std::span<const float>(b.send), std::span<float>(b.recv)); break;
    case Op::reduce_scatter:
      comm.reduce_scatter(std::span<const float>(b.send), std::span<float>(b.recv), pcx::ReduceOp::sum);
      break;
    case Op::broadcast: comm.broadcast(std::span<float>(b.send), 0); break;
  }
}

// The same MPI call the backend makes, on the same communicator.
void run_raw(Op op, MPI_Comm comm, Buffers& b) {
  const int count = static_cast<int>(b.count);
  switch (op) {
    case Op::all_reduce:
      check(MPI_Allreduce(b.send.data(), b.recv.data(), count, MPI_FLOAT, MPI_SUM, comm), "MPI_Allreduce");
      break;
    case Op::all_to_all:
      check(MPI_Alltoall(b.send.data(), count, MPI_FLOAT, b.recv.data(), count, MPI_FLOAT, comm), "MPI_Alltoall");
      break;
    case Op::all_gather:
      check(MPI_Allgather(b.send.data(), count, MPI_FLOAT, b.recv.data(), count, MPI_FLOAT, comm), "MPI_Allgather");
      break;
    case Op::reduce_scatter:
      check(MPI_Reduce_scatter_block(b.send.data(), b.recv.data(), count, MPI_FLOAT, MPI_SUM, comm),
            "MPI_Reduce_scatter_block");
      break;
    case Op::broadcast: check(MPI_Bcast(b.send.data(), count, MPI_FLOAT, 0, comm), "MPI_Bcast"); break;
  }
}

// Seconds per call, slowest rank of the world (every rank of the world measures, each
// in its own expert group, so that groups run at the same time as in training).
template <class Call>
double measure(long iterations, Call&& call) {
  check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
  const double start = MPI_Wtime();
  for (long i = 0; i < iterations; ++i) call();
  const double local = (MPI_Wtime() - start) / static_cast<double>(iterations);
  double slowest = 0;
  check(MPI_Allreduce(&local, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
  return slowest;
}

double median(std::vector<double> values) {
  std::ranges::sort(values);
  const std::size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

// The wrapper's own cost, without the network: the same 8-byte call through pcx and
// directly, on MPI_COMM_SELF, where MPI does little more than a copy. Measured on rank
// 0 alone while the other ranks sleep (so that they leave it the cores): 11 runs of
// 200000 calls each way, alternating; the medians, in seconds per call.
struct SelfCost {
  double pcx;
  double recording;  // pcx with a FlightRecorder attached
  double raw;
};

template <class Call>
double per_call(Call&& call) {
  constexpr long kCalls = 200000;
  const double start = MPI_Wtime();
  for (long i = 0; i < kCalls; ++i) call();
  return (MPI_Wtime() - start) / kCalls;
}

std::vector<SelfCost> self_costs(int rank) {
  std::vector<SelfCost> costs;
  if (rank == 0) {
    const pcx::MpiCommunicator self = pcx::MpiCommunicator::borrow(MPI_COMM_SELF);
    const pcx::MpiCommunicator recorded = pcx::MpiCommunicator::borrow(MPI_COMM_SELF);
    recorded.record_operations(std::make_shared<pcx::FlightRecorder>("self", std::vector<int>{0}, 64));
    for (const Op op : kOps) {
      Buffers b(op, 8, 1);
      const std::function<void()> calls[] = {[&] { run_raw(op, MPI_COMM_SELF, b); }, [&] { run_pcx(op, self, b); },
                                             [&] { run_pcx(op, recorded, b); }};
      std::vector<double> runs[3];
      for (const auto& call : calls) per_call(call);  // warm-up
      for (int run = 0; run < 11; ++run) {
        for (int i = 0; i < 3; ++i) {  // rotated, so that no way always goes first
          const int way = (run + i) % 3;
          runs[way].push_back(per_call(calls[way]));
        }
      }
      costs.push_back({median(runs[1]), median(runs[2]), median(runs[0])});
    }
  }
  // The others wait without spinning.
  MPI_Request request = MPI_REQUEST_NULL;
  check(MPI_Ibarrier(MPI_COMM_WORLD, &request), "MPI_Ibarrier");
  for (int done = 0; !done;) {
    check(MPI_Test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test");
    if (!done && rank != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return costs;
}

struct Row {
  Op op;
  std::size_t bytes;
  long iterations;
  double pcx;
  double raw;
};

long parse_long(const char* text, const char* flag) {
  char* end = nullptr;
  const long value = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || value < 1) {
    throw std::invalid_argument(std::string("bad value for ") + flag + ": " + text);
  }
  return value;
}

std::string human_bytes(std::size_t bytes) {
  char text[32];
  if (bytes >= (1U << 20) && bytes % (1U << 20) == 0)
    std::snprintf(text, sizeof text, "%zu MiB", bytes >> 20);
  else if (bytes >= 1024 && bytes % 1024 == 0)
    std::snprintf(text, sizeof text, "%zu KiB", bytes >> 10);
  else
    std::snprintf(text, sizeof text, "%zu B", bytes);
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const pcx::MpiEnvironment environment(&argc, &argv);
  int status = 0;
  try {
    long ep = 8, min_bytes = 8, max_bytes = 4L << 20, factor = 4, reps = 6, target_ms = 50;
    for (int i = 1; i < argc; ++i) {
      const std::string_view flag = argv[i];
      if (i + 1 >= argc) throw std::invalid_argument("missing value after " + std::string(flag));
      const char* value = argv[++i];
      if (flag == "--ep")
        ep = parse_long(value, "--ep");
      else if (flag == "--min-bytes")
        min_bytes = parse_long(value, "--min-bytes");
      else if (flag == "--max-bytes")
        max_bytes = parse_long(value, "--max-bytes");
      else if (flag == "--factor")
        factor = std::max(2L, parse_long(value, "--factor"));
      else if (flag == "--reps")
        reps = parse_long(value, "--reps");
      else if (flag == "--target-ms")
        target_ms = parse_long(value, "--target-ms");
      else
        throw std::invalid_argument("unknown option " + std::string(flag));
    }
    std::vector<std::size_t> sizes;
    for (long s = min_bytes; s < max_bytes; s *= factor) sizes.push_back(static_cast<std::size_t>(s));
    sizes.push_back(static_cast<std::size_t>(max_bytes));

    const pcx::MpiCommunicator world = pcx::MpiCommunicator::world();
    pcx::ParallelConfig config;
    config.world_size = world.size();
    config.expert_parallel_sizes = {static_cast<int>(ep)};
    const pcx::ParallelContext context(world, config);
    const pcx::ProcessGroup& group = context.expert_parallel_group(static_cast<int>(ep));
    const auto* mpi = dynamic_cast<const pcx::MpiCommunicator*>(&group.communicator());
    if (group.size() < 2 || mpi == nullptr) {
      throw std::invalid_argument("the expert parallel group must have at least 2 ranks (choose --ep >= 2)");
    }
    const pcx::Communicator& comm = group.communicator();
    const MPI_Comm native = mpi->native();
    const int members = group.size();

    // One sanity check: an all-reduce of ones gives the group size.
    {
      Buffers b(Op::all_reduce, 64, members);
      run_pcx(Op::all_reduce, comm, b);
      int good = b.recv.front() == static_cast<float>(members) ? 1 : 0;
      int all_good = 0;
      check(MPI_Allreduce(&good, &all_good, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD), "MPI_Allreduce");
      if (!all_good) throw pcx::Error("all_reduce over the expert parallel group gave a wrong sum");
    }

    const std::vector<SelfCost> self = self_costs(world.rank());

    double load_before[3] = {-1, -1, -1};
    if (world.rank() == 0 && getloadavg(load_before, 3) < 0) load_before[0] = -1;

    std::vector<Row> rows;
    for (const Op op : kOps) {
      std::size_t previous = 0;
      for (const std::size_t nominal : sizes) {
        Buffers b(op, nominal, members);
        if (b.bytes == previous) continue;
        previous = b.bytes;
        const auto pcx_call = [&] { run_pcx(op, comm, b); };
        const auto raw_call = [&] { run_raw(op, native, b); };
        // Warm up, then pick the iterations (the same on every rank: from the slowest).
        measure(2, pcx_call);
        measure(2, raw_call);
        const double once = measure(3, pcx_call);
        const long iterations =
            std::clamp(static_cast<long>(static_cast<double>(target_ms) * 1e-3 / std::max(once, 1e-9)), 2L, 20000L);
        std::vector<double> pcx_times, raw_times;
        for (long r = 0; r < reps; ++r) {
          if (r % 2 == 0) {
            pcx_times.push_back(measure(iterations, pcx_call));
            raw_times.push_back(measure(iterations, raw_call));
          } else {
            raw_times.push_back(measure(iterations, raw_call));
            pcx_times.push_back(measure(iterations, pcx_call));
          }
        }
        rows.push_back({op, b.bytes, iterations, median(pcx_times), median(raw_times)});
      }
    }

    if (world.rank() == 0) {
      double load_after[3] = {-1, -1, -1};
      if (getloadavg(load_after, 3) < 0) load_after[0] = -1;
      char version[MPI_MAX_LIBRARY_VERSION_STRING] = {};
      int length = 0;
      MPI_Get_library_version(version, &length);
      std::string library(version, static_cast<std::size_t>(length));
      library = library.substr(0, library.find_first_of(",\n"));
      std::printf(
          "collectives_mpi_bench: world %d, expert parallel size %ld (%d groups of %d, all measured at once), "
          "float32, %s\n",
          world.size(), ep, world.size() / members, members, library.c_str());
      std::printf("median of %ld measurements; load average %.2f before, %.2f after\n", reps, load_before[0],
                  load_after[0]);
      std::printf("time: µs per call (slowest rank); algbw, busbw: GB/s (1e9 B/s); overhead = pcx - raw\n");
      for (const Op op : kOps) {
        std::printf(
            "\n%s\n\n| size | iterations | pcx time | raw MPI time | overhead | pcx algbw | raw algbw | pcx busbw |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            name(op));
        for (const Row& row : rows) {
          if (row.op != op) continue;
          const double bytes = static_cast<double>(row.bytes);
          std::printf("| %s | %ld | %.2f | %.2f | %+.2f | %.3f | %.3f | %.3f |\n", human_bytes(row.bytes).c_str(),
                      row.iterations, row.pcx * 1e6, row.raw * 1e6, (row.pcx - row.raw) * 1e6, bytes / row.pcx / 1e9,
                      bytes / row.raw / 1e9, bytes / row.pcx / 1e9 * bus_factor(op, members));
        }
      }
      std::printf(
          "\nThe wrapper alone: 8 B on MPI_COMM_SELF, rank 0 alone, ns per call\n\n"
          "| collective | pcx | raw MPI | overhead | pcx, flight recorder on | recording's cost |\n"
          "|---|---:|---:|---:|---:|---:|\n");
      for (std::size_t i = 0; i < self.size(); ++i) {
        std::printf("| %s | %.1f | %.1f | %+.1f | %.1f | %+.1f |\n", name(kOps[i]), self[i].pcx * 1e9,
                    self[i].raw * 1e9, (self[i].pcx - self[i].raw) * 1e9, self[i].recording * 1e9,
                    (self[i].recording - self[i].pcx) * 1e9);
      }
      std::fflush(stdout);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "collectives_mpi_bench: %s\n", e.what());
    status = 1;
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  return status;
}
