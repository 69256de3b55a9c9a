#!/usr/bin/env bash
# Runs print_groups under mpiexec and checks that every rank's groups, as it prints them,
# are exactly what pcx-plan prints for that rank (same kinds, same order, same members).
#
#   compare_with_plan.sh [--nodes-of N] <pcx-plan> <world> <launch command...> -- <flags...>
#
# <launch command> is the whole command that starts print_groups on <world> ranks
# (mpiexec -n <world> ... print_groups); <flags> go to both programs, but that with
# --nodes-of N, pcx-plan gets --ranks-per-node N where the flags say auto: the nodes the
# launch is known to make, which print_groups must find. Bash only: no
# python or jq, so the JSON is compared as text (both programs print nlohmann's
# compact dump, and a rank's object holds only arrays and print_groups' communicator count, so it
# has no inner braces).
set -u

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

nodes_of=
if [[ ${1-} == --nodes-of ]]; then
  nodes_of=${2-}
  shift 2
fi
[[ $# -ge 3 ]] || fail "usage: $0 [--nodes-of N] <pcx-plan> <world> <launch command...> -- <flags...>"
plan=$1
world=$2
shift 2
launch=()
while [[ $# -gt 0 && $1 != -- ]]; do
  launch+=("$1")
  shift
done
[[ $# -gt 0 ]] || fail "missing -- between the launch command and the flags"
shift
flags=("$@")

# pcx-plan needs --world; print_groups takes it only when the flags give it.
plan_flags=("${flags[@]}")
world_given=false
for flag in "${flags[@]}"; do
  [[ $flag == --world || $flag == --world=* ]] && world_given=true
done
$world_given || plan_flags=(--world "$world" "${flags[@]}")
if [[ -n $nodes_of ]]; then
  replaced=false
  for ((i = 1; i < ${#plan_flags[@]}; ++i)); do
    if [[ ${plan_flags[i - 1]} == --ranks-per-node && ${plan_flags[i]} == auto ]]; then
      plan_flags[i]=$nodes_of
      replaced=true
    fi
  done
  $replaced || fail "--nodes-of $nodes_of: the flags have no --ranks-per-node auto"
fi

tmp=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

echo "+ ${launch[*]} ${flags[*]}"
"${launch[@]}" "${flags[@]}" >"$tmp/stdout" 2>"$tmp/stderr"
status=$?
if [[ $status -ne 0 ]]; then
  cat "$tmp/stderr" >&2
  fail "print_groups exited with status $status"
fi
[[ -s $tmp/stderr ]] && { echo "print_groups stderr:"; cat "$tmp/stderr"; }
[[ $(wc -l <"$tmp/stdout") -eq 1 ]] || { cat "$tmp/stdout" >&2; fail "expected one line of JSON on stdout"; }
json=$(<"$tmp/stdout")

# One entry per rank, '"r":{...}', in rank order; together with the envelope they must
# rebuild the whole output, so nothing else was printed.
mapfile -t entries < <(grep -o '"[0-9][0-9]*":{[^{}]*}' <<<"$json")
[[ ${#entries[@]} -eq $world ]] || { echo "$json" >&2; fail "expected $world ranks, got ${#entries[@]}"; }
joined=$(IFS=,; echo "${entries[*]}")
[[ $json == "{\"world_size\":$world,\"ranks\":{$joined}}" ]] ||
  { echo "$json" >&2; fail "output is not {\"world_size\":$world,\"ranks\":{...}}"; }

differences=0
for ((r = 0; r < world; ++r)); do
  expected=$("$plan" "${plan_flags[@]}" --rank "$r" --format json 2>"$tmp/plan_stderr")
  status=$?
  [[ $status -eq 0 ]] || { cat "$tmp/plan_stderr" >&2; fail "pcx-plan --rank $r exited with status $status"; }
  # --megatron adds the rank's coordinates, which print_groups does not print.
  if [[ $expected == *',"coordinates":'*',"groups":'* ]]; then
    expected="${expected%%,\"coordinates\":*},\"groups\":${expected#*,\"groups\":}"
  fi
  prefix="{\"world_size\":$world,\"rank\":$r,\"groups\":"
  [[ $expected == "$prefix"*"}" ]] || fail "unexpected pcx-plan output: $expected"
  want=${expected#"$prefix"}
  want=${want%\}}
  got=${entries[r]#"\"$r\":"}
  # print_groups adds the rank's communicator count, which pcx-plan does not know.
  [[ $got =~ ,\"communicators\":[0-9]+\}$ ]] || fail "rank $r has no communicator count: $got"
  got="${got%,\"communicators\":*}}"
  [[ ${entries[r]} == "\"$r\":"* ]] || fail "entry $r is not rank $r: ${entries[r]}"
  if [[ $got != "$want" ]]; then
    echo "rank $r differs:" >&2
    echo "  print_groups: $got" >&2
    echo "  pcx-plan:     $want" >&2
    differences=$((differences + 1))
  fi
done
[[ $differences -eq 0 ]] || fail "$differences of $world ranks differ from pcx-plan"
echo "OK: $world ranks match pcx-plan ${plan_flags[*]}"
