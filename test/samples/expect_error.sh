#!/usr/bin/env bash
# Runs print_groups under mpiexec with flags that must be rejected, and checks that the
# job fails (non-zero status), prints no JSON, and prints exactly one error line,
# matching <pattern> (an extended regular expression), however many ranks there are.
# CTest's TIMEOUT catches a hang.
#
#   expect_error.sh <pattern> <launch command...> -- <flags...>
set -u

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ $# -ge 2 ]] || fail "usage: $0 <pattern> <launch command...> -- <flags...>"
pattern=$1
shift
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
echo "status $status; stderr:"
cat "$tmp/stderr"
[[ $status -ne 0 ]] || fail "expected a non-zero status"
grep -q world_size "$tmp/stdout" && { cat "$tmp/stdout" >&2; fail "printed groups despite the error"; }
errors=$(grep -c '^print_groups: error' "$tmp/stderr")
[[ $errors -eq 1 ]] || fail "expected one 'print_groups: error' line, got $errors"
grep '^print_groups: error' "$tmp/stderr" | grep -Eq -- "$pattern" || fail "the error line does not match /$pattern/"
grep -q 'Process received signal\|MPI_ABORT was invoked' "$tmp/stderr" && fail "a rank crashed or aborted"
echo "OK"
