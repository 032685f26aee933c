package app

import (
	"context"
	"os"

	"github.com/plinth-dev/plinth/pkg/metrics"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// StandaloneConfig configures `plinth standalone`.
type StandaloneConfig struct {
	CSIConfig
	Version string
}

// RunStandalone runs controller and node in one process until ctx ends.
// It holds the lock of --root throughout.
func RunStandalone(ctx context.Context, c StandaloneConfig) error {
	if c.DisksDryRun {
		return DisksDryRun(ctx, c.CSIConfig, os.Stdout, "table")
	}
	lock, err := claimRoot(c.CSIConfig)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	// One count of every program the process runs.
	run := mount.Exec{Launches: &mount.Launches{}}
	local, watcher, err := openLocal(ctx, c.CSIConfig, run)
	if err != nil {
		return err
	}
	var m *metrics.Metrics
	parts := map[string]func(context.Context) error{
		"CSI": func(ctx context.Context) error {
			return serveCSI(ctx, c.CSIConfig, c.Version, local, newVolumeMounts(c.CSIConfig, local, run), true, m)
		},
	}
	if c.MetricsAddress != "" {
		m = metrics.New()
		parts["metrics"] = func(ctx context.Context) error { return m.Serve(ctx, c.MetricsAddress) }
	}
	if watcher != nil {
		parts["disks"] = watcher.Run
	}
	return runAll(ctx, parts)
}
