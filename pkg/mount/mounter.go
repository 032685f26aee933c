package mount

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/ext4"
)

// ErrOnlineResizeRefused is returned when the kernel refuses to grow a
// mounted filesystem (ext4 without CAP_SYS_RESOURCE); the filesystem is then
// grown offline at the next stage.
var ErrOnlineResizeRefused = errors.New("online resize refused")

// ErrForeignData: a device holds data plinth will not format over or mount
// as asked (a partition table, another filesystem than the volume's).
var ErrForeignData = errors.New("device holds other data")

// Mounter is what the node needs of the host's mount table.
type Mounter interface {
	// FormatAndMount probes device once: it makes a filesystem of fsType
	// when there is none, grows an ext2/3/4 filesystem offline when its
	// device has grown (see GrowFs), refuses another filesystem or a
	// partition table (ErrForeignData), then mounts it at target (see
	// Mount).
	FormatAndMount(ctx context.Context, device, target, fsType string, options []string) error
	// FormatBlank makes a filesystem of fsType on device without probing
	// it, and tells mkfs that the device reads as zeros (nothing to zero
	// or discard). Only for a device its volume's record proves blank:
	// made of zeros, and no mkfs started on it since (pool.Volume.Blank).
	FormatBlank(ctx context.Context, device, fsType string) error
	// Mount mounts the filesystem of fsType on device at target with
	// mount(2), probing nothing; options are translated by ParseOptions.
	Mount(device, target, fsType string, options []string) error
	// Bind bind-mounts source (a directory or a device file) at target,
	// then applies o with a remount; when the remount fails, the bind is
	// undone.
	Bind(source, target string, o BindOptions) error
	Unmount(target string) error
	// MountOf returns the mount at exactly path, the top one where mounts
	// are stacked there (what the path shows), or ok=false.
	MountOf(path string) (m *Info, ok bool, err error)
	// GrowFs grows the filesystem on device, mounted at mountPath, to the
	// size of the device.
	GrowFs(ctx context.Context, device, mountPath string) error
}

// ErrNoTemplate: a Templater cannot format this device (a filesystem type
// it does not make, or no template to be had); nothing was written to it.
var ErrNoTemplate = errors.New("no filesystem template")

// Templater formats a blank device (one that reads as zeros) with a copy
// of a filesystem made once per type and size (pkg/fsimage), instead of
// running mkfs for it. An error wrapping ErrNoTemplate means the device is
// untouched and mkfs may run.
type Templater interface {
	Format(ctx context.Context, device, fsType string) error
}

// Host is the Mounter of the machine plinth runs on. Every program it runs
// (blkid, mkfs, e2fsck, resize2fs, xfs_growfs, btrfs) runs through run,
// with the caller's context: a hung program ends with the request.
type Host struct {
	run Runner
	// Templates, when set, formats blank devices (FormatBlank) where it
	// can; mkfs does the rest.
	Templates Templater
}

var _ Mounter = (*Host)(nil)

// NewHost returns the host's Mounter.
func NewHost(run Runner) *Host {
	return &Host{run: run}
}

// Probe returns the filesystem type on device, "" when it holds no
// signature blkid knows; a partition table is ErrForeignData.
func (h *Host) Probe(ctx context.Context, device string) (string, error) {
	out, err := h.run.Run(ctx, "blkid", "-p", "-s", "TYPE", "-s", "PTTYPE", "-o", "export", device)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 2 {
			return "", nil // nothing found
		}
		return "", fmt.Errorf("probe %s: %w", device, err)
	}
	tags := BlkidTags(out)
	fsType, ptType := tags["TYPE"], tags["PTTYPE"]
	if ptType != "" {
		return "", fmt.Errorf("%w: %s has a %s partition table", ErrForeignData, device, ptType)
	}
	return fsType, nil
}

