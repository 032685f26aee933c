#!/usr/bin/env bash
# Builds etcd and the Kubernetes control plane and kubelet the end-to-end suite runs, from the Go
# module proxy, into a cache keyed by version. A second call with the same versions does nothing.
# Prints the directory that holds the binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
etcd=v3.7.3
cache=${PLINTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plinth}
bin=$cache/cluster-k8s-$k8s-etcd-$etcd
mkdir -p "$bin"
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
echo "$bin"
