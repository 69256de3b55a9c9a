#!/usr/bin/env bash
# Inside scripts/hosts (4 hosts of 4 slots): all_reduce on 16 ranks over clean links and
# with host2's link slow (scripts/hosts shape), side by side. Every result is checked and
# every operation has a deadline of 10 s; the times are printed, not judged.
#
#   slow_link.sh <collective_probe>
set -u
source "$(dirname "${BASH_SOURCE[0]}")/bed.sh"
probe=$1

# run <count> <elements>: rank 0's "median p90 max" in ms, every rank having checked all.
run() {
  local dir
  dir=$(mktemp -d) || fail "mktemp"
  job --hostfile "$PCX_HOSTFILE" --map-by slot -n 16 "$probe" --status-dir "$dir" --count "$1" --elements "$2" \
    --timeout-ms 10000 >"$TMPDIR/out" 2>"$TMPDIR/err" || { cat "$TMPDIR/out" "$TMPDIR/err" >&2; fail "the probe failed"; }
  local r outcome count median p90 max
  for ((r = 15; r >= 0; --r)); do
    read -r outcome count median p90 max <"$dir/rank.$r" || fail "rank $r wrote no outcome"
    [[ $outcome == ok && $count == "$1" ]] || fail "rank $r: $outcome $count, not ok $1"
  done
  echo "$median $p90 $max"
}

printf '%-10s %-6s %-26s %s\n' bytes count "clean median/p90/max ms" "host2 slow median/p90/max ms"
for sizes in "128 40" "8192 10"; do
  read -r elements count <<<"$sizes"
  "$PCX_HOSTS_TOOL" shape host2 clean
  read -r c50 c90 cmax <<<"$(run "$count" "$elements")" || exit 1
  "$PCX_HOSTS_TOOL" shape host2 slow
  read -r s50 s90 smax <<<"$(run "$count" "$elements")" || exit 1
  printf '%-10s %-6s %-26s %s\n' $((elements * 8)) "$count" "$c50 / $c90 / $cmax" "$s50 / $s90 / $smax"
done
"$PCX_HOSTS_TOOL" shape host2 clean
echo "OK: every all_reduce checked on every rank, clean and slow, none past its deadline"
