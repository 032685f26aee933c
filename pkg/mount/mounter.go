package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
	mountutils "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// ErrOnlineResizeRefused is returned when the kernel refuses to grow a
// mounted filesystem (ext4 without CAP_SYS_RESOURCE); the filesystem is then
// grown offline at the next stage.
var ErrOnlineResizeRefused = errors.New("online resize refused")

// Mounter is what the node needs of the host's mount table.
type Mounter interface {
	// FormatAndMount formats device with fsType when it holds no
	// filesystem, then mounts it at target.
	FormatAndMount(ctx context.Context, device, target, fsType string, options []string) error
	// Bind bind-mounts source (a directory or a device file) at target,
	// then applies o with a remount; when the remount fails, the bind is
	// undone.
	Bind(source, target string, o BindOptions) error
	Unmount(target string) error
	// MountOf returns the mount at exactly path, or ok=false.
	MountOf(path string) (m *mountinfo.Info, ok bool, err error)
	// GrowFs grows the filesystem on device, mounted at mountPath, to the
	// size of the device.
	GrowFs(ctx context.Context, device, mountPath string) error
	// GrowExt4Offline checks and grows an unmounted ext2/3/4 filesystem to
	// the size of its device; it does nothing for other filesystems or
	// when the filesystem already fills the device.
	GrowExt4Offline(ctx context.Context, device string) error
}

// Host is the Mounter of the machine plinth runs on.
type Host struct {
	safe *mountutils.SafeFormatAndMount
	run  Runner
}

var _ Mounter = (*Host)(nil)

// NewHost returns the host's Mounter.
func NewHost(run Runner) *Host {
	return &Host{
		safe: &mountutils.SafeFormatAndMount{Interface: mountutils.NewWithoutSystemd(""), Exec: utilexec.New()},
		run:  run,
	}
}

func (h *Host) FormatAndMount(ctx context.Context, device, target, fsType string, options []string) error {
	var formatOpts []string
	if fsType == "btrfs" {
		formatOpts = []string{"-f"} // blkid found no filesystem; mkfs.btrfs still looks for stale signatures
	}
	if err := h.safe.FormatAndMountSensitiveWithFormatOptions(device, target, fsType, options, nil, formatOpts); err != nil {
		return fmt.Errorf("format and mount %s at %s: %w", device, target, err)
	}
	return nil
}

func (h *Host) Bind(source, target string, o BindOptions) error {
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|o.flags(), ""); err != nil {
		err = fmt.Errorf("remount %s with %s: %w", target, o, err)
		if uerr := unix.Unmount(target, 0); uerr != nil {
			return errors.Join(err, fmt.Errorf("undo bind mount at %s: %w", target, uerr))
		}
		return err
	}
	return nil
}

// BindOptions are the per-mount options of a bind mount: the ones a bind
// can carry (filesystem options belong to the mount of the filesystem).
type BindOptions struct {
	ReadOnly, NoSuid, NoDev, NoExec bool
	// Atime is "", "noatime", "relatime" or "strictatime".
	Atime      string
	NoDiratime bool
}

func (o BindOptions) flags() uintptr {
	var f uintptr
	for _, b := range []struct {
		on   bool
		flag uintptr
	}{{o.ReadOnly, unix.MS_RDONLY}, {o.NoSuid, unix.MS_NOSUID}, {o.NoDev, unix.MS_NODEV}, {o.NoExec, unix.MS_NOEXEC}, {o.NoDiratime, unix.MS_NODIRATIME}} {
		if b.on {
			f |= b.flag
		}
	}
	switch o.Atime {
	case "noatime":
		f |= unix.MS_NOATIME
	case "relatime":
		f |= unix.MS_RELATIME
	case "strictatime":
		f |= unix.MS_STRICTATIME
	}
	return f
}

func (o BindOptions) String() string {
	var opts []string
	if o.ReadOnly {
		opts = append(opts, "ro")
	} else {
		opts = append(opts, "rw")
	}
	for _, b := range []struct {
		on   bool
		name string
	}{{o.NoSuid, "nosuid"}, {o.NoDev, "nodev"}, {o.NoExec, "noexec"}, {o.NoDiratime, "nodiratime"}, {o.Atime != "", o.Atime}} {
		if b.on {
			opts = append(opts, b.name)
		}
	}
	return strings.Join(opts, ",")
}

