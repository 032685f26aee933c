package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// Claimer carries out a Plan: it records, wipes and formats new pools'
// disks, and mounts filesystem pools by UUID under MountDir/<pool>.
type Claimer struct {
	Records Records
	// MountDir is where filesystem pools are mounted (<root>/disks/mnt).
	MountDir string
	Run      mount.Runner
	Probe    Prober
	// Mountinfo is the mount table read to tell whether a pool is mounted
	// already (/proc/self/mountinfo).
	Mountinfo string
	Now       func() time.Time
}

// Ready is one pool as it can be opened now.
type Ready struct {
	Name   string
	Layout Layout
	Raid   string
	FsType string
	// Dir is where a filesystem pool is mounted.
	Dir string
	// Members are the pool's recorded disks that are present.
	Members []Disk
	// Recorded are the identities of all the pool's disks, present or
	// not (a disk pool's volumes each name one).
	Recorded []string
	// Degraded says why the pool runs with less redundancy.
	Degraded string
	// Err says why the pool cannot be opened (its disks missing, a
	// format that failed): the pool is unhealthy, never an empty
	// directory.
	Err error
}

// Apply claims what the plan says and returns every pool's state. One
// pool's failure does not stop the others.
func (c Claimer) Apply(ctx context.Context, plan Plan) []Ready {
	var out []Ready
	for _, pp := range plan.Pools {
		r := Ready{Name: pp.Name, Layout: pp.Layout, Raid: pp.Raid, FsType: pp.FsType}
		if pp.Problem != "" {
			r.Err = errors.New(pp.Problem)
			if pp.Claim == nil {
				continue // a rule that matched nothing: no pool, nothing to report as broken
			}
			out = append(out, r)
			continue
		}
		var err error
		switch pp.Layout {
		case LayoutDisk:
			r.Members, r.Recorded, err = c.claimDisks(ctx, pp)
		default:
			r.Dir, r.Members, err = c.filesystemPool(ctx, pp)
		}
		r.Err = err
		r.Degraded = pp.Degraded()
		out = append(out, r)
	}
	return out
}

func (c Claimer) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// claimDisks records a disk pool's new members (they are not formatted:
// each becomes one volume, formatted when staged) and erases the
// signatures of those a rule with wipe names. The record names a disk to
// wipe (its wipe owed) before anything is written to it: a start that
// stops in between wipes it next time, before the pool serves.
func (c Claimer) claimDisks(ctx context.Context, pp PoolPlan) ([]Disk, []string, error) {
	claim := Claim{Pool: pp.Name, Layout: pp.Layout, FsType: pp.FsType, State: ClaimReady, CreatedAt: c.now()}
	if pp.Claim != nil {
		claim = *pp.Claim
		claim.Disks = slices.Clone(claim.Disks)
	}
	wipe := map[string]bool{}
	for _, d := range pp.Wipe {
		wipe[d.ID] = true
	}
	if len(pp.New) > 0 {
		for _, d := range pp.New {
			m := memberOf(d)
			m.Wipe = wipe[d.ID]
			if m.Wipe {
				m.WipeSaw = d.Signature.Found
			}
			claim.Disks = append(claim.Disks, m)
		}
		if err := c.Records.Put(claim); err != nil {
			return nil, nil, err
		}
		for _, d := range pp.New {
			klog.InfoS("Claimed disk", "pool", pp.Name, "disk", d.ID, "device", d.Device, "size", FormatBytes(d.SizeBytes), "wipe", wipe[d.ID])
		}
	}
	wiped := false
	for _, d := range pp.Wipe {
		var saw []string
		for _, m := range claim.Disks {
			if m.ID == d.ID {
				saw = m.WipeSaw
			}
		}
		if err := c.wipeDisk(ctx, pp.Name, d, saw); err != nil {
			klog.ErrorS(err, "Disk named by a rule with wipe is not wiped; it is the pool's, not free, and wiped at the next start", "pool", pp.Name, "disk", d.ID, "device", d.Device)
			continue
		}
		for i := range claim.Disks {
			if claim.Disks[i].ID == d.ID {
				claim.Disks[i].Wipe, claim.Disks[i].WipeSaw, wiped = false, nil, true
			}
		}
	}
	if wiped {
		if err := c.Records.Put(claim); err != nil {
			return nil, nil, err
		}
	}
	var ids []string
	for _, m := range claim.Disks {
		ids = append(ids, m.ID)
	}
	return append(append([]Disk(nil), pp.Present...), pp.New...), ids, nil
}

