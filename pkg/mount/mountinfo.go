package mount

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/moby/sys/mountinfo"
	mountutils "k8s.io/mount-utils"
)

// Info is one mount of the mount table (/proc/self/mountinfo), with the
// kernel's octal escapes (\040 for a space) undone in its paths.
type Info struct {
	ID, Parent int // the mount's ID and the ID of the mount it sits on
	// Major and Minor are st_dev of the files on the mounted filesystem.
	Major, Minor int
	// Root is the directory of the filesystem that is mounted: "/" for a
	// whole filesystem, the source's path inside it for a bind.
	Root       string
	Mountpoint string
	// Options are the per-mount options, as the table writes them
	// ("rw,nosuid,nodev,relatime").
	Options string
	FSType  string
	Source  string
}

// mountTable is the table Mounts reads: this process's mount namespace.
const mountTable = "/proc/self/mountinfo"

// Mounts reads the mount table, in its order: a mount stacked on another
// at the same path comes after it. k8s.io/mount-utils reads it (again and
// again until two reads agree, on kernels whose reads can tear).
func Mounts() ([]Info, error) { return ReadMounts(mountTable) }

// MountsAt returns every mount at exactly path (cleaned), in table order.
func MountsAt(path string) ([]Info, error) {
	mounts, err := Mounts()
	if err != nil {
		return nil, err
	}
	path = filepath.Clean(path)
	var out []Info
	for _, m := range mounts {
		if m.Mountpoint == path {
			out = append(out, m)
		}
	}
	return out, nil
}

// Top is the mount of mounts (all at one path, as MountsAt returns them)
// that the path shows, the one no other of them is stacked on; nil when
// there is none. umount(2) of the path takes this one.
func Top(mounts []Info) *Info {
	var top *Info
	for i := range mounts {
		covered := false
		for _, n := range mounts {
			covered = covered || n.Parent == mounts[i].ID
		}
		if !covered {
			top = &mounts[i]
		}
	}
	return top
}

// MajorMinor is the mount's device number as the table writes it ("8:1").
func (m Info) MajorMinor() string { return fmt.Sprintf("%d:%d", m.Major, m.Minor) }

// BindsDevice reports whether m is a bind of the device node dev
// (/dev/loop3): the table shows a bind of a node of /dev as a devtmpfs
// mount whose root is the node's name.
func (m Info) BindsDevice(dev string) bool {
	return m.FSType == "devtmpfs" && m.Root == "/"+filepath.Base(dev)
}

// Under reports whether m is mounted at dir or below it (dir absolute and
// clean).
func (m Info) Under(dir string) bool { return mountutils.PathWithinBase(m.Mountpoint, dir) }

// ReadMounts reads the mount table at path as Mounts reads
// /proc/self/mountinfo: another process's (/proc/<pid>/mountinfo), or a
// fixture's. A line it cannot parse fails the read.
//
// moby/sys/mountinfo parses it (k8s.io/mount-utils depends on it too): its
// fields are split at single spaces, the kernel's only separator, with the
// kernel's octal escapes undone. mount-utils' own ParseMountInfo splits at
// any white space, so that a mount with an empty source (the kernel writes
// "tmpfs  rw") fails the whole read, and a tenant's subPath holding a
// carriage return or a no-break space (which the kernel does not escape)
// forges a mount point, a filesystem type and a source of its choosing.
func ReadMounts(table string) ([]Info, error) {
	f, err := os.Open(table)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	infos, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	out := make([]Info, 0, len(infos))
	for _, mi := range infos {
		out = append(out, Info{
			ID: mi.ID, Parent: mi.Parent, Major: mi.Major, Minor: mi.Minor,
			Root: mi.Root, Mountpoint: mi.Mountpoint, Options: mi.Options, FSType: mi.FSType, Source: mi.Source,
		})
	}
	return out, nil
}

// IsMountSource reports whether dir (or anything below it) is the source of
// a bind mount somewhere, as seen in /proc/self/mountinfo.
func IsMountSource(dir string) (bool, error) {
	mounts, err := Mounts()
	if err != nil {
		return false, err
	}
	dir = filepath.Clean(dir)
	for _, m := range mounts {
		// For a bind mount of a subdirectory, Root is the path inside the
		// source filesystem; compare against dir's suffix under that
		// filesystem's mount point.
		for _, base := range mounts {
			if base.Major != m.Major || base.Minor != m.Minor || base.Root != "/" {
				continue
			}
			rel, err := filepath.Rel(base.Mountpoint, dir)
			if err != nil || strings.HasPrefix(rel, "..") {
				continue
			}
			inside := filepath.Join("/", rel)
			if m.Root == inside || strings.HasPrefix(m.Root, inside+"/") {
				if m.Mountpoint != base.Mountpoint {
					return true, nil
				}
			}
		}
	}
	return false, nil
}
