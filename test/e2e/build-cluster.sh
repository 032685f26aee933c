#!/usr/bin/env bash
# Builds etcd and the Kubernetes control plane and kubelet the end-to-end suite runs, from the Go
# module proxy, into a cache keyed by version. A second call with the same versions does nothing.
# Also builds the CSI snapshot controller and copies its v1 CRDs (VolumeSnapshot and its
# content and class) into snapshotter-VERSION below that directory, at the version
# test/e2e/snapshot-controller pins, and points the link snapshotter there (a new snapshotter
# version keeps the Kubernetes binaries; the cluster package looks only at the link).
# Likewise containerd v2 (CDI injection), its runc shim and ctr, at the version
# test/e2e/containerd pins, into containerd-VERSION below that directory, and the link
# containerd there (about 1.5 minutes cold on 2 cores: 83 s with an empty build cache and the
# modules downloaded).
# Prints the directory that holds the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
etcd=v3.7.3
cache=${PLINTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plinth}
bin=$cache/cluster-k8s-$k8s-etcd-$etcd
mkdir -p "$bin"
# One build at a time: a second call (CI starts one early, in the background) waits for the
# first and then finds everything built.
exec 9>"$bin/.build.lock"
flock 9
if [[ ! -x $bin/etcd ]]; then
	(cd "$here/etcd" && go build -trimpath -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3) >&2
	mv "$bin/etcd.tmp" "$bin/etcd"
fi
want=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
missing=0
for b in "${want[@]}"; do [[ -x $bin/$b ]] || missing=1; done
if ((missing)); then
	echo "building Kubernetes $k8s (about 6 minutes cold on 2 cores)" >&2
	tmp=$(mktemp -d "$bin/build.XXXX")
	ldflags="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
	(cd "$here" && go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet) >&2
	for b in "${want[@]}"; do mv "$tmp/$b" "$bin/$b"; done
	rmdir "$tmp"
fi

snapmod=github.com/kubernetes-csi/external-snapshotter
snapdir=$here/snapshot-controller
snap=$(cd "$snapdir" && go list -m -f '{{.Version}}' "$snapmod/v8")
sbin=$bin/snapshotter-$snap
mkdir -p "$sbin/snapshot-crds"
if [[ ! -x $sbin/snapshot-controller ]]; then
	echo "building snapshot-controller $snap" >&2
	(cd "$snapdir" && go build -trimpath -ldflags "-X main.version=$snap" \
		-o "$sbin/snapshot-controller.tmp" "$snapmod/v8/cmd/snapshot-controller") >&2
	mv "$sbin/snapshot-controller.tmp" "$sbin/snapshot-controller"
fi
crds=(volumesnapshots volumesnapshotcontents volumesnapshotclasses)
nocrd=0
for c in "${crds[@]}"; do [[ -f $sbin/snapshot-crds/snapshot.storage.k8s.io_$c.yaml ]] || nocrd=1; done
if ((nocrd)); then
	# The CRDs of the client module the controller is built with (its go.mod pins it).
	client=$(cd "$snapdir" && go list -m -f '{{.Version}}' "$snapmod/client/v8")
	src=$(cd "$snapdir" && go mod download -json "$snapmod/client/v8@$client" |
		sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
	if [[ ! -d $src/config/crd ]]; then
		echo "no config/crd in $snapmod/client/v8@$client (${src:-not downloaded})" >&2
		exit 1
	fi
	for c in "${crds[@]}"; do
		install -m 0644 "$src/config/crd/snapshot.storage.k8s.io_$c.yaml" "$sbin/snapshot-crds/"
	done
fi
# Replaced by a rename, so that a run reading it never sees it missing.
ln -sfn "snapshotter-$snap" "$bin/snapshotter.tmp"
mv -Tf "$bin/snapshotter.tmp" "$bin/snapshotter"

ctrdmod=github.com/containerd/containerd/v2
ctrddir=$here/containerd
ctrd=$(cd "$ctrddir" && go list -m -f '{{.Version}}' "$ctrdmod")
cbin=$bin/containerd-$ctrd
ctrdwant=(containerd containerd-shim-runc-v2 ctr)
missing=0
for b in "${ctrdwant[@]}"; do [[ -x $cbin/$b ]] || missing=1; done
if ((missing)); then
	echo "building containerd $ctrd (about 1.5 minutes cold on 2 cores)" >&2
	mkdir -p "$cbin"
	tmp=$(mktemp -d "$cbin/build.XXXX")
	# Static, as containerd's release builds its shim: no btrfs, zfs or devmapper snapshotters.
	(cd "$ctrddir" && CGO_ENABLED=0 go build -trimpath -tags "no_btrfs no_zfs no_devmapper" \
		-ldflags "-X $ctrdmod/version.Version=$ctrd" -o "$tmp/" \
		"$ctrdmod/cmd/containerd" "$ctrdmod/cmd/containerd-shim-runc-v2" "$ctrdmod/cmd/ctr") >&2
	for b in "${ctrdwant[@]}"; do mv "$tmp/$b" "$cbin/$b"; done
	rmdir "$tmp"
fi
ln -sfn "containerd-$ctrd" "$bin/containerd.tmp"
mv -Tf "$bin/containerd.tmp" "$bin/containerd"
echo "$bin"
