#!/usr/bin/env bash
# Inside scripts/hosts (4 hosts of 4 slots): what a context sees of real hosts.
#
#   node_map.sh <host_map> <pcx-plan> <rank_status.sh>
#
# 1. 16 ranks placed host by host: every rank finds 4 nodes of 4 from the host names
#    (Communicator::nodes()) and --ranks-per-node auto takes 4;
# 2. --ranks-per-node 8 against those nodes, hosts of unequal size and ranks placed round
#    robin: every rank prints the documented ConfigError and exits 2;
# 3. the context's placement warnings on the real nodes are pcx-plan --check's findings
#    for nodes of 4, word for word.
# The expected lines are built here from the placement rule, not taken from a run.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/bed.sh"
host_map=$1
plan=$2
rank_status=$3
(($(wc -w <<<"$PCX_HOSTS") == 4)) || fail "needs a bed of 4 hosts, not: $PCX_HOSTS"

# map <exit status> <ranks> <mpirun flags...> -- <host_map flags...>: runs host_map, checks
# that every rank exited with <exit status>, and leaves its lines in rank order in $lines.
map() {
  local expected=$1 ranks=$2 flags=()
  shift 2
  while [[ $1 != -- ]]; do
    flags+=("$1")
    shift
  done
  shift
  echo "+ mpirun -n $ranks ${flags[*]} host_map $*"
  local statuses=$TMPDIR/statuses
  rm -rf "$statuses" && mkdir "$statuses"
  PCX_RANK_STATUS_DIR=$statuses job -x PCX_RANK_STATUS_DIR -n "$ranks" "${flags[@]}" \
    bash "$rank_status" "$host_map" "$@" >"$TMPDIR/out" 2>"$TMPDIR/err" ||
    { cat "$TMPDIR/out" "$TMPDIR/err" >&2; fail "mpirun failed"; }
  for ((r = 0; r < ranks; ++r)); do
    local got
    got=$(cat "$statuses/rank.$r" 2>/dev/null || echo none)
    [[ $got == "$expected" ]] || { cat "$TMPDIR/out" "$TMPDIR/err" >&2; fail "rank $r exited with $got, not $expected"; }
  done
  lines=$(grep '^rank ' "$TMPDIR/out" | sort -s -t ' ' -k2,2n)
}

# expect <expected lines>: $lines must be exactly these.
expect() {
  [[ $lines == "$1" ]] && return
  diff <(echo "$1") <(echo "$lines") >&2
  fail "host_map's lines differ from the expected ones (< expected, > printed)"
}

# nodes <ranks> <node of rank r as an arithmetic expression of r>
nodes() {
  local r out=()
  for ((r = 0; r < $1; ++r)); do out+=($(($2))); done
  echo "${out[*]}"
}

# each <ranks> <host of r> <nodes> <ending>: the line of every rank.
each() {
  local r
  for ((r = 0; r < $1; ++r)); do echo "rank $r: host host$(($2)): nodes $3: $4"; done
}

# 1. Host by host: nodes of 4 found and taken.
blocks=$(nodes 16 'r / 4 * 4')
map 0 16 --hostfile "$PCX_HOSTFILE" --map-by ppr:4:node -- --ep 4 --zero-hpz 4 --ranks-per-node auto
expect "$(each 16 'r / 4' "$blocks" 'ranks per node 4')"
echo "OK: 16 ranks on 4 hosts: 4 nodes of 4 detected on every rank"

# 2. What the context refuses, on every rank alike.
map 2 16 --hostfile "$PCX_HOSTFILE" --map-by ppr:4:node -- --ep 4 --ranks-per-node 8
expect "$(each 16 'r / 4' "$blocks" "error: ranks per node 8 in the configuration disagrees with the world \
communicator's 4 nodes of 4 ranks (to simulate nodes, set ContextOptions::check_nodes to false)")"
echo "OK: --ranks-per-node 8 on nodes of 4 refused on every rank"

{
  echo "host0 slots=4"
  echo "host1 slots=4"
  echo "host2 slots=4"
  echo "host3 slots=2"
} >"$TMPDIR/unequal"
map 2 14 --hostfile "$TMPDIR/unequal" --map-by slot -- --ep 2 --ranks-per-node auto
expect "$(each 14 'r / 4' "$(nodes 14 'r / 4 * 4')" "error: the world communicator's nodes differ in size: the \
node of rank 0 has 4 ranks, the node of rank 12 has 2 (give every host the same number of ranks)")"
echo "OK: hosts of 4, 4, 4 and 2 ranks refused on every rank"

map 2 16 --hostfile "$PCX_HOSTFILE" --map-by node -- --ep 4 --ranks-per-node auto
expect "$(each 16 'r % 4' "$(nodes 16 'r % 4')" "error: the world communicator's nodes are not blocks of 4 \
consecutive ranks: rank 1 is on the node of rank 1, not on that of rank 0 (number ranks node by node, e.g. mpiexec \
--map-by core)")"
echo "OK: ranks placed round robin refused on every rank"

# 3. Placement warnings on the real nodes against pcx-plan --check with nodes of 4: one
#    layout whose groups cannot fit, one in a needless order, one that is right.
findings=0
for layout in "--tp 8" "--tp 4 --order dp-tp" "--tp 4 --ep 2"; do
  read -r -a flags <<<"$layout"
  map 0 16 --hostfile "$PCX_HOSTFILE" --map-by ppr:4:node -- "${flags[@]}" --ranks-per-node auto
  warned=$(grep '^rank 0: warning: ' <<<"$lines" | sed 's/^rank 0: warning: pcx: //')
  # pcx-plan --check: exit 3 and a line per finding, or exit 0 and one line that says so.
  status=0
  checked=$("$plan" --world 16 "${flags[@]}" --ranks-per-node 4 --check) || status=$?
  case $status in
    0) checked= ;;
    3) checked=$(sed 's/^placement: //' <<<"$checked") ;;
    *) fail "pcx-plan --check $layout exited with status $status" ;;
  esac
  [[ $warned == "$checked" ]] || fail "$layout: the context warns '$warned', pcx-plan --check says '$checked'"
  grep -q '^rank [1-9][0-9]*: warning' <<<"$lines" && fail "$layout: a rank other than 0 warned"
  [[ -n $checked ]] && findings=$((findings + 1))
  echo "OK: $layout: the context's warnings are pcx-plan --check's: ${checked:-none}"
done
((findings == 2)) || fail "expected findings for two of the three layouts, got $findings"
