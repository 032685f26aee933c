package app

// The volume side of a node, shared by plinth node and plinth standalone
// (one place for both): the pools' directories checked and the root
// claimed (claimRoot), the pools opened with the node's rules for them
// (openLocal), and the CSI services served over them (serveCSI).

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/csi"
	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/fsimage"
	"github.com/plinth-dev/plinth/pkg/metrics"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/unixsock"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// CheckPoolDirs refuses pools whose directory is missing (a disk not
// mounted yet must not quietly become a pool on the root filesystem), is
// not a directory, or, with MountPoint, is not a mount point. A directory
// below root is plinth's own and is created when opened (the default pool
// <root>/pools/default, and e.g. /var/lib/plinth/pools/local of the
// manifests), unless it must be a mount point. It changes nothing on disk.
func CheckPoolDirs(root string, specs []PoolSpec) error {
	var errs []error
	for _, s := range specs {
		fi, err := os.Stat(s.Dir)
		switch {
		case errors.Is(err, os.ErrNotExist) && !s.MountPoint && root != "" && within(s.Dir, root) && s.Dir != root:
			continue // plinth's own: created when the pool opens
		case errors.Is(err, os.ErrNotExist):
			errs = append(errs, fmt.Errorf("pool %s: directory %s does not exist; create it or mount the disk there", s.Name, s.Dir))
			continue
		case err != nil:
			errs = append(errs, fmt.Errorf("pool %s: %w", s.Name, err))
			continue
		case !fi.IsDir():
			errs = append(errs, fmt.Errorf("pool %s: %s is not a directory", s.Name, s.Dir))
			continue
		}
		if err := privateDir(fi); err != nil {
			errs = append(errs, fmt.Errorf("pool %s: %s %w", s.Name, s.Dir, err))
			continue
		}
		if !s.MountPoint {
			continue
		}
		mounted, err := filesystemMountedAt(s.Dir)
		if err != nil {
			errs = append(errs, fmt.Errorf("pool %s: is %s a mount point: %w", s.Name, s.Dir, err))
		} else if !mounted {
			errs = append(errs, fmt.Errorf("pool %s: directory %s is not a mount point (mountpoint=true); mount the disk there first", s.Name, s.Dir))
		}
	}
	return errors.Join(errs...)
}

// btrfsSubvolumeRootIno is the inode number of every btrfs subvolume's
// root directory (BTRFS_FIRST_FREE_OBJECTID).
const btrfsSubvolumeRootIno = 256

// filesystemMountedAt reports whether the root of a filesystem, or of a
// btrfs subvolume, is what is mounted at dir (the topmost mount there, from
// /proc/self/mountinfo). A bind mount of an ordinary directory does not
// count: that is what a container sees at a hostPath whose disk is not
// mounted on the host, and what must be refused.
func filesystemMountedAt(dir string) (bool, error) {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return false, err
	}
	mounts, err := mount.MountsAt(real)
	if err != nil {
		return false, err
	}
	var top *mount.Info
	for _, m := range mounts {
		covered := false
		for _, n := range mounts {
			covered = covered || n.Parent == m.ID
		}
		if !covered {
			top = &m
		}
	}
	switch {
	case top == nil:
		return false, nil
	case top.Root == "/":
		return true, nil
	case top.FSType == "btrfs":
		var st unix.Stat_t
		if err := unix.Stat(real, &st); err != nil {
			return false, err
		}
		return st.Ino == btrfsSubvolumeRootIno, nil
	}
	return false, nil
}

