#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (argument: a go duration,
# default 5s) and prints executions and findings per target. New failing
# inputs are kept by `go test -fuzz` in the package's testdata/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
time="${1:-5s}"
targets=(
  "./pkg/pool FuzzValidateID"
  "./pkg/volume FuzzParseParams"
  "./pkg/volume FuzzSize"
  "./pkg/csi FuzzMountFlags"
  "./pkg/csi FuzzPathsCheck"
  "./pkg/csi FuzzPageToken"
  "./pkg/device FuzzParseConfig"
  "./pkg/device FuzzDiscoverSysfs"
  "./pkg/pool/btrfs FuzzParseQgroups"
  "./pkg/app FuzzParsePoolSpec"
)
printf '%-20s %-20s %12s  %s\n' package target executions result
fail=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  if out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$time" "$pkg" 2>&1); then res=ok; else res=FAILED; fail=1; fi
  execs=$(grep -oE 'execs: [0-9]+' <<<"$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
  printf '%-20s %-20s %12s  %s\n' "$pkg" "$name" "$execs" "$res"
  [ "$res" = ok ] || echo "$out" | tail -30
done
exit $fail
