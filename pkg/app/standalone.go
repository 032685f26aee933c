package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/csi"
	"github.com/plinth-dev/plinth/pkg/disk"
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

// PoolSpec declares one pool: --pool name=fast,backend=file,dir=/mnt/fast.
type PoolSpec struct {
	Name    string
	Backend string
	// Dir must exist when plinth starts (see CheckPoolDirs).
	Dir    string
	FsType string // default filesystem of a file pool's volumes
	// MountPoint: Dir must be a mount point (a disk mounted there), so
	// that a disk not mounted at boot is refused, not silently replaced
	// by a directory on the root filesystem.
	MountPoint bool
}

// ParsePoolSpec parses name=N,backend=B,dir=D[,fstype=F][,mountpoint=true].
func ParsePoolSpec(s string) (PoolSpec, error) {
	var p PoolSpec
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return PoolSpec{}, fmt.Errorf("pool %q: %q is not key=value", s, kv)
		}
		switch k {
		case "name":
			p.Name = v
		case "backend":
			p.Backend = v
		case "dir":
			p.Dir = v
		case "fstype":
			p.FsType = v
		case "mountpoint":
			switch v {
			case "true":
				p.MountPoint = true
			case "false":
				p.MountPoint = false
			default:
				return PoolSpec{}, fmt.Errorf("pool %q: mountpoint=%q is not true or false", s, v)
			}
		default:
			return PoolSpec{}, fmt.Errorf("pool %q: unknown key %q (name, backend, dir, fstype, mountpoint)", s, k)
		}
	}
	return p, p.Validate()
}

// Validate checks a pool declaration.
func (p PoolSpec) Validate() error {
	if err := pool.ValidateName(p.Name); err != nil {
		return fmt.Errorf("pool name: %w", err)
	}
	if p.Backend != "file" && p.Backend != "btrfs" {
		return fmt.Errorf("pool %s: backend %q is not file or btrfs", p.Name, p.Backend)
	}
	if !filepath.IsAbs(p.Dir) || filepath.Clean(p.Dir) != p.Dir {
		return fmt.Errorf("pool %s: dir %q must be an absolute, clean path", p.Name, p.Dir)
	}
	switch {
	case p.Backend == "btrfs" && p.FsType != "" && p.FsType != "btrfs":
		return fmt.Errorf("pool %s: a btrfs pool's volumes are btrfs, not %q", p.Name, p.FsType)
	case p.Backend == "file" && p.FsType != "":
		if err := pool.CheckFsType(p.FsType); err != nil {
			return fmt.Errorf("pool %s: fstype: %w", p.Name, err)
		}
	}
	return nil
}

// DefaultRoot is --root's default; plinth standalone serves CSI on
// unix://<root>/csi.sock unless --endpoint says otherwise.
const DefaultRoot = "/var/lib/plinth"

// StandaloneConfig configures `plinth standalone`.
type StandaloneConfig struct {
	CSIConfig
	Version string
}

// CSIConfig is what the roles serving CSI share.
type CSIConfig struct {
	Endpoint     string
	Root         string
	NodeID       string
	DriverName   string
	TopologyKey  string
	Pools        []PoolSpec
	AllowedPaths []string
	MaxVolumes   int64
	SysfsRoot    string
	DevRoot      string
	// MetricsAddress serves /metrics, /healthz and /readyz ("" for none).
	MetricsAddress string
	// DiskConfig is a file of disk rules; DiskConfigData the rules given
	// inline in the configuration file ("disks"). Neither: plinth manages
	// no disks.
	DiskConfig     string
	DiskConfigData []byte
	// DisksDryRun prints what the disk rules would do and exits.
	DisksDryRun bool
	// disks is the parsed disk configuration (Validate).
	disks *disk.Config
}

type listFlag struct{ add func(string) error }

func (l listFlag) String() string     { return "" }
func (l listFlag) Set(s string) error { return l.add(s) }

