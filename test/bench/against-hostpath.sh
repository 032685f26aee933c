#!/bin/bash
# Runs `make bench` against csi-driver-host-path, the reference CSI driver,
# built from a checkout of github.com/kubernetes-csi/csi-driver-host-path
# (it vendors its dependencies, so no module download is needed):
#
#   test/bench/against-hostpath.sh /path/to/csi-driver-host-path [bench flags...]
#
# Its state directory (where its volumes live) is an xfs on a loop device,
# as plinth's pool is in the bench. Everything is removed afterwards.
set -euo pipefail
src=${1:?usage: $0 CSI-DRIVER-HOST-PATH-CHECKOUT [bench flags...]}
shift
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d /tmp/plinth-hostpath.XXXXXX)
pid=
cleanup() {
	[ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	umount "$work/state" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
(cd "$src" && GOFLAGS=-mod=vendor go build -o "$work/hostpathplugin" ./cmd/hostpathplugin)
truncate -s 16G "$work/state.img"
mkfs.xfs -q -f -m reflink=1 "$work/state.img"
mkdir "$work/state"
mount -o loop "$work/state.img" "$work/state"
"$work/hostpathplugin" --endpoint "unix://$work/csi.sock" --nodeid bench \
	--statedir "$work/state" --v=1 >"$work/hostpath.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -S "$work/csi.sock" ] && break; sleep 0.1; done
make -C "$repo" bench BENCH_FLAGS="-against unix://$work/csi.sock $*"
