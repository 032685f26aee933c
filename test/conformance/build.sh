#!/usr/bin/env bash
# Builds what the conformance run needs, from the Go module proxy, into a cache keyed by the
# Kubernetes version and this module's sources (a second call with the same ones does nothing):
#   storage.test  Kubernetes' external storage suite (`go test -c` of this module)
#   kubectl       the suite shells out to it (-kubectl-path)
#   agnhost       the e2e-test-images/agnhost image's binary (static)
#   ginkgo        the ginkgo CLI, which runs storage.test in parallel processes
# Prints the directory that holds them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=v1.37.2
cache=${PLINTH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plinth}
sum=$(cd "$here" && cat go.mod go.sum *_test.go | sha256sum | cut -c1-12)
bin=$cache/conformance-k8s-$k8s-$sum
mkdir -p "$bin"
# One build at a time: a second call (CI starts one early, in the background) waits for the
# first and then finds everything built.
exec 9>"$bin/.build.lock"
flock 9
ldflags="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37"
build() { # name, package, go command...
	local name=$1 pkg=$2
	shift 2
	[[ -x $bin/$name ]] && return
	echo "building $name for Kubernetes $k8s" >&2
	local start=$SECONDS
	(cd "$here" && "$@" -o "$bin/$name.tmp" "$pkg") >&2
	mv "$bin/$name.tmp" "$bin/$name"
	echo "built $name in $((SECONDS - start))s" >&2
}
build storage.test . go test -c -trimpath -ldflags "$ldflags"
build kubectl k8s.io/kubernetes/cmd/kubectl go build -trimpath -ldflags "$ldflags"
build agnhost k8s.io/kubernetes/test/images/agnhost env CGO_ENABLED=0 go build -trimpath -ldflags "-s -w"
build ginkgo github.com/onsi/ginkgo/v2/ginkgo go build -trimpath
echo "$bin"