// Flags registers the CSI flags on fs.
func (c *CSIConfig) Flags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.Endpoint, "endpoint", "", "CSI endpoint, unix://PATH (default unix://<root>/csi.sock)")
	fs.StringVar(&c.Root, "root", DefaultRoot, "directory for plinth's state and the default pool")
	fs.StringVar(&c.NodeID, "node-id", host, "this node's ID, reported as topology")
	fs.StringVar(&c.DriverName, "driver-name", "plinth.example.com", "CSI driver name")
	fs.StringVar(&c.TopologyKey, "topology-key", "topology.plinth.example.com/node", "topology key whose value is the node ID")
	fs.Int64Var(&c.MaxVolumes, "max-volumes", 1024, "volumes this node may hold, reported in NodeGetInfo (0: no limit)")
	fs.StringVar(&c.SysfsRoot, "sysfs-root", "/sys", "where sysfs is mounted")
	fs.StringVar(&c.DevRoot, "dev-root", "/dev", "where device nodes are")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "127.0.0.1:9809", "host:port for /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.DiskConfig, "disk-config", "", "file of disk rules (which disks plinth claims and what it makes of them; see docs/configuration.md); default: none, plinth touches no disk")
	fs.BoolVar(&c.DisksDryRun, "disks-dry-run", false, "print every disk, what the disk rules would make of it and why, and exit without changing anything")
	fs.Var(listFlag{func(s string) error {
		p, err := ParsePoolSpec(s)
		if err == nil {
			c.Pools = append(c.Pools, p)
		}
		return err
	}}, "pool", "a pool: name=N,backend=file|btrfs,dir=/abs/dir[,fstype=ext4|xfs|btrfs][,mountpoint=true] (repeatable; default: a file pool \"default\" in <root>/pools/default). "+
		"The directory must exist unless it lies under --root; mountpoint=true: it must be a mount point")
	fs.Var(listFlag{func(s string) error { c.AllowedPaths = append(c.AllowedPaths, s); return nil }}, "allowed-path",
		"directory under which staging and target paths may lie (repeatable; default /var/lib/kubelet and "+os.TempDir()+")")
}

// Validate fills defaults and checks the configuration.
func (c *CSIConfig) Validate() error {
	var errs []error
	if !filepath.IsAbs(c.Root) {
		errs = append(errs, fmt.Errorf("--root %q must be absolute", c.Root))
	}
	c.Root = filepath.Clean(c.Root)
	if c.Endpoint == "" {
		c.Endpoint = "unix://" + filepath.Join(c.Root, "csi.sock")
	}
	if _, err := unixsock.ParseEndpoint(c.Endpoint); err != nil {
		errs = append(errs, fmt.Errorf("--endpoint: %w", err))
	}
	if c.NodeID == "" || len(c.NodeID) > 128 {
		errs = append(errs, fmt.Errorf("--node-id must be 1-128 characters"))
	}
	disks, err := c.diskConfig()
	if err != nil {
		errs = append(errs, err)
	}
	c.disks = disks
	if len(c.Pools) == 0 && c.disks == nil {
		c.Pools = []PoolSpec{{Name: "default", Backend: "file", Dir: filepath.Join(c.Root, "pools", "default")}}
	}
	names := map[string]bool{}
	if c.disks != nil {
		for _, r := range c.disks.Rules {
			names[r.Pool] = true
		}
	}
	// Places are compared as given and with their symlinks resolved: a
	// pool given through a link to another pool's directory, or to
	// plinth's own state, is the same place.
	roots := spellings(c.Root)
	pools := make([][]string, len(c.Pools))
	for i, p := range c.Pools {
		pools[i] = spellings(p.Dir)
	}
	for i, p := range c.Pools {
		if names[p.Name] {
			errs = append(errs, fmt.Errorf("--pool: %q declared twice (or also made by a disk rule)", p.Name))
		}
		names[p.Name] = true
		if err := poolInRoot(p, pools[i], roots); err != nil {
			errs = append(errs, err)
		}
		for j, q := range c.Pools[:i] {
			if overlap(pools[i], pools[j]) {
				errs = append(errs, fmt.Errorf("--pool: pools %s and %s overlap (%s and %s): each pool needs a directory of its own, neither inside the other", q.Name, p.Name, q.Dir, p.Dir))
			}
		}
	}
	if len(c.AllowedPaths) == 0 {
		c.AllowedPaths = []string{"/var/lib/kubelet", os.TempDir()}
	}
	for _, a := range c.AllowedPaths {
		if !filepath.IsAbs(a) || filepath.Clean(a) != a || a == "/" {
			errs = append(errs, fmt.Errorf("--allowed-path %q must be an absolute, clean path other than /", a))
		}
	}
	if c.MaxVolumes < 0 {
		errs = append(errs, fmt.Errorf("--max-volumes must not be negative"))
	}
	return errors.Join(errs...)
}

