//go:build tools

// Package tools pins what build.sh builds besides the suite, so that `go build` of them uses this
// module's go.sum: kubectl (the suite shells out to it) and agnhost (an image the suite's pods run).
package tools

import (
	_ "github.com/onsi/ginkgo/v2/ginkgo"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/test/images/agnhost"
)
