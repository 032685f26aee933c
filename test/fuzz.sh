#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (argument: a go duration,
# default 5s) and prints executions and findings per target. New failing
# inputs are kept by `go test -fuzz` in the package's testdata/fuzz/.
#
# A target fails when it writes a reproducer. Go 1.26's fuzz coordinator can
# also report its own -fuzztime deadline as a failure without any input
# (go.dev/issue/75804, fixed in Go 1.27): such a run is retried once and, if
# it recurs, reported as that flake rather than as a finding.
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

corpus() { ls "$1/testdata/fuzz/$2" 2>/dev/null | sort; }

printf '%-20s %-20s %12s  %s\n' package target executions result
fail=0
for t in "${targets[@]}"; do
  read -r pkg name <<<"$t"
  res=""
  for attempt in 1 2; do
    before=$(corpus "$pkg" "$name")
    if out=$(go test -run '^$' -fuzz "^${name}\$" -fuzztime "$time" "$pkg" 2>&1); then res=ok; break; fi
    if [ "$(corpus "$pkg" "$name")" != "$before" ]; then res="FAILED: reproducer written"; break; fi
    res="flake without reproducer (go.dev/issue/75804)"
  done
  execs=$(grep -oE 'execs: [0-9]+' <<<"$out" | tail -1 | grep -oE '[0-9]+' || echo 0)
  printf '%-20s %-20s %12s  %s\n' "$pkg" "$name" "$execs" "$res"
  if [[ "$res" == FAILED* ]]; then
    fail=1
    echo "$out" | tail -30
  fi
done
exit $fail
