package node

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// host is what the ownership checks read of the machine: stat(2) of a
// path (following symlinks) and the mount table. The node reads the real
// ones (realHost); the tests of the decisions give plain data.
type host struct {
	stat   func(path string) (unix.Stat_t, error)
	mounts func() ([]mount.Info, error)
}

func realHost() host {
	return host{mounts: mount.Mounts, stat: func(path string) (unix.Stat_t, error) {
		var st unix.Stat_t
		err := unix.Stat(path, &st)
		return st, err
	}}
}

func (h host) rdev(path string) (uint64, error) {
	st, err := h.stat(path)
	if err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Rdev, nil
}

// owns reports whether mount m at path is the volume's own: a mount of its
// read-write device (filesystem), a bind of one of its devices (block;
// roDevice names a read-only one), or a bind of its directory.
func (h host) owns(att pool.Attachment, attached bool, m *mount.Info, path string, block bool) (own bool, roDevice string, err error) {
	if !attached || m == nil {
		return false, "", nil
	}
	if block {
		st, err := h.stat(path)
		if err != nil {
			return false, "", fmt.Errorf("stat %s: %w", path, err)
		}
		if st.Mode&unix.S_IFMT != unix.S_IFBLK {
			return false, "", nil
		}
		for i, dev := range append([]string{att.Device}, att.ReadOnly...) {
			if dev == "" {
				continue
			}
			if r, err := h.rdev(dev); err == nil && r == st.Rdev {
				if i == 0 {
					return true, "", nil
				}
				return true, dev, nil
			}
		}
		return false, "", nil
	}
	if att.Device != "" {
		if m.Root != "/" {
			return false, "", nil
		}
		// A btrfs mount shows an anonymous device number, so only its
		// source names the device. Any other mount is judged by its
		// device number: its source is a free-form string (mount -t
		// tmpfs /dev/loop3 dir).
		if m.FSType == "btrfs" && m.Source == att.Device {
			return true, "", nil
		}
		r, err := h.rdev(att.Device)
		if err != nil {
			return false, "", err
		}
		return uint64(unix.Major(r)) == uint64(m.Major) && uint64(unix.Minor(r)) == uint64(m.Minor), "", nil
	}
	if att.Dir == "" {
		return false, "", nil
	}
	at, err := h.stat(path)
	if err != nil {
		return false, "", fmt.Errorf("stat %s: %w", path, err)
	}
	dir, err := h.stat(att.Dir)
	if err != nil {
		return false, "", fmt.Errorf("stat %s: %w", att.Dir, err)
	}
	return at.Dev == dir.Dev && at.Ino == dir.Ino, "", nil
}

func mountReadOnly(m *mount.Info) bool {
	return slices.Contains(strings.Split(m.Options, ","), "ro")
}

// insideVolume refuses a path whose directory lies inside a volume's
// filesystem (a staging mount, or a publish of one, share its device):
// mounting there would make a directory in a tenant's volume and show one
// volume inside another.
func (p *Mounts) insideVolume(path string) error {
	var parent unix.Stat_t
	if err := unix.Stat(filepath.Dir(path), &parent); err != nil {
		return nil // the caller finds out soon enough
	}
	staged, err := p.staged.all()
	if err != nil {
		return err
	}
	for id, at := range staged {
		if _, ok, err := p.mounter.MountOf(at); err != nil || !ok {
			continue // a record from before a reboot: nothing mounted there
		}
		// A staging mount undone since MountOf (another volume's unstage
		// runs meanwhile) shows the directory below it, whose device is its
		// parent's: that is no volume.
		var st, below unix.Stat_t
		if err := unix.Stat(at, &st); err != nil || st.Dev != parent.Dev {
			continue
		}
		if err := unix.Stat(filepath.Dir(at), &below); err == nil && below.Dev == st.Dev {
			continue
		}
		return fmt.Errorf("%w: %s lies inside volume %s (staged at %s)", pool.ErrInvalid, path, id, at)
	}
	return nil
}

