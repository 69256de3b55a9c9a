#!/usr/bin/env bash
# Inside scripts/hosts (4 hosts of 4 slots): host2's cable pulled while 16 ranks are inside
# all_reduce after all_reduce (collective_probe, deadline <ms>). Every rank must end with
# pcx::Timeout within the deadline + 1 s of its operation's start, its operation having
# started no later than 1 s after the cut, and the job must exit.
#
#   link_cut.sh <collective_probe> <deadline ms>
set -u
source "$(dirname "${BASH_SOURCE[0]}")/bed.sh"
probe=$1
deadline_ms=$2
statuses=$TMPDIR/link_cut
mkdir -p "$statuses"

job --hostfile "$PCX_HOSTFILE" --map-by slot -n 16 "$probe" --status-dir "$statuses" --count 0 --elements 65536 \
  --timeout-ms "$deadline_ms" >"$TMPDIR/out" 2>"$TMPDIR/err" &
launched=$!
wait_for 30000 test -e "$statuses/running" || { cat "$TMPDIR/out" "$TMPDIR/err" >&2; fail "the probe did not start"; }
"$PCX_HOSTS_TOOL" link host2 down
cut_ns=$(date +%s%N)
echo "host2's link cut"

bound_ms=$((deadline_ms + 1000))
all_written() { (($(ls "$statuses" | grep -c '^rank\.[0-9]*$') == 16)); }
wait_for $((bound_ms + 3000)) all_written
for ((r = 0; r < 16; ++r)); do
  read -r outcome index started ended <"$statuses/rank.$r" 2>/dev/null || fail "rank $r wrote no outcome"
  [[ $outcome == timeout ]] || fail "rank $r ended in '$outcome', not a timeout"
  took_ms=$(((ended - started) / 1000000))
  after_ms=$(((started - cut_ns) / 1000000))
  echo "rank $r: operation $index: Timeout after $took_ms ms, started $after_ms ms after the cut"
  ((took_ms <= bound_ms)) || fail "rank $r: Timeout after $took_ms ms, past the deadline + 1 s ($bound_ms ms)"
  ((after_ms <= 1000)) || fail "rank $r: its last operation started $after_ms ms after the cut"
done

# The job: the ranks leave at once; mpirun must see it, over the cut link or once it is back.
if wait_for 10000 ended "$launched"; then
  echo "mpirun exited with the link down"
else
  "$PCX_HOSTS_TOOL" link host2 up
  wait_for 20000 ended "$launched" || fail "mpirun did not exit within 20 s of the link coming back"
  echo "mpirun exited once the link was back (not within 10 s with it down)"
fi
wait "$launched"
echo "OK: every rank timed out within the deadline + 1 s; mpirun exited with status $?"
