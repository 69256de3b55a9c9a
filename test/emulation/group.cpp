// NCCL's groups, on the host, after NCCL 2.28.9's src/group.cc and src/include/group.h
// (cited as file:line at tag v2.28.9-1). Every call that has background work (init,
// split, shrink, finalize, revoke, destroy, abort) queues a job in the calling thread's
// group, inside a group of its own if the caller opened none, and operations queue
// launches (collectives.cpp); the outermost ncclGroupEnd runs them. A blocking group runs
// its jobs on the calling thread. A non-blocking group marks every communicator in it
// ncclInProgress, hands its jobs to one thread and returns ncclInProgress; the group's
// one result replaces ncclInProgress on all of them once every job has ended.
#include <algorithm>

#include "nccl_internal.hpp"

namespace pcxemu {
namespace {

thread_local Group this_thread_group;

// src/group.cc:399-460 asyncJobLaunch: a lone job runs on the launching thread; several
// run on threads of their own (they may meet each other: one thread initializing several
// devices), and once one fails, or the group is aborted, every job's abort flag is set.
ncclResult_t run_all(std::vector<std::pair<ncclComm*, Job>>& jobs) {
  if (jobs.empty()) return ncclSuccess;
  if (jobs.size() == 1) return jobs.front().second();
  std::vector<std::atomic<ncclResult_t>> results(jobs.size());
  for (auto& r : results) r.store(ncclNumResults);  // still running
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    threads.emplace_back([&, i] { results[i].store(jobs[i].second()); });
  }
  ncclResult_t code = ncclSuccess;
  for (Backoff backoff;; backoff.pause()) {
    bool running = false;
    for (const auto& r : results) {
      const ncclResult_t result = r.load();
      running = running || result == ncclNumResults;
      if (result != ncclNumResults && result != ncclSuccess && code == ncclSuccess) code = result;
    }
    if (code != ncclSuccess) {
      for (auto& [comm, job] : jobs) comm->aborted.store(true);
    }
    if (!running) break;
  }
  for (std::thread& t : threads) t.join();
  return code;
}

ncclResult_t launch_all(Group& done) {
  ncclResult_t code = ncclSuccess;
  for (Launch& work : done.launches) {
    const ncclResult_t launched = launch(std::move(work), done.numbered);
    if (code == ncclSuccess) code = launched;
  }
  return code;
}

std::shared_ptr<GroupJob> group_job_of(ncclComm* comm) {
  const std::lock_guard lock(comm->mutex);
  return comm->group_job;
}

}  // namespace

Group& group() { return this_thread_group; }

void wait_launch_delay(Clock::time_point called, const std::function<bool()>& aborted) {
  for (Backoff backoff; Clock::now() < called + settings().launch_delay && !aborted();) backoff.pause();
}

void GroupJob::join() {
  const std::lock_guard lock(mutex);
  if (thread.joinable() && thread.get_id() != std::this_thread::get_id()) thread.join();
}

void join_group(ncclComm* comm) {
  if (const std::shared_ptr<GroupJob> job = group_job_of(comm)) job->join();
}

// src/group.cc:780-791 ncclGroupJobAbort: a group job still running is aborted as a whole
// (asyncJobLaunch then sets every job's abort flag) and joined.
void abort_group(ncclComm* comm) {
  const std::shared_ptr<GroupJob> job = group_job_of(comm);
  if (!job) return;
  if (!job->done.load()) {
    for (ncclComm* member : job->comms) member->aborted.store(true);
  }
  job->join();
}

// src/group.cc:41-66 ncclAsyncLaunch, at depth > 0: the first job sets the group's mode,
// a job of the other mode is refused, and a reclaim (destroyFlag) makes the group blocking.
ncclResult_t queue(ncclComm* comm, Job job, bool reclaim) {
  Group& g = group();
  const int mode = comm->config.blocking ? 1 : 0;
  if (reclaim) {
    g.blocking = 1;
  } else if (g.blocking == -1) {
    g.blocking = mode;
  } else if (g.blocking != mode) {
    return fail(ncclInvalidArgument, "Blocking and nonblocking communicators are not allowed in the same group.");
  }
  g.jobs.emplace_back(comm, std::move(job));
  return ncclSuccess;
}

// src/group.cc:646-765 ncclGroupEndInternal.
ncclResult_t end_group() {
  Group& g = group();
  if (g.depth == 0) return fail(ncclInvalidUsage, "ncclGroupEnd: not in a group call.");
  if (--g.depth > 0) return ncclSuccess;  // group.cc:669
  Group done = std::exchange(g, Group{});
  std::vector<ncclComm*> comms;
  const auto add = [&](ncclComm* comm) {
    if (std::find(comms.begin(), comms.end(), comm) == comms.end()) comms.push_back(comm);
  };
  for (const auto& [comm, job] : done.jobs) add(comm);
  for (const Launch& work : done.launches) add(work.comm);
  // group.cc:671 and 387-394: a group with an error launches nothing, and its non-blocking
  // communicators take the error.
  if (done.error != ncclSuccess) {
    for (ncclComm* comm : comms)
      if (!comm->config.blocking) comm->state.store(done.error);
    return done.error;
  }
  if (comms.empty()) return ncclSuccess;
  if (done.blocking != 0) {  // group.cc:739-745, then 608-630 for any non-blocking member
    ncclResult_t code = run_all(done.jobs);
    if (code == ncclSuccess) code = launch_all(done);
    for (ncclComm* comm : comms)
      if (!comm->config.blocking) comm->state.store(code);
    return code;
  }
  // group.cc:706-738: every communicator of the group is ncclInProgress from here on.
  for (ncclComm* comm : comms) {
    join_group(comm);  // its earlier group has ended: the caller found it ready
    comm->state.store(ncclInProgress);
  }
  const ncclResult_t launched = launch_all(done);
  const Clock::time_point called = Clock::now();
  auto job = std::make_shared<GroupJob>();
  job->comms = comms;
  // The communicators hold the job, and are never freed: it outlives its thread.
  GroupJob* const raw = job.get();
  job->thread = std::thread([raw, jobs = std::move(done.jobs), launched, called]() mutable {
    ncclResult_t code = run_all(jobs);
    if (code == ncclSuccess) code = launched;
    wait_launch_delay(called, [raw] {
      return std::any_of(raw->comms.begin(), raw->comms.end(), [](const ncclComm* c) { return c->aborted.load(); });
    });
    for (ncclComm* comm : raw->comms) comm->state.store(code);  // group.cc:608-630
    raw->done.store(true);
  });
  for (ncclComm* comm : comms) {
    const std::lock_guard lock(comm->mutex);
    comm->group_job = job;
  }
  return ncclInProgress;
}

ncclResult_t in_group(const std::function<ncclResult_t()>& body) {
  ++group().depth;
  const ncclResult_t result = body();
  if (result != ncclSuccess && result != ncclInProgress) group().error = result;
  const ncclResult_t ended = end_group();
  return ended != ncclSuccess && ended != ncclInProgress ? ended : result;
}

}  // namespace pcxemu

using namespace pcxemu;

extern "C" {

ncclResult_t ncclGroupStart() {
  ++group().depth;
  return ncclSuccess;
}

ncclResult_t ncclGroupEnd() { return end_group(); }

}  // extern "C"
