# plinth — see README.md. Targets that touch loop devices and mounts need root.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# The commit, -dirty with changes to tracked files (as VERSION's --dirty); stamped, since the Go
# toolchain stamps none where git is missing or refuses the tree. Empty outside a git checkout:
# the binaries then print the toolchain's stamp, or unknown.
COMMIT   ?= $(shell c=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD -- 2>/dev/null && echo $$c || echo $$c-dirty; })
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
RUN_ROOT ?= $(CURDIR)/_run
GO       ?= go
SHELL    := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: all build cross image image-lock image-reproducible release push run test reliability kubelet e2e upgrade move-kills bench-nodes bench-scale conformance chart alerts generate verify-generated unit sanity bench lint deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/plinth ./cmd/plinth
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kubectl-plinth ./cmd/kubectl-plinth

# Cross-compiled binaries for a release or a multi-architecture push: plinth for linux/amd64 and
# linux/arm64, kubectl-plinth for linux and darwin on amd64 and arm64 (static, CGO_ENABLED=0).
CROSS_OUT ?= $(CURDIR)/_out/release-build
cross:
	mkdir -p $(CROSS_OUT)
	for a in amd64 arm64; do CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
	  -o $(CROSS_OUT)/plinth_linux_$$a ./cmd/plinth || exit 1; done
	for o in linux darwin; do for a in amd64 arm64; do CGO_ENABLED=0 GOOS=$$o GOARCH=$$a $(GO) build -trimpath \
	  -ldflags '$(LDFLAGS)' -o $(CROSS_OUT)/kubectl-plinth_$${o}_$$a ./cmd/kubectl-plinth || exit 1; done; done

# plinth's OCI image without a Docker engine (hack/image): a plinth binary and the filesystem tools
# plinth node runs, with their libraries and their packages' copyright files, from the Debian 12
# packages hack/image/debian.lock pins for each architecture (fetched from deb.debian.org by pool
# path, SHA-256 checked, cached in ~/.cache/plinth/debs). Every file is dated the commit's time
# (SOURCE_DATE_EPOCH), so two builds of one commit give one digest (make image-reproducible).
# make image: this machine's architecture, tagged $(IMAGE):$(TAG) (the chart's appVersion, which
# the chart and deploy/base default to: one tag everywhere), written to $(IMAGE_TAR) for
# `ctr -n k8s.io images import` or `docker load`. make image-lock pins the packages Debian has now.
# docs/install.md says how to point kustomize or Helm at another image.
IMAGE       ?= plinth.example.com/plinth
IMAGE_TAR   ?= $(CURDIR)/_out/plinth-image.tar
IMAGE_TAGS  ?=
APP_VERSION := $(shell sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\} *$$/\1/p' charts/plinth/Chart.yaml)
TAG         ?= $(APP_VERSION)
REVISION    := $(shell git rev-parse HEAD 2>/dev/null)
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
HOST_ARCH   := $(shell $(GO) env GOARCH)
IMAGE_FLAGS  = --version $(VERSION) --revision '$(REVISION)' --epoch $(SOURCE_DATE_EPOCH)
image: build
	mkdir -p $(dir $(IMAGE_TAR))
	$(GO) run ./hack/image --plinth $(HOST_ARCH)=bin/plinth --tag $(IMAGE):$(TAG) $(foreach t,$(IMAGE_TAGS),--tag $(t)) \
	  $(IMAGE_FLAGS) --out $(IMAGE_TAR)

image-lock:
	$(GO) run ./hack/image/lock --out hack/image/debian.lock

# Builds the image twice, the second time with an empty package cache, and compares the tarballs.
image-reproducible: build
	d=$$(mktemp -d) && trap 'rm -rf $$d' EXIT && \
	  $(GO) run ./hack/image --plinth $(HOST_ARCH)=bin/plinth --tag $(IMAGE):$(TAG) $(IMAGE_FLAGS) --out $$d/1.tar && \
	  $(GO) run ./hack/image --plinth $(HOST_ARCH)=bin/plinth --tag $(IMAGE):$(TAG) $(IMAGE_FLAGS) --cache $$d/debs --out $$d/2.tar && \
	  cmp $$d/1.tar $$d/2.tar && echo "two builds, one image: $$(sha256sum < $$d/1.tar | cut -d' ' -f1)"

