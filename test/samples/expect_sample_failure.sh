#!/usr/bin/env bash
# Runs a sample under mpiexec with input it must reject on some or all of its ranks, and
# checks that every rank agreed: each of the <ranks> ranks, started through rank_status.sh,
# exits with <status>; nothing prints a success line (nor print_groups' JSON); exactly one
# "<program>: error" line is printed, matching <pattern> (an extended regular expression);
# and no rank crashed or called MPI_Abort. CTest's TIMEOUT catches a hang.
#
#   expect_sample_failure.sh <program> <status> <pattern> <ranks> <mpiexec command...>
#
# The command may start several app contexts (mpiexec -n 2 prog : -n 2 prog --bogus).
set -u

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ $# -ge 5 ]] || fail "usage: $0 <program> <status> <pattern> <ranks> <mpiexec command...>"
program=$1
expected=$2
pattern=$3
ranks=$4
shift 4

tmp=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT
export PCX_RANK_STATUS_DIR=$tmp/status
mkdir "$PCX_RANK_STATUS_DIR" || fail "mkdir"

echo "+ $*"
"$@" >"$tmp/stdout" 2>"$tmp/stderr"
status=$?
echo "status $status; stdout:"
cat "$tmp/stdout"
echo "stderr:"
cat "$tmp/stderr"
echo "rank statuses:"
grep -H . "$PCX_RANK_STATUS_DIR"/* 2>/dev/null
# rank_status.sh exits 0, so mpiexec does too unless a rank was killed or aborted the job.
[[ $status -eq 0 ]] || fail "mpiexec exited with $status: a rank was killed or aborted the job"
recorded=$(find "$PCX_RANK_STATUS_DIR" -type f | wc -l)
[[ $recorded -eq $ranks ]] || fail "expected $ranks ranks to exit, $recorded did"
others=$(grep -Lx -- "$expected" "$PCX_RANK_STATUS_DIR"/* | wc -l)
[[ $others -eq 0 ]] || fail "$others ranks did not exit with $expected"
grep -q 'checks passed\|world_size' "$tmp/stdout" && fail "reported success despite the error"
errors=$(grep -c "^$program: error" "$tmp/stderr")
[[ $errors -eq 1 ]] || fail "expected one '$program: error' line, got $errors"
grep "^$program: error" "$tmp/stderr" | grep -Eq -- "$pattern" || fail "the error line does not match /$pattern/"
grep -q 'Process received signal\|MPI_ABORT was invoked' "$tmp/stderr" && fail "a rank crashed or aborted"
echo "OK"
