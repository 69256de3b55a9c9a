#!/usr/bin/env bash
# Starts one rank of a sample and records its exit status in $PCX_RANK_STATUS_DIR, one
# file per rank. It exits 0 itself: mpiexec reports only the first non-zero status and
# kills the other ranks at once, which would hide both their statuses and a rank that
# hangs.
#
#   rank_status.sh <program> <flags...>
"$@"
echo "$?" >"$PCX_RANK_STATUS_DIR/rank.${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-$$}}"
