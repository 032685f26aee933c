package app

// The configuration the roles that serve CSI share (plinth node and
// plinth standalone): the root, the pools, the allowed paths, and how
// places are compared.

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/unixsock"
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
	// CgroupRoot is where the host's cgroup filesystem is mounted: the
	// node writes volumes' IO limits into the pods' cgroups there.
	CgroupRoot string
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

func (l listFlag) String() string { return "" }

func (l listFlag) Set(s string) error { return l.add(s) }

// Flags registers the CSI flags on fs.
func (c *CSIConfig) Flags(fs *flag.FlagSet) {
	host, _ := os.Hostname()
	fs.StringVar(&c.Endpoint, "endpoint", "", "CSI endpoint, unix://PATH (default unix://<root>/csi.sock)")
	fs.StringVar(&c.Root, "root", DefaultRoot, "directory for plinth's state and the default pool")
	fs.StringVar(&c.NodeID, "node-id", host, "this node's ID, reported as topology")
	fs.StringVar(&c.DriverName, "driver-name", "plinth.example.com", "CSI driver name")
	fs.StringVar(&c.TopologyKey, "topology-key", "topology.plinth.example.com/node", "topology key whose value is the node ID")
	fs.Int64Var(&c.MaxVolumes, "max-volumes", 0, "at most this many volumes on this node (0: what its pools and kernel can hold), reported in NodeGetInfo")
	fs.StringVar(&c.SysfsRoot, "sysfs-root", "/sys", "where sysfs is mounted")
	fs.StringVar(&c.DevRoot, "dev-root", "/dev", "where device nodes are")
	fs.StringVar(&c.CgroupRoot, "cgroup-root", "/sys/fs/cgroup", "where the host's cgroup filesystem is mounted (the pods' cgroups are written there to hold them to their volumes' IO limits); plinth node only")
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
