#!/usr/bin/env bash
# Inside scripts/hosts (4 hosts of 4 slots): host2 dies (every process SIGKILLed) while
# samples/elastic trains on 16 ranks.
#
#   lost_host.sh <elastic> <rank_status.sh> recovery|no-recovery
#
# recovery: Open MPI keeps the job (orte_enable_recovery): the 12 survivors time out,
#   rebuild without host2's ranks, finish with every number checked and exit 0. mpirun
#   itself does not end when they do (it waits for the lost daemon), so the ranks' own
#   status files tell when the job is done, and mpirun is then ended here.
# no-recovery: Open MPI's default; mpirun must end the job, non-zero, within 10 s.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/bed.sh"
elastic=$1
rank_status=$2
mode=$3
statuses=$TMPDIR/lost_host
mkdir -p "$statuses"
[[ $mode == recovery ]] && export OMPI_MCA_orte_enable_recovery=1

PCX_RANK_STATUS_DIR=$statuses job -x PCX_RANK_STATUS_DIR --hostfile "$PCX_HOSTFILE" --map-by slot -n 16 \
  bash "$rank_status" "$elastic" --fail-rank 8 --fail-step 2 --fail-by host --timeout-ms 1000 --steps 4 \
  >"$TMPDIR/out" 2>"$TMPDIR/err" &
launched=$!
wait_for 30000 grep -q 'step 1:' "$TMPDIR/out" || { cat "$TMPDIR/out" "$TMPDIR/err" >&2; fail "elastic did not finish step 1"; }
"$PCX_HOSTS_TOOL" kill host2
echo "host2 killed after step 1"

if [[ $mode == no-recovery ]]; then
  wait_for 10000 ended "$launched" || fail "mpirun still runs 10 s after the host died"
  status=0
  wait "$launched" || status=$?
  ((status != 0)) || fail "mpirun exited 0 though a host died"
  echo "OK: without recovery mpirun ended the job with status $status within $waited_ms ms"
  exit 0
fi

survivors=(0 1 2 3 4 5 6 7 12 13 14 15)
survivors_done() {
  local r
  for r in "${survivors[@]}"; do [[ -e $statuses/rank.$r ]] || return 1; done
}
wait_for 30000 survivors_done
kill -KILL "$launched" 2>/dev/null
wait "$launched" 2>/dev/null
cat "$TMPDIR/out"
for r in "${survivors[@]}"; do
  got=$(cat "$statuses/rank.$r" 2>/dev/null || echo none)
  [[ $got == 0 ]] || { cat "$TMPDIR/err" >&2; fail "survivor rank $r exited with $got, not 0"; }
done
for r in 8 9 10 11; do [[ -e $statuses/rank.$r ]] && fail "rank $r of the killed host wrote a status"; done
grep -q '^  step 2: ranks 8,9,10,11 lost; rebuilt in [0-9]* ms on 12 ranks' "$TMPDIR/out" ||
  fail "no rebuild on 12 ranks at step 2"
last=$(tail -n 1 "$TMPDIR/out")
[[ $last == "elastic: recovered: "*"; 4 steps on 12 of 16 ranks, every number checked" ]] ||
  fail "the last line is not elastic's recovery: $last"
echo "OK: the 12 survivors rebuilt without host2 and finished; mpirun ended here once they had"