// mkfsArgs: fast and safe on a fresh loop device: no discard pass (the
// image is sparse or preallocated already, and a discard would punch the
// preallocation out), no reserved blocks on ext4, lazy inode table
// initialisation (ext4's default). With blank (the device is known to read
// as zeros) ext4 also skips zeroing its journal and inode tables and marks
// them zeroed, so that the kernel's lazy init has nothing to write after
// the mount (assume_storage_prezeroed, e2fsprogs 1.47). mkfs.xfs and
// mkfs.btrfs write only their metadata either way (-K: no discard).
func mkfsArgs(fsType, device string, blank bool) ([]string, error) {
	switch fsType {
	case "ext4":
		ext := "nodiscard"
		if blank {
			ext += ",assume_storage_prezeroed=1"
		}
		return []string{"-F", "-q", "-m0", "-E", ext, device}, nil
	case "xfs":
		return []string{"-f", "-q", "-K", device}, nil
	case "btrfs":
		// blkid found nothing; mkfs.btrfs still looks for stale signatures.
		return []string{"-f", "-q", "-K", device}, nil
	}
	return nil, fmt.Errorf("make filesystem on %s: %q is not ext4, xfs or btrfs", device, fsType)
}

func (h *Host) mkfs(ctx context.Context, device, fsType string, blank bool) error {
	args, err := mkfsArgs(fsType, device, blank)
	if err != nil {
		return err
	}
	_, err = h.run.Run(ctx, "mkfs."+fsType, args...)
	if err != nil && blank && fsType == "ext4" && strings.Contains(err.Error(), "assume_storage_prezeroed") {
		// An mke2fs older than 1.47 does not know the option: zero as usual.
		args, _ = mkfsArgs(fsType, device, false)
		_, err = h.run.Run(ctx, "mkfs."+fsType, args...)
	}
	if err != nil {
		return fmt.Errorf("format %s as %s: %w", device, fsType, err)
	}
	return nil
}

func (h *Host) FormatBlank(ctx context.Context, device, fsType string) error {
	if h.Templates != nil {
		err := h.Templates.Format(ctx, device, fsType)
		if !errors.Is(err, ErrNoTemplate) {
			return err
		}
		klog.V(4).InfoS("Formatting with mkfs", "device", device, "reason", err)
	}
	return h.mkfs(ctx, device, fsType, true)
}

func (h *Host) FormatAndMount(ctx context.Context, device, target, fsType string, options []string) error {
	if _, _, err := ParseOptions(options); err != nil {
		return err
	}
	existing, err := h.Probe(ctx, device)
	if err != nil {
		return err
	}
	switch {
	case existing == "":
		if err := h.mkfs(ctx, device, fsType, false); err != nil {
			return err
		}
	case existing != fsType:
		return fmt.Errorf("%w: %s holds %s, the volume is %s", ErrForeignData, device, existing, fsType)
	case strings.HasPrefix(existing, "ext"):
		if err := h.growExt4Offline(ctx, device); err != nil {
			return err
		}
	}
	return h.Mount(device, target, fsType, options)
}

func (h *Host) Mount(device, target, fsType string, options []string) error {
	flags, data, err := ParseOptions(options)
	if err != nil {
		return err
	}
	if fsType == "xfs" && !slices.Contains(strings.Split(data, ","), "nouuid") {
		// A clone or restore is a copy of its source's blocks, UUID and
		// all, and XFS refuses to mount a second filesystem whose UUID is
		// mounted already. Each volume is a device of its own: the check
		// guards nothing here.
		data = strings.TrimPrefix(data+",nouuid", ",")
	}
	at, err := pin(target, unix.S_IFDIR)
	if err != nil {
		return err
	}
	defer at.Close()
	if err := unix.Mount(device, at.proc(), fsType, flags, data); err != nil {
		return fmt.Errorf("mount %s (%s) at %s with %q: %w", device, fsType, target, strings.Join(options, ","), err)
	}
	return nil
}

// ErrBadOption: a mount option mount(2) cannot be given as asked: one only
// mount(8) understands (noauto, user, nofail, _netdev, ...), one that
// changes what is mounted or how it propagates (bind, remount, shared,
// ...), or one that contradicts another in the same list (exec with
// noexec, dev with nodev). Refused rather than guessed at.
var ErrBadOption = errors.New("mount option cannot be applied")

// mountOnly are options of mount(8) or fstab that mount(2) has no flag
// for, and options that change what is mounted, where, or how it
// propagates.
var mountOnly = map[string]bool{
	"auto": true, "noauto": true, "user": true, "nouser": true, "users": true, "owner": true, "group": true,
	"nofail": true, "_netdev": true, "comment": true, "defaults": true, "loop": true, "offset": true, "sizelimit": true,
	"bind": true, "rbind": true, "remount": true, "move": true,
	"shared": true, "rshared": true, "slave": true, "rslave": true, "private": true, "rprivate": true,
	"unbindable": true, "runbindable": true,
	// Not carried by the binds that publish the volume (each is remounted
	// with BindOptions only), or no longer honoured by the kernel.
	"nosymfollow": true, "mand": true,
}