// WithFlags adds the per-mount options among a consumer's mount flags.
// "ro" can only make the mount read-only; "rw" never undoes a read-only
// request; filesystem options are left to the filesystem's own mount.
func (o BindOptions) WithFlags(flags []string) BindOptions {
	for _, f := range flags {
		switch f {
		case "ro":
			o.ReadOnly = true
		case "nosuid":
			o.NoSuid = true
		case "nodev":
			o.NoDev = true
		case "noexec":
			o.NoExec = true
		case "nodiratime":
			o.NoDiratime = true
		case "noatime", "relatime", "strictatime":
			o.Atime = f
		}
	}
	return o
}

func (h *Host) Unmount(target string) error {
	if err := unix.Unmount(target, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

func (h *Host) MountOf(path string) (*mountinfo.Info, bool, error) {
	mounts, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(filepath.Clean(path)))
	if err != nil {
		return nil, false, fmt.Errorf("read mountinfo: %w", err)
	}
	if len(mounts) == 0 {
		return nil, false, nil
	}
	return mounts[len(mounts)-1], true, nil
}

func (h *Host) GrowFs(ctx context.Context, device, mountPath string) error {
	fsType, err := h.safe.GetDiskFormat(device)
	if err != nil {
		return fmt.Errorf("detect filesystem on %s: %w", device, err)
	}
	switch fsType {
	case "xfs":
		_, err = h.run.Run(ctx, "xfs_growfs", "-d", mountPath)
	case "btrfs":
		_, err = h.run.Run(ctx, "btrfs", "filesystem", "resize", "max", mountPath)
	case "ext2", "ext3", "ext4":
		// Without CAP_SYS_RESOURCE the kernel refuses EXT4_IOC_RESIZE_FS;
		// resize2fs reports "Permission denied to resize filesystem".
		if _, err = h.run.Run(ctx, "resize2fs", device); err != nil &&
			(strings.Contains(err.Error(), "Permission denied to resize") || strings.Contains(err.Error(), "Operation not permitted")) {
			return fmt.Errorf("grow ext4 on %s: %w: %w", device, ErrOnlineResizeRefused, err)
		}
	case "":
		return nil // no filesystem: a raw block volume
	default:
		return fmt.Errorf("grow %s: filesystem %q cannot be grown", device, fsType)
	}
	if err != nil {
		return fmt.Errorf("grow filesystem on %s: %w", device, err)
	}
	return nil
}

func (h *Host) GrowExt4Offline(ctx context.Context, device string) error {
	fsType, err := h.safe.GetDiskFormat(device)
	if err != nil || !strings.HasPrefix(fsType, "ext") {
		return err
	}
	fsBytes, err := h.ext4Bytes(ctx, device)
	if err != nil {
		return err
	}
	devBytes, err := DeviceSize(device)
	if err != nil {
		return err
	}
	if devBytes <= fsBytes {
		return nil
	}
	// e2fsck -p exits 1 when it corrected something: still fine to resize.
	if _, err := h.run.Run(ctx, "e2fsck", "-f", "-p", device); err != nil {
		var ee interface{ ExitCode() int }
		if !errors.As(err, &ee) || ee.ExitCode() > 1 {
			return fmt.Errorf("check %s before growing: %w", device, err)
		}
	}
	if _, err := h.run.Run(ctx, "resize2fs", device); err != nil {
		return fmt.Errorf("grow %s offline: %w", device, err)
	}
	return nil
}

func (h *Host) ext4Bytes(ctx context.Context, device string) (int64, error) {
	out, err := h.run.Run(ctx, "dumpe2fs", "-h", device)
	if err != nil {
		return 0, err
	}
	var count, size int64
	for _, line := range strings.Split(string(out), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "Block count":
			count, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		case "Block size":
			size, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	if count == 0 || size == 0 {
		return 0, fmt.Errorf("dumpe2fs %s: no block count or size", device)
	}
	return count * size, nil
}

// DeviceSize returns the size in bytes of a block device.
func DeviceSize(device string) (int64, error) {
	f, err := os.Open(device)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", device, err)
	}
	defer f.Close()
	var size uint64
	if err := ioctlGetSize64(int(f.Fd()), &size); err != nil {
		return 0, fmt.Errorf("size of %s: %w", device, err)
	}
	return int64(size), nil
}