# make release VERSION=vX.Y.Z: under $(RELEASE_DIR), the image for linux/amd64 and linux/arm64 as an
# OCI image index (an OCI image layout tarball, tagged $(IMAGE):$(VERSION)), the chart packaged with
# its version and appVersion set (helm package of a copy), kubectl-plinth for linux and darwin on
# amd64 and arm64 (reproducible .tar.gz with LICENSE) with a krew manifest (plinth.yaml), SPDX SBOMs
# of each binary's Go modules and of the image's Debian packages, and SHA256SUMS (hack/release).
# The version is stamped into the binaries, the image's labels, the chart and the image's tag.
RELEASE_DIR ?= $(CURDIR)/_out/release
IS_RELEASE  := $(shell echo '$(VERSION)' | grep -Eq '^v(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?$$' && echo yes)
release:
	@$(GO) run ./hack/release -check '$(VERSION)'
	rm -rf $(RELEASE_DIR) $(CROSS_OUT) && mkdir -p $(RELEASE_DIR)
	$(MAKE) cross
	$(GO) run ./hack/image --plinth amd64=$(CROSS_OUT)/plinth_linux_amd64 --plinth arm64=$(CROSS_OUT)/plinth_linux_arm64 \
	  --tag $(IMAGE):$(VERSION) $(IMAGE_FLAGS) --oci-out $(RELEASE_DIR)/plinth-image_$(VERSION).oci.tar
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && cp -r charts/plinth $$tmp/ && \
	  helm package $$tmp/plinth --version $(VERSION:v%=%) --app-version $(VERSION) -d $(RELEASE_DIR)
	$(GO) run ./hack/release -version $(VERSION) -epoch $(SOURCE_DATE_EPOCH) -bin $(CROSS_OUT) -out $(RELEASE_DIR) \
	  -chart $(RELEASE_DIR)/plinth-$(VERSION:v%=%).tgz

# make push IMAGE=registry/repo [CHART_REPO=registry/charts]: the image index (linux/amd64 and
# linux/arm64) to $(IMAGE):$(TAG) and the chart to oci://$(CHART_REPO), with the credentials of
# ~/.docker/config.json and helm's registry login (HELM_PUSH_FLAGS=--plain-http for a registry
# without TLS). With VERSION=vX.Y.Z: that release's index and
# chart from $(RELEASE_DIR) (made first if missing), the index tagged $(IMAGE):$(VERSION).
CHART_REPO  ?= $(patsubst %/,%,$(dir $(IMAGE)))/charts
HELM_PUSH_FLAGS ?=
push:
ifeq ($(IS_RELEASE),yes)
	test -f $(RELEASE_DIR)/plinth-image_$(VERSION).oci.tar || $(MAKE) release
	$(GO) run ./hack/image --push-oci $(RELEASE_DIR)/plinth-image_$(VERSION).oci.tar --tag $(IMAGE):$(VERSION)
	helm push $(HELM_PUSH_FLAGS) $(RELEASE_DIR)/plinth-$(VERSION:v%=%).tgz oci://$(CHART_REPO)
else
	$(MAKE) cross
	$(GO) run ./hack/image --plinth amd64=$(CROSS_OUT)/plinth_linux_amd64 --plinth arm64=$(CROSS_OUT)/plinth_linux_arm64 \
	  --tag $(IMAGE):$(TAG) $(foreach t,$(IMAGE_TAGS),--tag $(t)) $(IMAGE_FLAGS) --push
	tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && cp -r charts/plinth $$tmp/ && \
	  helm package $$tmp/plinth --app-version $(TAG) -d $$tmp && helm push $(HELM_PUSH_FLAGS) $$tmp/plinth-*.tgz oci://$(CHART_REPO)
