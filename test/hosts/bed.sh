# Sourced by the scripts of test/hosts, which run inside scripts/hosts: how they start a
# job across the bed's hosts and how they fail.

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

[[ -n ${PCX_HOSTS_BED:-} ]] || fail "run inside the host bed: scripts/hosts -- bash $0 ..."

# job <mpirun flags and program...>: mpirun on host0 across the bed; Open MPI's own
# settings for the bed come from the environment (scripts/hosts).
job() {
  "$PCX_HOSTS_TOOL" on host0 mpirun "$@"
}

# wait_for <milliseconds> <command...>: runs the command every 50 ms until it succeeds
# (status 0) or the time is up (status 1); $waited_ms is the time it took.
wait_for() {
  local limit=$1
  shift
  for ((waited_ms = 0; waited_ms <= limit; waited_ms += 50)); do
    "$@" && return 0
    sleep 0.05
  done
  return 1
}

# ended <pid>: whether the process has ended.
ended() { ! kill -0 "$1" 2>/dev/null; }