// wipeDisk erases every signature on a disk a rule with wipe named, read
// again right before: the kernel must grant an exclusive open (nothing
// mounted or opened it since the plan), and wipefs opens it exclusively
// itself, so it erases nothing if something took the disk meanwhile.
func (c Claimer) wipeDisk(ctx context.Context, poolName string, d Disk, saw []string) error {
	if err := c.Probe.Exclusive(d.Device); err != nil {
		return fmt.Errorf("pool %s: disk %s: %w; plinth leaves it alone", poolName, d.ID, err)
	}
	sig, err := c.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("pool %s: disk %s: %w", poolName, d.ID, err)
	}
	// What the rule's wipe was decided on, and nothing else: a disk
	// someone wrote since (between a start that stopped and this one) is
	// not erased.
	if !sig.Empty() && !sameSignatures(sig.Found, saw) {
		return fmt.Errorf("pool %s: disk %s (%s) holds %s now, not what the wipe was decided on (%s); plinth wipes only that",
			poolName, d.ID, d.Device, sig, strings.Join(saw, ", "))
	}
	if !sig.Empty() {
		if _, err := c.Run.Run(ctx, "wipefs", "--all", "--quiet", d.Device); err != nil {
			return fmt.Errorf("pool %s: wipe %s: %w", poolName, d.Device, err)
		}
		if after, err := c.Probe.Probe(ctx, d.Device); err != nil || !after.Empty() {
			return fmt.Errorf("pool %s: %s still holds %s after wipefs --all (%v)", poolName, d.Device, after, err)
		}
	}
	klog.InfoS("Wiped disk named by a rule with wipe", "pool", poolName, "disk", d.ID, "device", d.Device, "had", sig.String())
	return nil
}

// filesystemPool makes (when new) and mounts a file or btrfs pool.
func (c Claimer) filesystemPool(ctx context.Context, pp PoolPlan) (string, []Disk, error) {
	members := pp.Present
	claim := Claim{}
	if pp.Claim != nil {
		claim = *pp.Claim
	}
	if len(pp.New) > 0 {
		if pp.Claim == nil {
			claim = Claim{Pool: pp.Name, Layout: pp.Layout, Raid: pp.Raid, FsType: pp.FsType, CreatedAt: c.now()}
			for _, d := range pp.New {
				claim.Disks = append(claim.Disks, memberOf(d))
			}
		}
		claim.State = ClaimFormatting
		// The record names the disks before anything is written to them:
		// a crash from here on leaves a claim a restart finishes.
		if err := c.Records.Put(claim); err != nil {
			return "", nil, err
		}
		uuid, wrote, err := c.format(ctx, pp)
		if err != nil {
			if kept := c.release(ctx, pp, wrote); kept != nil {
				return "", nil, fmt.Errorf("%w; the claim record is kept (state formatting, the next start formats again): %v", err, kept)
			}
			klog.ErrorS(err, "Formatting a pool failed; its claim is dropped", "pool", pp.Name)
			return "", nil, fmt.Errorf("%w; the claim is dropped, the disks are not the pool's (the next start claims them again if a rule still selects them)", err)
		}
		claim.UUID, claim.State = uuid, ClaimReady
		if err := c.Records.Put(claim); err != nil {
			return "", nil, err
		}
		members = pp.New
	}
	dir := filepath.Join(c.MountDir, pp.Name)
	if err := c.mountPool(ctx, claim, members, pp.Degraded() != "", dir); err != nil {
		return "", nil, err
	}
	return dir, members, nil
}

// release drops the claim of a pool whose formatting failed, so that its
// disks are not the pool's for ever. A new claim that failed before
// anything was written is dropped as it is. Otherwise (wipefs or mkfs ran,
// or formatting resumed after a crash) each disk must hold nothing or
// only what plinth's mkfs began (erased here); a disk that holds anything
// else, or is held, keeps the record (the error says why).
func (c Claimer) release(ctx context.Context, pp PoolPlan, wrote bool) error {
	if wrote || pp.Claim != nil {
		var began []Disk
		for _, d := range pp.New {
			if err := c.Probe.Exclusive(d.Device); err != nil {
				return fmt.Errorf("disk %s: %w", d.ID, err)
			}
			sig, err := c.Probe.Probe(ctx, d.Device)
			switch {
			case err != nil:
				return fmt.Errorf("disk %s: %w", d.ID, err)
			case sig.Empty():
			case plinthLabel(sig.Label, pp.Name) && sig.PTType == "" && !sig.Ambivalent:
				began = append(began, d)
			default:
				return fmt.Errorf("disk %s (%s) holds %s", d.ID, d.Device, sig)
			}
		}
		for _, d := range began {
			if _, err := c.Run.Run(ctx, "wipefs", "--all", "--quiet", d.Device); err != nil {
				return fmt.Errorf("erase what mkfs began on %s: %w", d.Device, err)
			}
			klog.InfoS("Erased what a failed mkfs began", "pool", pp.Name, "disk", d.ID, "device", d.Device)
		}
	}
	if err := c.Records.Drop(pp.Name); err != nil {
		return err
	}
	return nil
}