endif

# Runs plinth standalone for real: a file pool in $(RUN_ROOT)/pools/default,
# CSI on unix://$(RUN_ROOT)/csi.sock. Ctrl-C stops it.
run: build
	mkdir -p -m 0750 $(RUN_ROOT)
	./bin/plinth standalone --root $(RUN_ROOT) --endpoint unix://$(RUN_ROOT)/csi.sock --allowed-path /tmp --allowed-path /var/lib/kubelet --v=2

# The whole suite: formatting, vet, generated CRDs, unit tests, csi-sanity
# (4 configs), the alert rules' unit tests, recovery and bad-input tests on real loop devices and mounts,
# the kubelet's own code against plinth, and the end-to-end cluster suite.
test: lint verify-generated
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) alerts
	$(MAKE) reliability
	$(MAKE) kubelet
	$(MAKE) e2e

# Faults and bad input, bounded for CI; longer with e.g.
#   make reliability KILLS=1000 FUZZTIME=10m
KILLS    ?= 100
FUZZTIME ?= 5s
reliability:
	PLINTH_KILLS=$(KILLS) $(GO) test -count=1 -v -timeout 60m -run '^TestKillAnywhere$$' ./test/standalone/ 2>&1 | grep -E '^(=== RUN|--- |PASS|FAIL|ok)|kill_test'
	./test/fuzz.sh $(FUZZTIME)

# The kubelet's own code (k8s.io/kubernetes: device manager, plugin manager) against plinth;
# a module of its own (about 3 minutes to build cold).
kubelet:
	cd test/kubelet && $(GO) test -count=1 -timeout 20m ./...

# A real single-node cluster (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and containerd v2 with CDI built from Go modules and
# cached by version; runc from Debian), plinth installed from deploy/overlays/e2e,
# the in-cluster scenarios, and Kubernetes' external storage suite's bounded
# selection (no [Slow] or [Serial] specs; test/conformance, built and cached by
# version). Root. About 7.5 minutes more on a cold cache, 10 more for the suite.
# The suite also dry-runs every render of the Helm chart against the real API
# server and compares the chart's default render with deploy/base.
CHART_OUT ?= $(CURDIR)/_out/chart-renders
e2e: chart
	$(MAKE) image
	bin=$$(./test/e2e/build-cluster.sh) && cbin=$$(./test/conformance/build.sh) && cd test/e2e && \
	  PLINTH_CLUSTER_BIN=$$bin PLINTH_CONFORMANCE_BIN=$$cbin PLINTH_CONFORMANCE=quick PLINTH_CHART_RENDERS=$(CHART_OUT) \
	  PLINTH_IMAGE_TAR=$(IMAGE_TAR) \
	  $(GO) test -trimpath -count=1 -v -timeout 60m ./... 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

# The upgrade test alone (test/e2e/zzz_upgrade_test.go, also in make e2e): the newest release
# RELEASES names, built from history and installed with its own chart by Helm, volumes on every
# pool type, a snapshot, a clone and a device-plugin pod, then helm upgrade to this tree and helm
# rollback: no pod restarted, no mount changed, data intact. Root; needs the release's commit in
# this clone's history.
upgrade: chart
	$(MAKE) image
	bin=$$(./test/e2e/build-cluster.sh) && cd test/e2e && \
	  PLINTH_CLUSTER_BIN=$$bin PLINTH_CHART_RENDERS=$(CHART_OUT) PLINTH_IMAGE_TAR=$(IMAGE_TAR) \
	  $(GO) test -trimpath -count=1 -v -timeout 40m -run '^TestZZUpgrade$$' . 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