// OpenPools opens every declared pool; CheckPoolDirs comes first. A pool
// whose records a newer plinth wrote (durable.ErrNewer) is not opened: it
// stands unhealthy with the reason (pool.Unavailable), its records as
// they are. Any other error stops the start.
func OpenPools(ctx context.Context, specs []PoolSpec, loops file.Loops, run mount.Runner) ([]pool.Pool, error) {
	var out []pool.Pool
	for _, s := range specs {
		var p pool.Pool
		var err error
		switch s.Backend {
		case "file":
			p, err = file.New(file.Config{Name: s.Name, Dir: s.Dir, FsType: s.FsType, Loops: loops})
		case "btrfs":
			p, err = btrfs.New(ctx, btrfs.Config{Name: s.Name, Dir: s.Dir, Run: run})
		default:
			err = fmt.Errorf("pool %s: unknown backend %q", s.Name, s.Backend)
		}
		if errors.Is(err, durable.ErrNewer) {
			// A newer plinth's records: the pool stays as it is, listed
			// unhealthy with the reason, and the other pools serve.
			klog.ErrorS(err, "Pool cannot be opened; it is listed unhealthy", "pool", s.Name, "backend", s.Backend)
			p, err = pool.Unavailable{PoolName: s.Name, PoolBackend: s.Backend, Err: err}, nil
		}
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

// poolSamples reads every pool for the metrics.
func poolSamples(local *node.Local) func(context.Context) ([]metrics.PoolSample, error) {
	return func(ctx context.Context) ([]metrics.PoolSample, error) {
		infos, err := local.Pools(ctx)
		if err != nil {
			return nil, err
		}
		vols, err := local.Volumes(ctx)
		if err != nil {
			return nil, err
		}
		snaps, err := local.Snapshots(ctx)
		if err != nil {
			return nil, err
		}
		var out []metrics.PoolSample
		for _, pi := range infos {
			s := metrics.PoolSample{Name: pi.Name, Backend: pi.Backend, TotalBytes: pi.Stats.TotalBytes, FreeBytes: pi.Stats.FreeBytes,
				AllocatableBytes: pi.Stats.AllocatableBytes(), ProvisionedBytes: pi.Stats.ProvisionedBytes,
				Volumes: map[string]int{}, Snapshots: map[string]int{}, Degraded: pi.Stats.Degraded != ""}
			for _, v := range vols {
				if v.Pool == pi.Name {
					s.Volumes[string(v.State)]++
				}
			}
			for _, sn := range snaps {
				if sn.Pool == pi.Name {
					s.Snapshots[string(sn.State)]++
				}
			}
			out = append(out, s)
		}
		return out, nil
	}
}

// claimRoot checks the pools' directories, then takes the root's lock
// and each existing pool directory's: a refused start changes nothing on
// disk.
func claimRoot(c CSIConfig) (*RootLock, error) {
	if err := CheckPoolDirs(c.Root, c.Pools); err != nil {
		return nil, err
	}
	lock, err := LockRoot(c.Root)
	if err != nil {
		return nil, err
	}
	for _, p := range c.Pools {
		// A pool below the root is made now, not when it opens, so that
		// its directory is locked from this start on.
		if within(p.Dir, c.Root) {
			if err := os.MkdirAll(p.Dir, 0o750); err != nil {
				lock.Unlock()
				return nil, fmt.Errorf("pool %s: %w", p.Name, err)
			}
		}
		if err := lock.LockDir("pool "+p.Name, p.Dir); err != nil {
			lock.Unlock()
			return nil, err
		}
	}
	return lock, nil
}

// openLocal opens the configured pools as this node's LocalNode; the
// caller has claimed the root (claimRoot).
// With disk rules it also claims and opens the disk pools, and returns the
// watcher that reads the disks again (run it as one of the process's
// parts).
// Every program it and its pools run goes through run (counted).
func openLocal(ctx context.Context, c CSIConfig, run mount.Exec) (*node.Local, *disk.Watcher, error) {
	loops := mount.NewLoop(c.SysfsRoot, c.DevRoot)
	// A loop number a consumer still holds (a block publish's device, even
	// one the consumer freed itself) is never given to another volume.
	loops.Avoid = func(dev string) bool { return node.DeviceBound(c.Root, dev) }
	pools, err := OpenPools(ctx, c.Pools, loops, run)
	if err != nil {
		return nil, nil, err
	}
	var w *disk.Watcher
	if c.disks == nil {
		// Pools made from disks stay plinth's when their rules are gone:
		// their disks hold volumes. They open from their records.
		claims, err := c.claimRecords().Load()
		if err != nil {
			return nil, nil, err
		}
		if len(claims) > 0 {
			empty := disk.Config{}
			empty.Defaults()
			c.disks = &empty
		}
	}
	if c.disks != nil {
		var more []pool.Pool
		if more, w, err = openDiskPools(ctx, c, loops, run); err != nil {
			return nil, nil, err
		}
		pools = append(pools, more...)
	}
	local, err := node.NewLocal(pools...)
	return local, w, err
}

// volumeMounts is the node's stage, publish and usage work over local,
// and the count of the programs it runs.
type volumeMounts struct {
	*node.Mounts
	launches *mount.Launches
}

// run counts the programs (plinth_programs_launched_total): the node
// service's (mkfs, blkid, resize tools) and, given the same run as
// openLocal, the pools' and the disk watcher's.
func newVolumeMounts(c CSIConfig, local *node.Local, run mount.Exec) volumeMounts {
	host := mount.NewHost(run)
	// New ext4 volumes are copies of a filesystem made once per size.
	host.Templates = fsimage.New(filepath.Join(c.Root, "templates"), run)
	m := node.NewMounts(local, host, c.Root)
	m.SysfsRoot = c.SysfsRoot
	return volumeMounts{Mounts: m, launches: run.Launches}
}

// serveCSI serves Identity and Node (and Controller when withController)
// over local until ctx ends; with m, it also feeds metrics and readiness.
func serveCSI(ctx context.Context, c CSIConfig, version string, local *node.Local, mounts volumeMounts, withController bool, m *metrics.Metrics) error {
	sock, err := unixsock.ParseEndpoint(c.Endpoint)
	if err != nil {
		return err
	}
	// Both spellings of each place: a path is checked as given and
	// resolved, and a root, pool or allowed directory given through a
	// symlink is the same place as its target.
	owned := spellings(c.Root)
	for _, p := range c.Pools {
		owned = append(owned, spellings(p.Dir)...)
	}
	var allowed []string
	for _, a := range c.AllowedPaths {
		allowed = append(allowed, spellings(a)...)
	}
	ready := func(ctx context.Context) error {
		_, err := local.Pools(ctx)
		return err
	}
	svcs := csi.Services{
		Identity: csi.NewIdentityServer(c.DriverName, version, withController, ready),
		Node: csi.NewNodeServer(mounts.Mounts, csi.NodeConfig{
			NodeID: c.NodeID, TopologyKey: c.TopologyKey,
			MaxVolumes: func(ctx context.Context) int64 {
				return volumeLimit(ctx, local, c.MaxVolumes, "/proc/sys/fs/mount-max")
			},
			Paths: csi.Paths{Allowed: allowed, Owned: owned},
		}),
	}
	if withController {
		svcs.Controller = csi.NewControllerServer(volume.NewController(map[string]volume.Node{c.NodeID: local}), c.TopologyKey)
	}
	if m != nil {
		svcs.Observer = m
		if err := m.Register(metrics.NewPoolCollector(poolSamples(local))); err != nil {
			return err
		}
		if err := m.Register(metrics.NewProgramCollector(mounts.launches.Counts)); err != nil {
			return err
		}
		m.AddReadyCheck("pools", ready)
		m.AddLiveCheck("csi-grpc", func(ctx context.Context) error { return probeCSI(ctx, sock) })
		m.AddReadyCheck("csi-socket", func(context.Context) error {
			conn, err := net.Dial("unix", sock)
			if err != nil {
				return err
			}
			return conn.Close()
		})
	}
	klog.InfoS("Starting CSI", "version", version, "nodeID", c.NodeID, "root", c.Root, "pools", len(local.PoolHealth(ctx)), "controller", withController)
	return csi.Serve(ctx, sock, svcs, 10*time.Second)
}

// probeCSI calls Identity.Probe on the CSI socket: the liveness of the
// gRPC server itself, not just of the process.
func probeCSI(ctx context.Context, sock string) error {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err = csipb.NewIdentityClient(conn).Probe(ctx, &csipb.ProbeRequest{})
	return err
}

// volumeLimit is how many volumes the node can hold, for NodeGetInfo:
// with disk pools only, one per disk; else half the kernel's limit of
// mounts in a mount namespace (fs.mount-max: each volume in use takes a
// staging mount and a publish mount in the kubelet's namespace). Loop
// devices are no limit: the kernel makes them on demand, up to 2^20.
// capAt, when positive, is the operator's own cap.
func volumeLimit(ctx context.Context, local *node.Local, capAt int64, mountMax string) int64 {
	n, bounded := local.VolumeLimit(ctx)
	if !bounded {
		n = 100000 / 2 // the kernel's default fs.mount-max
		if b, err := os.ReadFile(mountMax); err == nil {
			if m, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); err == nil && m > 0 {
				n = m / 2
			}
		}
	}
	if capAt > 0 {
		n = min(n, capAt)
	}
	return n
}