// spellings are dir as given and, where it differs, with its symlinks
// resolved (as far as it exists).
func spellings(dir string) []string {
	out := []string{filepath.Clean(dir)}
	if real, err := pool.ResolveDir(out[0]); err == nil && real != out[0] {
		out = append(out, real)
	}
	return out
}

// overlap reports whether any spelling of a is, or lies in or above, any
// spelling of b.
func overlap(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if within(x, y) || within(y, x) {
				return true
			}
		}
	}
	return false
}

// poolInRoot refuses a pool directory that is, contains or lies in
// plinth's root, except below <root>/pools (where the default pool and
// the manifests' pools live): elsewhere in the root are plinth's records,
// which a start after a reboot clears (targets, staged) or rewrites.
func poolInRoot(p PoolSpec, dirs, roots []string) error {
	for _, d := range dirs {
		for _, r := range roots {
			switch {
			case within(r, d):
				return fmt.Errorf("--pool %s: %s is or contains plinth's root %s", p.Name, p.Dir, r)
			case within(d, filepath.Join(r, "pools")) && d != filepath.Join(r, "pools"):
				// plinth's own place for pools
			case within(d, r):
				return fmt.Errorf("--pool %s: %s lies in plinth's root %s, where it keeps its records; a pool in the root goes below %s",
					p.Name, p.Dir, r, filepath.Join(r, "pools"))
			}
		}
	}
	return nil
}

// within reports whether path is dir or lies below it (both clean).
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

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

// OpenPools opens every declared pool; CheckPoolDirs comes first.
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
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
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
	local, watcher, err := openLocal(ctx, c.CSIConfig)
	if err != nil {
		return err
	}
	var m *metrics.Metrics
	parts := map[string]func(context.Context) error{
		"CSI": func(ctx context.Context) error { return serveCSI(ctx, c.CSIConfig, c.Version, local, true, m) },
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

// runAll runs every part until ctx ends or one fails (which stops the rest).
func runAll(ctx context.Context, parts map[string]func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, len(parts))
	for name, f := range parts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(ctx); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
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
				Volumes: map[string]int{}, Snapshots: map[string]int{}}
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
func openLocal(ctx context.Context, c CSIConfig) (*node.Local, *disk.Watcher, error) {
	loops := mount.NewLoop(c.SysfsRoot, c.DevRoot)
	// A loop number a consumer still holds (a block publish's device, even
	// one the consumer freed itself) is never given to another volume.
	loops.Avoid = func(dev string) bool { return node.DeviceBound(c.Root, dev) }
	pools, err := OpenPools(ctx, c.Pools, loops, mount.Exec{})
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
		if more, w, err = openDiskPools(ctx, c, loops, mount.Exec{}); err != nil {
			return nil, nil, err
		}
		pools = append(pools, more...)
	}
	local, err := node.NewLocal(pools...)
	return local, w, err
}

// serveCSI serves Identity and Node (and Controller when withController)
// over local until ctx ends; with m, it also feeds metrics and readiness.
func serveCSI(ctx context.Context, c CSIConfig, version string, local *node.Local, withController bool, m *metrics.Metrics) error {
	sock, err := unixsock.ParseEndpoint(c.Endpoint)
	if err != nil {
		return err
	}
	// The node service's programs (mkfs, blkid, resize tools) are counted
	// (plinth_programs_launched_total).
	run := mount.Exec{Launches: &mount.Launches{}}
	host := mount.NewHost(run)
	// New ext4 volumes are copies of a filesystem made once per size.
	host.Templates = fsimage.New(filepath.Join(c.Root, "templates"), run)
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
		Node: csi.NewNodeServer(node.NewMounts(local, host, c.Root), csi.NodeConfig{
			NodeID: c.NodeID, TopologyKey: c.TopologyKey, MaxVolumes: c.MaxVolumes,
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
		if err := m.Register(metrics.NewProgramCollector(run.Launches.Counts)); err != nil {
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