# Scale in the e2e cluster (issue 14): 50 simulated nodes (plinth's node-side code run in the test
# process, PLINTH_SIM_AGENTS=process for a `plinth node` process each; each with a Node object and
# a file pool on a tmpfs of its own, no kubelet), 1000 PVCs created at
# once (Immediate binding, 70% of all pools): PVC->PV latency and throughput, placement per node,
# the CSIStorageCapacity count, plinth controller's CPU seconds and peak RSS; then 500 PVCs bound
# at kube-controller-manager's default API QPS and at --kube-api-qps=100. Prints tables; fails on
# an over-committed pool, a missing or duplicate PV, or a timeout, never on a time. Root. make e2e
# runs the same test at 10 nodes and 100 PVCs, without the QPS batch (PLINTH_SIM_NODES, PLINTH_SIM_PVCS and
# PLINTH_SIM_QPS_PVCS set the sizes), and TestBindLatency's burst of 200 PVCs (make e2e: 1 and 50; PLINTH_BIND_BURSTS).
# Moves with a plinth process (the source's node agent, the target's, the controller) killed in
# each phase: every role in every phase, twice for a file pool's volume and once for a btrfs
# subvolume (36 moves; make test runs four of them).
move-kills:
	$(MAKE) image chart
	bin=$$(./test/e2e/build-cluster.sh) && cd test/e2e && PLINTH_CLUSTER_BIN=$$bin PLINTH_MOVE_KILLS=all \
	  PLINTH_CHART_RENDERS=$(CHART_OUT) PLINTH_IMAGE_TAR=$(IMAGE_TAR) \
	  $(GO) test -trimpath -count=1 -v -timeout 60m -run '^(TestZChartInstall|TestZNodes)$$/^(move-kills)?$$' . 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

bench-nodes:
	bin=$$(./test/e2e/build-cluster.sh) && cd test/e2e && \
	  PLINTH_CLUSTER_BIN=$$bin PLINTH_SIM_NODES=50 PLINTH_SIM_PVCS=1000 PLINTH_SIM_QPS_PVCS=500 PLINTH_BIND_BURSTS=1,50,200 \
	  $(GO) test -trimpath -count=1 -v -timeout 60m -run '^(TestBindLatency|TestSimulatedNodes)$$' . 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

# Issue 31's scale run: SCALE_NODES simulated nodes (plinth's node code in the test process) and a
# burst of SCALE_PVCS claims against the real plinth controller, API server and
# kube-controller-manager (at SCALE_KCM_ARGS), with the API server's requests by verb and resource,
# a CPU profile of the controller (_out/controller-cpu.pprof) and a failover with the burst's
# volumes in the caches. 1000 nodes and 10,000 claims take about an hour on 2 cores.
SCALE_NODES ?= 1000
SCALE_PVCS ?= 10000
SCALE_KCM_ARGS ?= --kube-api-qps=100 --kube-api-burst=200
bench-scale:
	$(MAKE) image chart
	mkdir -p _out && bin=$$(./test/e2e/build-cluster.sh) && cd test/e2e && \
	  PLINTH_CLUSTER_BIN=$$bin PLINTH_CHART_RENDERS=$(CHART_OUT) PLINTH_IMAGE_TAR=$(IMAGE_TAR) \
	  PLINTH_SIM_NODES=$(SCALE_NODES) PLINTH_SIM_PVCS=$(SCALE_PVCS) PLINTH_SIM_KCM_ARGS='$(SCALE_KCM_ARGS)' \
	  PLINTH_SIM_PROFILE=$(CURDIR)/_out/controller-cpu.pprof PLINTH_SIM_FAILOVER=1 \
	  $(GO) test -trimpath -count=1 -v -timeout 180m -run '^TestSimulatedNodes$$' . 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

