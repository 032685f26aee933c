//go:build tools

// Package tools pins the CSI snapshot controller the end-to-end cluster runs
// (and, through it, the snapshot CRDs build-cluster.sh installs).
package tools

import _ "github.com/kubernetes-csi/external-snapshotter/v8/cmd/snapshot-controller"
