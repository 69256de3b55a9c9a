#!/usr/bin/env bash
# Runs moe_dispatch with --dump and checks every rank's outputs and expert gradients with
# moe_dispatch_check, which recomputes them from the gate and the experts alone. With
# --tamper, one output and one gradient of rank 0's dump are changed first, and the check
# must catch both.
# Exit status 77 (no CUDA device for --backend nccl) is passed on.
#
#   check_moe_dispatch.sh [--tamper] <checker> <ranks> <launch command...> -- <flags...>
set -u

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

tamper=false
if [[ ${1-} == --tamper ]]; then
  tamper=true
  shift
fi
[[ $# -ge 4 ]] || fail "usage: $0 [--tamper] <checker> <ranks> <launch command...> -- <flags...>"
checker=$1
ranks=$2
shift 2
launch=()
while [[ $# -gt 0 && $1 != -- ]]; do
  launch+=("$1")
  shift
done
[[ $# -gt 0 ]] || fail "missing -- between the launch command and the flags"
shift

tmp=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

echo "+ ${launch[*]} $* --dump $tmp/moe"
"${launch[@]}" "$@" --dump "$tmp/moe" >"$tmp/stdout"
status=$?
cat "$tmp/stdout"
[[ $status -eq 77 ]] && exit 77
[[ $status -eq 0 ]] || fail "moe_dispatch exited with status $status"
grep -Eq '^  step 0: [0-9]+ token copies dispatched, tokens per expert max [0-9]+ min [0-9]+, checksum -?[0-9.]+$' \
  "$tmp/stdout" || fail "no summary line for step 0"

if $tamper; then
  awk '!seen[$1]++ && ($1 == "output" || $1 == "gradient") { $4 += 1 } { print }' "$tmp/moe.0" >"$tmp/changed" ||
    fail "awk"
  mv "$tmp/changed" "$tmp/moe.0"
  "$checker" "$tmp/moe" "$ranks" 2>"$tmp/stderr" && fail "the check passed changed values"
  cat "$tmp/stderr"
  grep -q 'mismatch: step 0 rank 0 token 0 output 0:' "$tmp/stderr" || fail "the check missed the changed output"
  grep -q 'mismatch: step 0 expert 0 gradient 0:' "$tmp/stderr" || fail "the check missed the changed gradient"
else
  "$checker" "$tmp/moe" "$ranks" || fail "moe_dispatch_check found mismatches"
fi
echo "OK"