# Kubernetes' external storage suite (k8s.io/kubernetes/test/e2e/storage/external, built by
# test/conformance/build.sh and cached by version) against plinth in the e2e cluster, with
# test/conformance/driver*.yaml (one per pool type: image files on xfs and on ext4, btrfs
# subvolumes): every [External Storage] spec, [Slow] and [Serial] ones too, in ginkgo
# processes; prints each failure, the skipped specs by reason and the ginkgo summary.
# docs/conformance.md says what is skipped and why. Root. make test runs the bounded selection.
# CONFORMANCE_FOCUS narrows the selection (a ginkgo focus regexp); the suite gets
# CONFORMANCE_TIMEOUT less five minutes and reports what ran when that is up.
CONFORMANCE_FOCUS ?=
CONFORMANCE_SELECTION ?= full
CONFORMANCE_PROCS ?=
CONFORMANCE_ARTIFACTS ?= /tmp/plinth-conformance-artifacts
CONFORMANCE_TIMEOUT ?= 120m
conformance:
	bin=$$(./test/e2e/build-cluster.sh) && cbin=$$(./test/conformance/build.sh) && cd test/e2e && \
	  PLINTH_CLUSTER_BIN=$$bin PLINTH_CONFORMANCE_BIN=$$cbin PLINTH_CONFORMANCE_FOCUS='$(CONFORMANCE_FOCUS)' \
	  PLINTH_CONFORMANCE=$(CONFORMANCE_SELECTION) PLINTH_CONFORMANCE_PROCS=$(CONFORMANCE_PROCS) \
	  PLINTH_E2E_ARTIFACTS=$(CONFORMANCE_ARTIFACTS) \
	  $(GO) test -trimpath -count=1 -v -timeout $(CONFORMANCE_TIMEOUT) -run '^TestConformance$$' . 2>&1 | grep -v -E '^(I|W|E)[0-9]{4} '

# helm lint and helm template of charts/plinth with each value set in
# charts/plinth/ci, bad value sets refused by values.schema.json.
chart:
	rm -rf $(CHART_OUT) && ./test/chart/check.sh $(CHART_OUT)

# plinth's alert rules (deploy/monitoring/plinth-alerts.yaml): promtool check rules, and promtool's
# rule unit tests (test/monitoring/plinth-alerts.test.yaml: each alert fires on series shaped as
# plinth exports them, and not on a near miss). promtool is built from the Go module proxy at the
# version test/monitoring/promtool pins, cached by version (test/monitoring/build-promtool.sh:
# about 6.5 minutes cold on 2 cores, 1 s after). go test ./test/monitoring checks the names the
# rules and the dashboard read against plinth's registry.
alerts:
	p=$$(./test/monitoring/build-promtool.sh) && $$p check rules deploy/monitoring/plinth-alerts.yaml && \
	  $$p test rules test/monitoring/plinth-alerts.test.yaml

# From the Go types in pkg/apis: the CRDs and deepcopy (controller-gen), and
# the typed clientset, listers and informers in pkg/generated (k8s.io/code-generator,
# at the minor version of the other k8s.io modules).
CONTROLLER_GEN := $(GO) run sigs.k8s.io/controller-tools/cmd/controller-gen@v0.23.0
CODE_GEN       := $(GO) run k8s.io/code-generator/cmd
CODE_GEN_VER   := v0.37.2
API_PKG        := github.com/plinth-dev/plinth/pkg/apis/v1alpha1
GEN_PKG        := github.com/plinth-dev/plinth/pkg/generated
# $(call gen-clients,DIR): clientset, listers and informers under DIR.
define gen-clients
$(CODE_GEN)/client-gen@$(CODE_GEN_VER) --go-header-file /dev/null --clientset-name versioned \
	  --input-base github.com/plinth-dev/plinth/pkg --input apis/v1alpha1 \
	  --output-dir $(1)/clientset --output-pkg $(GEN_PKG)/clientset && \
	$(CODE_GEN)/lister-gen@$(CODE_GEN_VER) --go-header-file /dev/null \
	  --output-dir $(1)/listers --output-pkg $(GEN_PKG)/listers $(API_PKG) && \
	$(CODE_GEN)/informer-gen@$(CODE_GEN_VER) --go-header-file /dev/null \
	  --versioned-clientset-package $(GEN_PKG)/clientset/versioned --listers-package $(GEN_PKG)/listers \
	  --output-dir $(1)/informers --output-pkg $(GEN_PKG)/informers $(API_PKG)
endef

