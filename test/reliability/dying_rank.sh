#!/usr/bin/env bash
# dying_rank.sh <limit-seconds> <mpiexec command line...>
#
# Runs the mpiexec command line (which starts reliability_dying_rank, dying_rank.cpp) under
# `timeout <limit-seconds>` and passes if the job ended by itself with a non-zero status:
# not 0 (the failure went unnoticed), not 124 or 137 (a hang that `timeout` had to end),
# with the dying rank's own last words in the output and no rank of the job left behind.
# It prints the job's output, its status and how long it took.
#
# What a user sees (measured with Open MPI 4.1.4 on 2 cores, 2, 4 and 8 ranks oversubscribed):
# the dying rank's own last line, then from mpiexec
#
#   --------------------------------------------------------------------------
#   Primary job  terminated normally, but 1 process returned
#   a non-zero exit code. Per user-direction, the job has been aborted.
#   --------------------------------------------------------------------------
#   --------------------------------------------------------------------------
#   mpiexec detected that one or more processes exited with non-zero status, thus causing
#   the job to be terminated. The first process to do so was:
#
#     Process name: [[<jobid>,1],1]
#     Exit code:    3
#   --------------------------------------------------------------------------
#
# and mpiexec's exit status is the dying rank's exit code (3 here). The surviving ranks,
# blocked in MPI_Comm_split inside the ParallelContext constructor, print nothing: no pcx
# exception is thrown, mpiexec kills them (SIGTERM, then SIGKILL after Open MPI's
# odls_base_sigkill_timeout, 1 s by default). mpiexec returns about 1.02 s after the death;
# the whole job takes 1.3 to 1.7 s, where the same job without a death takes 0.57 s. With
# `--mca odls_base_sigkill_timeout 0` the death costs nothing extra.
#
# A rank that exits with code 0 without MPI_Finalize is caught as well; mpiexec says
#
#   mpiexec has exited due to process rank 1 with PID 0 on
#   node <host> exiting improperly. There are three reasons this could occur: [...]
#   2. this process called "init", but exited without calling "finalize". [...]
#
# and exits with status 1, after the same ~1 s.
set -uo pipefail

if (($# < 2)); then
  echo "usage: dying_rank.sh <limit-seconds> <mpiexec command line...>" >&2
  exit 2
fi
limit=$1
shift

# A tag on the command line of this job's ranks, so that survivors can be found afterwards
# without mistaking another test's processes for them.
tag="dying-rank-$$-$RANDOM"
output=$(mktemp)
trap 'rm -f "$output"' EXIT

start_ms=$(($(date +%s%N) / 1000000))
timeout --kill-after=5 "$limit" "$@" --tag "$tag" >"$output" 2>&1
status=$?
end_ms=$(($(date +%s%N) / 1000000))

cat "$output"
# The dying rank printed the wall-clock time of its death.
death_ms=$(sed -n 's/^dying_rank: rank [0-9]* exits with code .* at \([0-9]*\) ms$/\1/p' "$output" | head -n 1)
after_death=""
[[ -n $death_ms ]] && after_death=", $((end_ms - death_ms)) ms after the rank died"
echo "dying_rank.sh: mpiexec exited with status $status after $((end_ms - start_ms)) ms${after_death} (limit ${limit} s)"

failed=0
if ((status == 0)); then
  echo "dying_rank.sh: FAIL: the job succeeded although a rank died" >&2
  failed=1
elif ((status == 124 || status == 137)); then
  echo "dying_rank.sh: FAIL: the job hung; timeout ended it after ${limit} s" >&2
  failed=1
fi
if [[ -z $death_ms ]]; then
  echo "dying_rank.sh: FAIL: no rank reported its death; the job failed for another reason" >&2
  failed=1
fi

# Ranks of the job still alive after mpiexec returned (give them a moment to go).
for _ in 1 2 3 4 5 6 7 8 9 10; do
  survivors=$(pgrep -f -- "$tag" || true)
  [[ -z $survivors ]] && break
  sleep 0.2
done
if [[ -n $survivors ]]; then
  echo "dying_rank.sh: FAIL: ranks still running after mpiexec returned: $survivors" >&2
  failed=1
fi

exit "$failed"