// format erases what the plan says to and makes the pool's filesystem;
// it returns the new filesystem's UUID, and whether anything was written
// to the disks (wipefs or mkfs ran) when it fails.
func (c Claimer) format(ctx context.Context, pp PoolPlan) (uuid string, wrote bool, err error) {
	uuid, err = c.formatDisks(ctx, pp, &wrote)
	return uuid, wrote, err
}

func (c Claimer) formatDisks(ctx context.Context, pp PoolPlan, wrote *bool) (string, error) {
	var devs []string
	for _, d := range pp.New {
		devs = append(devs, d.Device)
		// A disk mkfs cannot format (a record that an older plinth wrote
		// for one) is not handed to it.
		if m := tooSmall(pp.Layout, d.SizeBytes); m != "" {
			return "", fmt.Errorf("pool %s: disk %s (%s): %s", pp.Name, d.ID, d.Device, m)
		}
		// Read again right before anything is written: the plan may be
		// seconds old, and a disk someone formatted or opened since is
		// not the disk the plan judged.
		if err := c.Probe.Exclusive(d.Device); err != nil {
			return "", fmt.Errorf("pool %s: disk %s: %w; plinth leaves it alone", pp.Name, d.ID, err)
		}
		sig, err := c.Probe.Probe(ctx, d.Device)
		if err != nil {
			return "", fmt.Errorf("pool %s: disk %s: %w", pp.Name, d.ID, err)
		}
		if !sig.Empty() && !slices.ContainsFunc(pp.Wipe, func(w Disk) bool { return w.ID == d.ID }) && !plinthLabel(sig.Label, pp.Name) {
			return "", fmt.Errorf("pool %s: disk %s (%s) holds %s since it was judged free; plinth leaves it alone", pp.Name, d.ID, d.Device, sig)
		}
	}
	for _, d := range pp.Wipe {
		*wrote = true
		if _, err := c.Run.Run(ctx, "wipefs", "--all", "--quiet", d.Device); err != nil {
			return "", fmt.Errorf("pool %s: wipe %s: %w", pp.Name, d.Device, err)
		}
		klog.InfoS("Wiped disk named by a rule with wipe", "pool", pp.Name, "disk", d.ID, "device", d.Device, "had", strings.Join(d.Reasons, "; "))
	}
	var err error
	*wrote = true
	switch pp.Layout {
	case LayoutFile:
		_, err = c.Run.Run(ctx, "mkfs.xfs", append([]string{"-f", "-q", "-m", "reflink=1", "-L", "plinth"}, devs...)...) // xfs labels are at most 12 bytes
	case LayoutBtrfs:
		args := []string{"-f", "-q", "-L", "plinth-" + pp.Name, "-d", pp.Raid}
		if pp.Raid != "single" {
			args = append(args, "-m", pp.Raid)
		}
		_, err = c.Run.Run(ctx, "mkfs.btrfs", append(args, devs...)...)
	default:
		err = fmt.Errorf("layout %q has no filesystem", pp.Layout)
	}
	if err != nil {
		// mkfs's first line says why; the usage text after it does not.
		msg, _, _ := strings.Cut(err.Error(), "\n")
		return "", fmt.Errorf("pool %s: format %s: %s", pp.Name, strings.Join(devs, " "), msg)
	}
	sig, err := c.Probe.Probe(ctx, devs[0])
	if err != nil {
		return "", fmt.Errorf("pool %s: read the new filesystem's UUID: %w", pp.Name, err)
	}
	if sig.UUID == "" {
		return "", fmt.Errorf("pool %s: %s shows no filesystem UUID after formatting", pp.Name, devs[0])
	}
	klog.InfoS("Made pool filesystem", "pool", pp.Name, "layout", pp.Layout, "raid", pp.Raid, "devices", devs, "uuid", sig.UUID)
	return sig.UUID, nil
}