// undo are options that only clear a flag another option sets: the
// kernel's default without it, a contradiction with it.
var undo = map[string][]string{
	"exec": {"noexec"}, "suid": {"nosuid"}, "dev": {"nodev"}, "diratime": {"nodiratime"},
	"atime": {"noatime", "strictatime"}, "norelatime": {"relatime"}, "nostrictatime": {"strictatime"},
	"nolazytime": {"lazytime"}, "loud": {"silent"}, "async": {"sync"}, "nomand": nil,
}

// ParseOptions translates mount options (a CSI volume's mount flags, with
// nodev and nosuid) into mount(2) flags and the data string that carries
// the filesystem's own options (the filesystem checks those and refuses
// what it does not know). The per-mount flags are BindOptions' (one table
// for both kinds of mount): "ro" can only make the mount read-only, "rw"
// never undoes it. What mount(2) cannot take as asked is ErrBadOption.
func ParseOptions(options []string) (uintptr, string, error) {
	var extra uintptr
	var data []string
	atime := map[string]bool{}
	for _, o := range options {
		name, _, _ := strings.Cut(o, "=")
		if mountOnly[name] || strings.HasPrefix(name, "x-") {
			return 0, "", fmt.Errorf("%w: %q is not an option mount(2) takes for a volume", ErrBadOption, o)
		}
		if against, ok := undo[o]; ok {
			for _, a := range against {
				if slices.Contains(options, a) {
					return 0, "", fmt.Errorf("%w: %q contradicts %q", ErrBadOption, o, a)
				}
			}
			continue // the kernel's default
		}
		switch o {
		case "noatime", "relatime", "strictatime":
			atime[o] = true
		case "ro", "rw", "nosuid", "nodev", "noexec", "nodiratime":
		case "sync":
			extra |= unix.MS_SYNCHRONOUS
		case "dirsync":
			extra |= unix.MS_DIRSYNC
		case "lazytime":
			extra |= unix.MS_LAZYTIME
		case "silent":
			extra |= unix.MS_SILENT
		case "iversion":
			extra |= unix.MS_I_VERSION
		default:
			data = append(data, o)
		}
	}
	if len(atime) > 1 {
		return 0, "", fmt.Errorf("%w: more than one of noatime, relatime, strictatime", ErrBadOption)
	}
	return BindOptions{}.WithFlags(options).flags() | extra, strings.Join(data, ","), nil
}

func (h *Host) Bind(source, target string, o BindOptions) error {
	src, err := pin(source, 0)
	if err != nil {
		return err
	}
	defer src.Close()
	var srcStat unix.Stat_t
	if err := unix.Fstat(src.fd, &srcStat); err != nil {
		return fmt.Errorf("stat %s: %w", source, err)
	}
	kind := uint32(unix.S_IFDIR)
	if srcStat.Mode&unix.S_IFMT != unix.S_IFDIR {
		kind = unix.S_IFREG // a device node is bound onto a file
	}
	at, err := pin(target, kind)
	if err != nil {
		return err
	}
	defer at.Close()
	if err := unix.Mount(src.proc(), at.proc(), "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind mount %s at %s: %w", source, target, err)
	}
	// The remount goes to the new mount's root, found again without
	// following a symlink, and checked to be the bind just made.
	err = func() error {
		root, err := pin(target, 0)
		if err != nil {
			return err
		}
		defer root.Close()
		var st unix.Stat_t
		if err := unix.Fstat(root.fd, &st); err != nil {
			return err
		}
		if st.Dev != srcStat.Dev || st.Ino != srcStat.Ino {
			return fmt.Errorf("%s changed under the bind mount", target)
		}
		if err := unix.Mount("", root.proc(), "", unix.MS_BIND|unix.MS_REMOUNT|o.flags(), ""); err != nil {
			return fmt.Errorf("remount %s with %s: %w", target, o, err)
		}
		return nil
	}()
	if err != nil {
		if uerr := h.Unmount(target); uerr != nil {
			return errors.Join(err, fmt.Errorf("undo bind mount at %s: %w", target, uerr))
		}
		return err
	}
	return nil
}

