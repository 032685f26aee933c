package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/nodestatus"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/reconcile"
)

// startInProcess runs the simulated node's agent in this process, so that
// a thousand nodes fit on this machine (a `plinth node` process is about
// 50 MB): plinth's own node-side code, as `plinth node` wires it for a
// cluster, over a file pool on the node's tmpfs (its accounts are the
// pool's own: statfs and the volumes' records, as on a real node). The
// reconciler of the node's volume objects (and its snapshot objects) and
// the PlinthNode status reporter (pools, capacity numbers, heartbeat)
// run with a client of their own at plinth node's API rate (50 QPS,
// burst 100), sharing this process's connection to the API server.
//
// Left out, as in the process mode: the CSI socket (no kubelet stages or
// publishes anything), the kubelet registration, device plugins and DRA,
// disk rules, the transfer service, and the metrics server.
func (s *simNode) startInProcess(ctx context.Context, cfg *rest.Config) error {
	fp, err := file.New(file.Config{Name: simPool, Dir: filepath.Join(s.dir, "pool")})
	if err != nil {
		return fmt.Errorf("simulated node %s: pool: %w", s.name, err)
	}
	local, err := node.NewLocal(fp)
	if err != nil {
		return err
	}
	c := rest.CopyConfig(cfg)
	c.QPS, c.Burst = 50, 100
	core, err := kubernetes.NewForConfig(c)
	if err != nil {
		return err
	}
	plinth, err := versioned.NewForConfig(c)
	if err != nil {
		return err
	}
	status := &nodestatus.Reporter{NodeName: s.name, Version: "sim", Pools: local.PoolHealth, Plinth: plinth, Core: core}
	rec := &reconcile.Reconciler{NodeName: s.name, Local: local, Plinth: plinth, Core: core, Status: status}
	s.exited = make(chan struct{})
	var wg sync.WaitGroup
	for _, run := range []func(context.Context) error{rec.Run, status.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	go func() { wg.Wait(); close(s.exited) }()
	return nil
}
