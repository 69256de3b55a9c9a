#!/usr/bin/env bash
# Runs elastic and checks that it recovered: exit status 0 and a last line that starts with
# "elastic: recovered". Exit status 77 (no CUDA device for --backend nccl) is passed on.
#
#   check_elastic.sh <launch command and flags...>
set -u
output=$("$@" 2>&1)
status=$?
printf '%s\n' "$output"
[[ $status -eq 77 ]] && exit 77
if [[ $status -ne 0 ]]; then
  echo "FAIL: elastic exited with status $status" >&2
  exit 1
fi
last=$(printf '%s\n' "$output" | tail -n 1)
if [[ $last != "elastic: recovered"* ]]; then
  echo "FAIL: the last line is not 'elastic: recovered ...': $last" >&2
  exit 1
fi