// pinned is a path opened without following a symlink at its end
// (O_PATH|O_NOFOLLOW), so that a mount made through proc() lands on what
// was checked, even if the path is swapped for a symlink meanwhile.
type pinned struct{ fd int }

// pin opens path as pinned; with kind (S_IFDIR, S_IFREG) it must be that.
func pin(path string, kind uint32) (pinned, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return pinned{}, fmt.Errorf("open %s: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return pinned{}, fmt.Errorf("stat %s: %w", path, err)
	}
	t := st.Mode & unix.S_IFMT
	if t == unix.S_IFLNK || kind != 0 && t != kind {
		unix.Close(fd)
		return pinned{}, fmt.Errorf("%s is not a %s (mode %o): not mounting there", path, kindName(kind), t)
	}
	return pinned{fd: fd}, nil
}

func kindName(kind uint32) string {
	switch kind {
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFREG:
		return "regular file"
	}
	return "file that is not a symbolic link"
}

func (p pinned) proc() string { return "/proc/self/fd/" + strconv.Itoa(p.fd) }
func (p pinned) Close() error { return unix.Close(p.fd) }

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

// Matches reports whether a mount's per-mount options (mountinfo's
// "rw,nosuid,nodev,relatime" column) are these: read-only, nosuid, nodev,
// noexec and nodiratime must agree; the atime mode only when one is asked.
func (o BindOptions) Matches(options string) bool {
	has := map[string]bool{}
	for _, f := range strings.Split(options, ",") {
		has[f] = true
	}
	for _, b := range []struct {
		want bool
		name string
	}{{o.ReadOnly, "ro"}, {o.NoSuid, "nosuid"}, {o.NoDev, "nodev"}, {o.NoExec, "noexec"}, {o.NoDiratime, "nodiratime"}} {
		if b.want != has[b.name] {
			return false
		}
	}
	switch o.Atime {
	case "":
		return true
	case "strictatime":
		return !has["noatime"] && !has["relatime"]
	}
	return has[o.Atime]
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
	// UMOUNT_NOFOLLOW: a symlink put at target is never followed to
	// unmount whatever it points at.
	if err := unix.Unmount(target, unix.UMOUNT_NOFOLLOW); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", target, err)
	}
	return nil
}

func (h *Host) MountOf(path string) (*Info, bool, error) {
	mounts, err := MountsAt(path)
	if err != nil {
		return nil, false, err
	}
	// Of mounts stacked at path, the one the path shows, which is what
	// umount(2) of path takes: a check of the bottom one would pass a
	// volume's own mount while the unmount took what covers it.
	top := Top(mounts)
	return top, top != nil, nil
}

func (h *Host) GrowFs(ctx context.Context, device, mountPath string) error {
	fsType, err := h.Probe(ctx, device)
	if err != nil {
		return err
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

// growExt4Offline checks and grows an unmounted ext2/3/4 filesystem to the
// size of its device; it does nothing when the filesystem fills the device.
func (h *Host) growExt4Offline(ctx context.Context, device string) error {
	fsBytes, err := ext4Bytes(device)
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

// ext4Bytes reads the size of an ext2/3/4 filesystem from its superblock:
// block count times block size.
func ext4Bytes(device string) (int64, error) {
	f, err := os.Open(device)
	if err != nil {
		return 0, fmt.Errorf("open %s: %w", device, err)
	}
	defer f.Close()
	sb := make(ext4.Super, ext4.SuperSize)
	if _, err := f.ReadAt(sb, ext4.SuperOffset); err != nil {
		return 0, fmt.Errorf("read superblock of %s: %w", device, err)
	}
	if !sb.Valid() {
		return 0, fmt.Errorf("%w: %s has no ext2/3/4 superblock", ErrForeignData, device)
	}
	logSize := sb.LogBlockSize()
	if logSize > ext4.MaxLogBlockSize {
		return 0, fmt.Errorf("%s: ext4 block size 2^(10+%d) is not valid", device, logSize)
	}
	return int64(sb.Blocks()) << (10 + logSize), nil
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

// BlkidTags reads `blkid -o export` output: one KEY=value per line.
func BlkidTags(out []byte) map[string]string {
	tags := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok {
			tags[k] = v
		}
	}
	return tags
}