// stagedElsewhere returns the path the volume is staged at, when that is
// recorded, is not path, and still holds the volume (its device attached
// for block, its own mount there for a filesystem); "" otherwise.
func (p *Mounts) stagedElsewhere(id, path string, att pool.Attachment, attached, block bool) (string, error) {
	prev, err := p.staged.stagedAt(id)
	if err != nil || prev == "" || prev == path || !attached {
		return "", err
	}
	if block {
		if att.Device != "" {
			return prev, nil
		}
		return "", nil
	}
	pm, ok, err := p.mounter.MountOf(prev)
	if err != nil || !ok {
		return "", err
	}
	own, _, err := p.host.owns(att, attached, pm, prev, false)
	if err != nil || !own {
		return "", err
	}
	return prev, nil
}

// notMountedElsewhere refuses (ErrInUse) while a device of all is mounted
// anywhere, but for the filesystem staging mounts at stagingPath that are
// own's (none when own has no device).
func (h host) notMountedElsewhere(id string, all pool.Attachment, attached bool, own pool.Attachment, stagingPath string) error {
	if !attached {
		return nil
	}
	mounts, err := h.deviceMounts(all)
	if err != nil {
		return err
	}
	var in []string
	for _, m := range mounts {
		if own.Device != "" && m.Mountpoint == stagingPath {
			if ours, _, err := h.owns(own, true, &m, stagingPath, false); err != nil {
				return err
			} else if ours {
				continue
			}
		}
		if !slices.Contains(in, m.Mountpoint) {
			in = append(in, m.Mountpoint)
		}
	}
	if len(in) > 0 {
		return fmt.Errorf("%w: volume %s is still mounted at %s", pool.ErrInUse, id, strings.Join(in, ", "))
	}
	return nil
}

// deviceMounts lists every mount of the volume's devices: filesystems on
// them and binds of their device nodes.
func (h host) deviceMounts(att pool.Attachment) ([]mount.Info, error) {
	devs := append([]string{att.Device}, att.ReadOnly...)
	type majmin struct{ major, minor int }
	nums := map[majmin]bool{}
	for _, d := range devs {
		if d == "" {
			continue
		}
		if r, err := h.rdev(d); err == nil {
			nums[majmin{int(unix.Major(r)), int(unix.Minor(r))}] = true
		}
	}
	if len(nums) == 0 {
		return nil, nil
	}
	mounts, err := h.mounts()
	if err != nil {
		return nil, err
	}
	var out []mount.Info
	for _, m := range mounts {
		of := nums[majmin{m.Major, m.Minor}]
		for _, d := range devs {
			of = of || d != "" && (m.Source == d || m.BindsDevice(d))
		}
		if of {
			out = append(out, m)
		}
	}
	return out, nil
}

// publishedAt lists where the volume is published now, from the mount
// table: mounts of the same filesystem and root as the staging mount (the
// first at stagingPath in the table: the staging mount itself, even with
// something stacked on it), or binds of the volume's devices.
func (h host) publishedAt(att pool.Attachment, stagingPath string, block bool) ([]string, error) {
	mounts, err := h.mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	if block {
		for _, m := range mounts {
			for _, dev := range append([]string{att.Device}, att.ReadOnly...) {
				if dev != "" && m.BindsDevice(dev) {
					out = append(out, m.Mountpoint)
				}
			}
		}
		return out, nil
	}
	at := filepath.Clean(stagingPath)
	i := slices.IndexFunc(mounts, func(m mount.Info) bool { return m.Mountpoint == at })
	if i < 0 {
		return nil, nil
	}
	staged := &mounts[i]
	if own, _, err := h.owns(att, true, staged, stagingPath, false); err != nil || !own {
		return nil, err
	}
	for _, m := range mounts {
		if m.Major == staged.Major && m.Minor == staged.Minor && m.Root == staged.Root && m.Mountpoint != stagingPath {
			out = append(out, m.Mountpoint)
		}
	}
	return out, nil
}
