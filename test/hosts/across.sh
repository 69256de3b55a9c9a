#!/usr/bin/env bash
# Inside scripts/hosts: a program on <ranks> ranks across the bed's hosts, host by host
# (each host's slots filled before the next).
#
#   across.sh <ranks> <program> [args...]
source "$(dirname "${BASH_SOURCE[0]}")/bed.sh"
ranks=$1
shift
job --hostfile "$PCX_HOSTFILE" --map-by slot -n "$ranks" "$@"
