package mount

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

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
func ReadMounts(table string) ([]Info, error) {
	infos, err := mountutils.ParseMountInfo(table)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	out := make([]Info, 0, len(infos))
	for _, mi := range infos {
		m := Info{
			ID: mi.ID, Parent: mi.ParentID, Major: mi.Major, Minor: mi.Minor,
			Options: strings.Join(mi.MountOptions, ","),
		}
		// mount-utils leaves the kernel's escapes in place.
		for _, f := range []struct {
			to   *string
			from string
		}{{&m.Root, mi.Root}, {&m.Mountpoint, mi.MountPoint}, {&m.FSType, mi.FsType}, {&m.Source, mi.Source}} {
			if *f.to, err = unescape(f.from); err != nil {
				return nil, fmt.Errorf("read mountinfo: mount %d: %w", mi.ID, err)
			}
		}
		out = append(out, m)
	}
	return out, nil
}

// unescape undoes the octal escapes the kernel writes in mountinfo's
// fields: \040 a space, \011 a tab, \012 a newline, \134 a backslash (and
// \043 a '#' on newer kernels).
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("bad escape in %q: too short", s)
		}
		c, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q: %w", s, err)
		}
		b.WriteByte(byte(c))
		i += 3
	}
	return b.String(), nil
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
