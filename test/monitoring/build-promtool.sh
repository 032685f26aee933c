#!/usr/bin/env bash
# Builds Prometheus' promtool, at the version promtool/go.mod pins, from the Go module proxy into a
# cache keyed by that version (as test/e2e/build-cluster.sh does for the cluster); a second call
# with the same version does nothing (about 6.5 minutes cold on 2 cores shared with a CI run, the
# modules downloaded; 1 s for make alerts after). Prints the path of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mod=github.com/prometheus/prometheus
ver=$(cd "$here/promtool" && go list -m -f '{{.Version}}' "$mod")
cache=${PLINTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plinth}
bin=$cache/promtool-$ver
mkdir -p "$bin"
# One build at a time: a second call waits for the first and then finds it built.
exec 9>"$bin/.build.lock"
flock 9
if [[ ! -x $bin/promtool ]]; then
	echo "building promtool ($mod $ver)" >&2
	# remove_all_sd: without Prometheus' service discovery plugins (cloud SDKs), which rule
	# checks and rule unit tests do not use: 358 CPU seconds cold instead of 899.
	(cd "$here/promtool" && go build -trimpath -tags remove_all_sd \
		-ldflags "-X github.com/prometheus/common/version.Version=$ver" \
		-o "$bin/promtool.tmp" "$mod/cmd/promtool") >&2
	mv "$bin/promtool.tmp" "$bin/promtool"
fi
echo "$bin/promtool"
