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

# The bed's hosts in order, one per line.
bed_hosts() {
  tr ' ' '\n' <<<"$PCX_HOSTS"
}
