#!/usr/bin/env bash
# Runs a sample under mpiexec with input it must reject, and checks that every rank
# agreed: the job exits with <status>, prints no success line (nor print_groups' JSON), prints exactly one
# "<program>: error" line, matching <pattern> (an extended regular expression), and no
# rank crashed or called MPI_Abort. CTest's TIMEOUT catches a hang.
#
#   expect_sample_failure.sh <program> <status> <pattern> <launch command...> -- <flags...>
set -u

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ $# -ge 4 ]] || fail "usage: $0 <program> <status> <pattern> <launch command...> -- <flags...>"
program=$1
expected=$2
pattern=$3
shift 3
launch=()
while [[ $# -gt 0 && $1 != -- ]]; do
  launch+=("$1")
  shift
done
[[ $# -gt 0 ]] || fail "missing -- between the launch command and the flags"
shift

tmp=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

echo "+ ${launch[*]} $*"
"${launch[@]}" "$@" >"$tmp/stdout" 2>"$tmp/stderr"
status=$?
echo "status $status; stdout:"
cat "$tmp/stdout"
echo "stderr:"
cat "$tmp/stderr"
[[ $status -eq $expected ]] || fail "expected status $expected, got $status"
grep -q 'checks passed\|world_size' "$tmp/stdout" && fail "reported success despite the error"
errors=$(grep -c "^$program: error" "$tmp/stderr")
[[ $errors -eq 1 ]] || fail "expected one '$program: error' line, got $errors"
grep "^$program: error" "$tmp/stderr" | grep -Eq -- "$pattern" || fail "the error line does not match /$pattern/"
grep -q 'Process received signal\|MPI_ABORT was invoked' "$tmp/stderr" && fail "a rank crashed or aborted"
echo "OK"