# plinth's own gRPC APIs (proto/): protoc (Debian's protobuf-compiler) with the Go plugins at pinned
# versions, built into _out/tools.
PROTO_TOOLS := $(CURDIR)/_out/tools
PROTOS      := $(shell find proto -name '*.proto' 2>/dev/null)
define gen-protos
GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12 && \
  GOBIN=$(PROTO_TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.0 && \
  PATH=$(PROTO_TOOLS):$$PATH protoc -I proto --go_out=$(1) --go_opt=paths=source_relative \
  --go-grpc_out=$(1) --go-grpc_opt=paths=source_relative $(PROTOS)
endef

generate:
	$(call gen-protos,proto)
	$(CONTROLLER_GEN) crd paths=./pkg/apis/... output:crd:dir=deploy/base/crds
	rm -rf charts/plinth/crds && cp -r deploy/base/crds charts/plinth/crds
	$(CONTROLLER_GEN) object paths=./pkg/apis/...
	rm -rf pkg/generated
	$(call gen-clients,pkg/generated)

verify-generated:
	@tmp=$$(mktemp -d) && { $(call gen-protos,$$tmp) >/dev/null; } && \
	  for f in $$(cd $$tmp && find . -name '*.go'); do diff $$tmp/$$f proto/$$f || exit 1; done && rm -rf $$tmp || \
	  { echo "proto/ generated code is stale: run make generate"; exit 1; }
	@tmp=$$(mktemp -d) && $(CONTROLLER_GEN) crd paths=./pkg/apis/... output:crd:dir=$$tmp && \
	  diff -r $$tmp deploy/base/crds && rm -rf $$tmp || { echo "CRDs are stale: run make generate"; exit 1; }
	@tmp=$$(mktemp -d) && $(CONTROLLER_GEN) object paths=./pkg/apis/... output:object:dir=$$tmp && \
	  diff $$tmp/zz_generated.deepcopy.go pkg/apis/v1alpha1/zz_generated.deepcopy.go && rm -rf $$tmp || \
	  { echo "deepcopy is stale: run make generate"; exit 1; }
	@tmp=$$(mktemp -d) && $(call gen-clients,$$tmp) && diff -r $$tmp pkg/generated && rm -rf $$tmp || \
	  { echo "pkg/generated is stale: run make generate"; exit 1; }

unit:
	$(GO) test -count=1 -short ./pkg/...

sanity:
	$(GO) test -count=1 -v -run '^TestSanity$$' ./test/sanity/

# Volume cycles of bin/plinth standalone side by side with another CSI driver
# (BENCH_FLAGS='-against unix:///path/csi.sock'; by default the stand-in for
# csi-driver-host-path in test/bench/refdriver), in interleaved rounds, block and
# filesystem at 1 and 8 workers: cycles/s, the median of the per-round ratios,
# step latency, the programs plinth started per step, and its peak RSS; then fio
# (interleaved rounds) on thin and thick volumes vs the raw file. Also: PV
# creation rate for 200 PVCs through the provisioner with the old global create
# lock vs the per-node one, interleaved in one run (API writes delayed by
# PLINTH_BENCH_API_MS, default 5 ms, against a fake API server).
bench: build
	PLINTH_BENCH=1 $(GO) test -count=1 -v -timeout 30m -run '^TestBench' ./test/bench/ -args -plinth $(CURDIR)/bin/plinth $(BENCH_FLAGS) 2>&1 | grep -v '^I[0-9]'
	PLINTH_BENCH=1 $(GO) test -count=1 -v -timeout 10m -run '^TestBenchProvisionLock$$' ./pkg/provision/ 2>&1 | grep -v '^I[0-9]'
	PLINTH_BENCH=1 $(GO) test -count=1 -v -timeout 15m -run '^TestBenchTransfer$$' ./pkg/transfer/ 2>&1 | grep -v '^I[0-9]'

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	cd test/e2e && $(GO) vet ./...

# What the tests need on a fresh Debian 12 machine.
deps:
	./.ci/install-deps

clean:
	rm -rf bin _out/release _out/release-build
