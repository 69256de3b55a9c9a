#!/usr/bin/env bash
# Runs elastic and checks that it recovered: exit status 0 and a last line of standard
# output that starts with "elastic: recovered" (standard error is left out of that check:
# the launcher may write after it, e.g. Open MPI's PMIx about a killed rank). Exit status
# 77 (no CUDA device for --backend nccl) is passed on.
#
#   check_elastic.sh [--killed <rank> <ranks>] <launch command and flags...>
#
# With --killed, rank <rank> is killed and mpiexec runs with recovery enabled, which makes
# its own status 0 whatever the ranks did: each rank is then started through
# rank_status.sh, and every rank but the killed one must have exited 0 (the killed one
# with SIGKILL's 137).
set -u
killed=
if [[ ${1-} == --killed ]]; then
  killed=$2
  ranks=$3
  shift 3
  statuses=$(mktemp -d)
  export PCX_RANK_STATUS_DIR=$statuses
fi
errors=$(mktemp)
trap 'rm -rf "$errors" ${statuses-}' EXIT
output=$("$@" 2>"$errors")
status=$?
printf '%s\n' "$output"
cat "$errors" >&2
[[ $status -eq 77 ]] && exit 77
if [[ $status -ne 0 ]]; then
  echo "FAIL: elastic exited with status $status" >&2
  exit 1
fi
if [[ -n $killed ]]; then
  grep -qsx 77 "$statuses"/rank.* && exit 77
  for ((rank = 0; rank < ranks; ++rank)); do
    expected=0
    [[ $rank -eq $killed ]] && expected=137
    got=$(cat "$statuses/rank.$rank" 2>/dev/null || echo none)
    if [[ $got != "$expected" ]]; then
      echo "FAIL: rank $rank exited with status $got, not $expected" >&2
      exit 1
    fi
  done
fi
last=$(printf '%s\n' "$output" | tail -n 1)
if [[ $last != "elastic: recovered"* ]]; then
  echo "FAIL: the last line is not 'elastic: recovered ...': $last" >&2
  exit 1
fi
