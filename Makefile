# plinth — see README.md. Targets that touch loop devices and mounts need root.
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
RUN_ROOT ?= $(CURDIR)/_run
GO       ?= go
SHELL    := /bin/bash
.SHELLFLAGS := -o pipefail -c

.PHONY: all build run test reliability kubelet unit sanity bench lint deps clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/plinth ./cmd/plinth

# Runs plinth standalone for real: a file pool in $(RUN_ROOT)/pools/default,
# CSI on unix://$(RUN_ROOT)/csi.sock. Ctrl-C stops it.
run: build
	mkdir -p $(RUN_ROOT)
	./bin/plinth standalone --root $(RUN_ROOT) --endpoint unix://$(RUN_ROOT)/csi.sock --allowed-path /tmp --allowed-path /var/lib/kubelet --v=2

# The whole suite: formatting, vet, unit tests, csi-sanity (4 configs),
# recovery and bad-input tests on real loop devices and mounts.
test: lint
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) reliability
	$(MAKE) kubelet

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

unit:
	$(GO) test -count=1 -short ./pkg/...

sanity:
	$(GO) test -count=1 -v -run '^TestSanity$$' ./test/sanity/

# Volume cycle throughput and latency, and fio on a volume vs the raw file.
bench:
	PLINTH_BENCH=1 $(GO) test -count=1 -v -timeout 30m -run '^TestBench' ./test/bench/ -args $(BENCH_FLAGS) 2>&1 | grep -v '^I[0-9]'

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# What the tests need on a fresh Debian 12 machine.
deps:
	./.ci/install-deps

clean:
	rm -rf bin