// mountPool mounts the pool's filesystem at dir unless one of its disks
// is mounted there already. Each disk's UUID is checked first: a disk
// found by ID that no longer carries the pool's filesystem is refused.
func (c Claimer) mountPool(ctx context.Context, claim Claim, members []Disk, degraded bool, dir string) error {
	if len(members) == 0 {
		return fmt.Errorf("pool %s: none of its disks is present", claim.Pool)
	}
	var devs []string
	mine := map[string]bool{}
	for _, d := range members {
		sig, err := c.Probe.Probe(ctx, d.Device)
		if err != nil {
			return fmt.Errorf("pool %s: %w", claim.Pool, err)
		}
		if sig.UUID != claim.UUID {
			return fmt.Errorf("pool %s: disk %s (%s) carries %s, not the pool's filesystem UUID %s; plinth leaves it alone",
				claim.Pool, d.ID, d.Device, sig.String(), claim.UUID)
		}
		devs = append(devs, d.Device)
		mine[d.MajorMinor] = true
	}
	// The mount directory is plinth's own: a real directory, never a
	// symlink (the pool would be mounted over its target, anywhere).
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("pool %s: %w", claim.Pool, err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("pool %s: %w", claim.Pool, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("pool %s: %w", claim.Pool, err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		target, _ := os.Readlink(dir)
		return fmt.Errorf("pool %s: its mount directory %s is a symlink (to %s), not a directory; plinth mounts a pool only on a directory of its own and follows no symlink there (remove it)", claim.Pool, dir, target)
	}
	if !fi.IsDir() {
		return fmt.Errorf("pool %s: its mount directory %s is not a directory (%s); remove it", claim.Pool, dir, fi.Mode().Type())
	}
	// Mounted by an earlier start (plinth restarted, the node did not):
	// what is seen there (the mount at dir on top of any other)
	// must be the pool's filesystem from its root, as plinth mounts it
	// (xfs, or btrfs's default subvolume, the top one); a bind mount of
	// a directory in it is the same device but not the pool. A btrfs
	// mount shows an anonymous device number, so the source device's
	// UUID decides.
	at, err := mountsAt(c.mountinfo(), dir)
	if err != nil {
		return err
	}
	if m := mount.Top(at); m != nil {
		what := fmt.Sprintf("%s %s (device %s, its directory %s)", m.FSType, m.Source, m.MajorMinor(), m.Root)
		ours := mine[m.MajorMinor()]
		if !ours && strings.HasPrefix(m.Source, "/dev/") {
			if sig, err := c.Probe.Probe(ctx, m.Source); err == nil && sig.UUID == claim.UUID {
				ours = true
			}
		}
		switch {
		case ours && m.Root == "/":
			return nil
		case ours:
			return fmt.Errorf("pool %s: %s is mounted at %s: the pool's filesystem, but a directory in it, not its root; plinth does not take it for the pool (unmount it: umount %s)", claim.Pool, what, dir, dir)
		}
		return fmt.Errorf("pool %s: something else (%s) is mounted at %s; plinth does not mount over it", claim.Pool, what, dir)
	}
	fsType, data := "xfs", ""
	if claim.Layout == LayoutBtrfs {
		fsType = "btrfs"
		var opts []string
		for _, d := range devs {
			opts = append(opts, "device="+d)
		}
		if degraded {
			opts = append(opts, "degraded")
		}
		data = strings.Join(opts, ",")
	}
	if err := mountOnDir(devs[0], dir, fi, fsType, data); err != nil {
		return fmt.Errorf("pool %s: mount %s (%s, UUID %s) at %s: %w", claim.Pool, devs[0], fsType, claim.UUID, dir, err)
	}
	klog.InfoS("Mounted pool", "pool", claim.Pool, "device", devs[0], "uuid", claim.UUID, "dir", dir, "degraded", degraded)
	return nil
}

// mountOnDir mounts at the directory dir that Lstat found (fi), through a
// descriptor opened without following a symlink: a symlink put there since
// the check is refused, never followed.
func mountOnDir(dev, dir string, fi os.FileInfo, fsType, data string) error {
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w (a directory, not a symlink, is mounted on)", dir, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	if was, ok := fi.Sys().(*syscall.Stat_t); !ok || uint64(was.Dev) != uint64(st.Dev) || uint64(was.Ino) != uint64(st.Ino) {
		return fmt.Errorf("%s changed while it was checked", dir)
	}
	return unix.Mount(dev, fmt.Sprintf("/proc/self/fd/%d", fd), fsType, unix.MS_NODEV|unix.MS_NOSUID, data)
}

func (c Claimer) mountinfo() string {
	if c.Mountinfo != "" {
		return c.Mountinfo
	}
	return "/proc/self/mountinfo"
}

// mountsAt lists what is mounted at dir, in table order (mount.Top is
// the one seen there).
func mountsAt(mountinfo, dir string) ([]mount.Info, error) {
	mounts, err := mount.ReadMounts(mountinfo)
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	var out []mount.Info
	for _, m := range mounts {
		if m.Mountpoint == dir {
			out = append(out, m)
		}
	}
	return out, nil
}

// sameSignatures reports whether two lists of found signatures hold the
// same entries.
func sameSignatures(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
