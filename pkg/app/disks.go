package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/pool/guard"
	"github.com/plinth-dev/plinth/pkg/pool/whole"
)

// diskConfig is the disk rules from --disk-config or the configuration
// file's inline "disks" (nil: plinth manages no disks).
func (c *CSIConfig) diskConfig() (*disk.Config, error) {
	switch {
	case c.DiskConfig != "":
		cfg, err := disk.LoadConfig(c.DiskConfig)
		return &cfg, err
	case c.DiskConfigData != nil:
		cfg, err := disk.ParseConfig(c.DiskConfigData)
		if err != nil {
			return nil, fmt.Errorf("disks in the configuration file: %w", err)
		}
		return &cfg, nil
	}
	return nil, nil
}

// diskHost is where the disks are read; loop devices of plinth's own
// images (under the root and the declared pools) are not disks.
func (c CSIConfig) diskHost() disk.Host {
	// A loop device's backing_file is the path the kernel resolved: the
	// directories are compared resolved too (a symlinked pool directory
	// would otherwise make plinth's own volumes look like disks).
	var own []string
	for _, d := range append([]string{c.Root}, poolDirs(c.Pools)...) {
		own = append(own, d)
		if real, err := pool.ResolveDir(d); err == nil && real != d {
			own = append(own, real)
		}
	}
	return disk.Host{Sysfs: c.SysfsRoot, Dev: c.DevRoot, Proc: "/proc", OwnDirs: own}
}

func (c CSIConfig) claimRecords() disk.Records {
	return disk.Records{Dir: filepath.Join(c.Root, "disks", "claims")}
}

// planDisks reads the node's disks and decides what the rules make of
// them; it changes nothing.
func planDisks(ctx context.Context, c CSIConfig, run mount.Runner) (disk.Plan, error) {
	disks, err := disk.Scan(ctx, c.diskHost(), disk.Wipefs{Run: run})
	if err != nil {
		return disk.Plan{}, err
	}
	claims, err := c.claimRecords().Load()
	if err != nil {
		return disk.Plan{}, err
	}
	return disk.MakePlan(*c.disks, disks, claims), nil
}

// DisksDryRun prints what plinth would do with the node's disks: every
// disk, the pool it would go to (or why not), and each pool's state;
// nothing is written. output is "table" or "json".
func DisksDryRun(ctx context.Context, c CSIConfig, w io.Writer, output string) error {
	if c.disks == nil {
		return fmt.Errorf("no disk rules: give --disk-config or \"disks\" in the configuration file")
	}
	plan, err := planDisks(ctx, c, mount.Exec{})
	if err != nil {
		return err
	}
	if output == "json" {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(plan)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISK\tID\tSIZE\tTRANSPORT\tNUMA\tSTATE\tACTION\tPOOL\tWHY")
	for _, d := range plan.Decisions {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", d.Disk.Name, d.Disk.ID, disk.FormatBytes(d.Disk.SizeBytes), d.Disk.Transport,
			d.Disk.NUMANode, d.Disk.State, d.Action, dash(d.Pool), d.Why)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "POOL\tLAYOUT\tDISKS\tNEW\tMISSING\tSTATE")
	for _, p := range plan.Pools {
		state := "ready"
		switch {
		case p.Problem != "":
			state = p.Problem
		case p.Claim == nil:
			state = "to be made"
		case p.Degraded() != "":
			state = "degraded: " + p.Degraded()
		}
		layout := string(p.Layout)
		if p.Raid != "" {
			layout += " " + p.Raid
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\n", p.Name, layout, len(p.Present), len(p.New), len(p.Missing), state)
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// openDiskPools claims the disks the rules select and opens a pool for
// each rule and claim: guarded by the watcher's view of its disks, or,
// when it cannot be opened, standing unhealthy with the reason.
func openDiskPools(ctx context.Context, c CSIConfig, loops *mount.Loop, run mount.Runner) ([]pool.Pool, *disk.Watcher, error) {
	plan, err := planDisks(ctx, c, run)
	if err != nil {
		return nil, nil, err
	}
	probe := disk.Wipefs{Run: run}
	claimer := disk.Claimer{Records: c.claimRecords(), MountDir: filepath.Join(c.Root, "disks", "mnt"), Run: run, Probe: probe}
	ready := claimer.Apply(ctx, plan)
	w := disk.NewWatcher(c.diskHost(), probe, c.disks.ScanInterval.Duration, plan)
	if err := w.Rescan(ctx); err != nil {
		return nil, nil, err
	}
	var out []pool.Pool
	for _, r := range ready {
		backend := string(r.Layout)
		if r.Err != nil {
			klog.ErrorS(r.Err, "Disk pool cannot be opened; it is listed unhealthy", "pool", r.Name, "layout", r.Layout)
			out = append(out, pool.Unavailable{PoolName: r.Name, PoolBackend: backend, Err: r.Err})
			continue
		}
		for _, d := range r.Members {
			w.SetOwner(d.ID, r.Name)
		}
		var p pool.Pool
		switch r.Layout {
		case disk.LayoutFile:
			p, err = file.New(file.Config{Name: r.Name, Dir: r.Dir, FsType: r.FsType, Loops: loops})
		case disk.LayoutBtrfs:
			p, err = btrfs.New(ctx, btrfs.Config{Name: r.Name, Dir: r.Dir, Run: run})
		case disk.LayoutDisk:
			p, err = whole.New(whole.Config{Name: r.Name, Dir: filepath.Join(c.Root, "disks", "pools", r.Name), Members: r.Recorded,
				FsType: r.FsType, Disks: w, Loops: loops, Run: run, Probe: probe, SysfsRoot: c.SysfsRoot, Rescan: w.Rescan})
		}
		if err != nil {
			klog.ErrorS(err, "Disk pool cannot be opened; it is listed unhealthy", "pool", r.Name, "layout", r.Layout)
			out = append(out, pool.Unavailable{PoolName: r.Name, PoolBackend: backend, Err: err})
			continue
		}
		if r.Layout != disk.LayoutDisk {
			p = guard.New(p, r, w)
		}
		if r.Degraded != "" {
			klog.InfoS("Disk pool runs degraded", "pool", r.Name, "why", r.Degraded)
		}
		out = append(out, p)
	}
	return out, w, nil
}

// diskStatuses is the node's disks for its PlinthNode.
func diskStatuses(w *disk.Watcher) []v1alpha1.DiskStatus {
	var out []v1alpha1.DiskStatus
	for _, d := range w.Status() {
		out = append(out, v1alpha1.DiskStatus{
			ID: d.ID, Name: d.Name, Model: d.Model, Serial: d.Serial, WWN: d.WWN, SizeBytes: d.SizeBytes,
			Transport: string(d.Transport), Rotational: d.Rotational, NUMANode: d.NUMANode, State: string(d.State),
			Pool: d.Pool, Reason: strings.Join(d.Reasons, "; "),
		})
	}
	return out
}

func poolDirs(pools []PoolSpec) []string {
	var out []string
	for _, p := range pools {
		out = append(out, p.Dir)
	}
	return out
}
