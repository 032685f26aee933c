package whole

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// Disks finds the node's disks as last read (disk.Watcher).
type Disks interface {
	Find(id string) (disk.Disk, bool)
}

// Loops makes and releases the read-only devices of read-only block
// publishes (a loop device over the disk, which refuses writes).
type Loops interface {
	FindAll(file string) ([]mount.Device, error)
	Attach(file string, readOnly bool) (string, error)
	DetachDevice(file, dev string) error
}

// Config of a disk pool.
type Config struct {
	Name string
	// Dir holds the pool's records (on plinth's root, not on the disks).
	Dir string
	// Members are the identities of the pool's claimed disks.
	Members []string
	// FsType is put on filesystem volumes that ask for none (ext4).
	FsType string
	Disks  Disks
	Loops  Loops
	Run    mount.Runner
	// Probe reads a disk's signatures and asks the kernel whether
	// anything holds it, right before a disk is handed out, attached
	// for the first time, mounted again or wiped: the watcher's last scan
	// may be seconds old.
	Probe disk.Prober
	// Mountinfo is read to tell whether a disk is in use
	// (/proc/self/mountinfo).
	Mountinfo string
	// SysfsRoot is where a disk's holders are read (/sys).
	SysfsRoot string
	// Rescan, when set, reads the disks again after one is wiped, so
	// that it is free at once.
	Rescan func(context.Context) error
}

// Pool is a disk pool.
type Pool struct {
	// GetVolume, ListVolumes: from the index (a disk pool has no
	// snapshots: GetSnapshot and ListSnapshots are its own).
	pool.VolumeReads
	cfg   Config
	index *pool.Index
	// mu makes choosing a free disk and recording it one step.
	mu sync.Mutex
}

var _ pool.Pool = (*Pool)(nil)

// New opens the pool's records in cfg.Dir.
func New(cfg Config) (*Pool, error) {
	if err := pool.ValidateName(cfg.Name); err != nil {
		return nil, err
	}
	if cfg.FsType == "" {
		cfg.FsType = pool.FsTypes()[0]
	}
	if err := pool.CheckFsType(cfg.FsType); err != nil {
		return nil, fmt.Errorf("pool %s: %w", cfg.Name, err)
	}
	if cfg.Mountinfo == "" {
		cfg.Mountinfo = "/proc/self/mountinfo"
	}
	if cfg.Probe == nil {
		return nil, fmt.Errorf("pool %s: no disk probe configured", cfg.Name)
	}
	idx, err := pool.OpenIndex(filepath.Join(cfg.Dir, "volumes"), filepath.Join(cfg.Dir, "snapshots"))
	if err != nil {
		return nil, fmt.Errorf("open pool %s: %w", cfg.Name, err)
	}
	p := &Pool{VolumeReads: idx.VolumeReads(), cfg: cfg, index: idx}
	idx.LogLoaded(cfg.Name, p.Backend(), cfg.Dir)
	return p, nil
}

func (p *Pool) Name() string    { return p.cfg.Name }
func (p *Pool) Backend() string { return "disk" }

// Capabilities: block, or any filesystem plinth makes, on a whole disk.
func (p *Pool) Capabilities() pool.Capabilities {
	fs := []string{p.cfg.FsType}
	for _, f := range pool.FsTypes() {
		if f != p.cfg.FsType {
			fs = append(fs, f)
		}
	}
	return pool.Capabilities{Block: true, FsTypes: fs}
}

// used maps disk ID to the volume on it.
func (p *Pool) used() map[string]string {
	out := map[string]string{}
	for _, v := range p.index.Volumes() {
		out[v.Disk] = v.ID
	}
	return out
}

// free lists the pool's present disks that hold no volume and nothing
// else, smallest first.
func (p *Pool) free() []disk.Disk {
	used := p.used()
	var out []disk.Disk
	for _, id := range p.cfg.Members {
		d, ok := p.cfg.Disks.Find(id)
		if !ok || used[id] != "" || len(d.MountPoints) > 0 || len(d.Holders) > 0 || !d.Signature.Empty() {
			continue
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].SizeBytes != out[j].SizeBytes {
			return out[i].SizeBytes < out[j].SizeBytes
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Stats: the disks present; free is the free disks' sum, and one volume
// may be at most the largest free disk.
func (p *Pool) Stats(ctx context.Context) (pool.Stats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var st pool.Stats
	present := 0
	for _, id := range p.cfg.Members {
		if d, ok := p.cfg.Disks.Find(id); ok {
			st.TotalBytes += d.SizeBytes
			present++
		}
	}
	for _, d := range p.free() {
		st.FreeBytes += d.SizeBytes
		st.LargestVolumeBytes = max(st.LargestVolumeBytes, d.SizeBytes)
	}
	for _, v := range p.index.Volumes() {
		st.ProvisionedBytes += v.CapacityBytes
		st.Volumes++
	}
	if present == 0 && len(p.cfg.Members) > 0 {
		return pool.Stats{}, fmt.Errorf("%w: pool %s: none of its %d disks is present", pool.ErrNotReady, p.cfg.Name, len(p.cfg.Members))
	}
	if st.FreeBytes == 0 {
		st.LargestVolumeBytes = 0
	}
	if missing := len(p.cfg.Members) - present; missing > 0 {
		st.Degraded = fmt.Sprintf("%d of its %d disks missing", missing, len(p.cfg.Members))
	}
	st.MaxVolumes = present // a volume is a whole disk
	return st, nil
}

// CreateVolume gives the volume the smallest free disk that holds the
// requested capacity; the volume's capacity is that disk's size.
func (p *Pool) CreateVolume(ctx context.Context, v pool.Volume) (pool.Volume, error) {
	if err := pool.ValidateID("volume ID", v.ID); err != nil {
		return pool.Volume{}, err
	}
	if v.Source != nil {
		return pool.Volume{}, fmt.Errorf("%w: a disk pool's volumes are whole disks: no snapshots or clones", pool.ErrUnsupported)
	}
	if v.Mode == pool.ModeFilesystem && v.FsType == "" {
		v.FsType = p.cfg.FsType
	}
	if v.Mode == pool.ModeFilesystem {
		if err := pool.CheckFsType(v.FsType); err != nil {
			return pool.Volume{}, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if have, err := p.index.Volume(v.ID); err == nil {
		if have.State == pool.StateDeleting {
			return pool.Volume{}, fmt.Errorf("volume %s: %w", v.ID, pool.ErrDeleting)
		}
		if have.Mode != v.Mode || have.FsType != v.FsType || have.CapacityBytes < v.CapacityBytes || have.Name != v.Name {
			return pool.Volume{}, fmt.Errorf("volume %s: %w", v.ID, pool.ErrExists)
		}
		return have, nil
	}
	free := p.free()
	i := slices.IndexFunc(free, func(d disk.Disk) bool { return d.SizeBytes >= v.CapacityBytes })
	if i < 0 {
		largest := int64(0)
		if len(free) > 0 {
			largest = free[len(free)-1].SizeBytes
		}
		return pool.Volume{}, fmt.Errorf("%w: pool %s: no free disk holds %d bytes (%d free disks, the largest %d bytes)",
			pool.ErrNoSpace, p.cfg.Name, v.CapacityBytes, len(free), largest)
	}
	// The watcher's view may be a scan old: each candidate is read again
	// now, and one that someone formatted or opened since is passed over.
	var d disk.Disk
	var passed []string
	for _, c := range free[i:] {
		err := p.verifyEmpty(ctx, c)
		if err == nil {
			d = c
			break
		}
		klog.InfoS("Free disk is no longer free; not handed out", "pool", p.cfg.Name, "disk", c.ID, "device", c.Device, "err", err)
		passed = append(passed, err.Error())
	}
	if d.ID == "" {
		return pool.Volume{}, fmt.Errorf("%w: pool %s: no free disk holds %d bytes: %s",
			pool.ErrNoSpace, p.cfg.Name, v.CapacityBytes, strings.Join(passed, "; "))
	}
	// Thin or thick as asked: a whole disk is both.
	v.Schema, v.Pool, v.Disk, v.CapacityBytes = pool.VolumeRecords.Version(), p.cfg.Name, d.ID, d.SizeBytes
	v.State, v.CreatedAt = pool.StateReady, time.Now().UTC()
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	klog.InfoS("Gave a whole disk to a volume", "pool", p.cfg.Name, "volumeID", v.ID, "disk", d.ID, "device", d.Device, "sizeBytes", d.SizeBytes)
	return v, nil
}

// verifyEmpty reads the disk now: nothing mounts or holds it, the kernel
// grants an exclusive open, and no signature of any kind is on it.
func (p *Pool) verifyEmpty(ctx context.Context, d disk.Disk) error {
	if err := p.inUse(d); err != nil {
		return err
	}
	if p.cfg.SysfsRoot != "" && device.ReadAttr(filepath.Join(p.cfg.SysfsRoot, "block", d.Name, "ro")) == "1" {
		return fmt.Errorf("%w: disk %s (%s) is read-only", pool.ErrInUse, d.ID, d.Device)
	}
	if err := p.cfg.Probe.Exclusive(d.Device); err != nil {
		return fmt.Errorf("%w: disk %s: %w", pool.ErrInUse, d.ID, err)
	}
	sig, err := p.cfg.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("disk %s: %w", d.ID, err)
	}
	if !sig.Empty() {
		return fmt.Errorf("%w: disk %s (%s) holds %s now", pool.ErrInUse, d.ID, d.Device, sig)
	}
	return nil
}

// otherVolumeOwns names the volume of this pool, other than id, whose
// recorded filesystem has this UUID and whose own disk does not carry it
// now ("" when none): the disk at hand is then that volume's disk,
// whatever identity it shows (two disks with one serial, an image
// renamed). A copy of another volume's filesystem, its own disk carrying
// it still (a tenant's dd into its block volume), is the copier's data.
func (p *Pool) otherVolumeOwns(ctx context.Context, id, uuid string) string {
	if uuid == "" {
		return ""
	}
	for _, v := range p.index.Volumes() {
		if v.ID == id || v.DiskFsUUID != uuid {
			continue
		}
		if od, ok := p.cfg.Disks.Find(v.Disk); ok {
			if sig, err := p.cfg.Probe.Probe(ctx, od.Device); err == nil && sig.UUID == uuid {
				continue
			}
		}
		return v.ID
	}
	return ""
}

// inUse reads, now, whether anything has the disk (or a partition of it)
// mounted or held.
// A tenant of a raw block volume may have written a partition table, and
// the kernel made partitions of it: those count too.
func (p *Pool) inUse(d disk.Disk) error {
	mounts, err := mount.ReadMounts(p.cfg.Mountinfo)
	if err != nil {
		return fmt.Errorf("read mounts: %w", err)
	}
	devs := map[string]string{d.MajorMinor: d.Name} // major:minor -> name
	holders := []string{""}
	if p.cfg.SysfsRoot != "" {
		dir := filepath.Join(p.cfg.SysfsRoot, "block", d.Name)
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if mm, err := os.ReadFile(filepath.Join(dir, e.Name(), "dev")); err == nil && strings.HasPrefix(e.Name(), d.Name) {
				devs[strings.TrimSpace(string(mm))] = e.Name()
				holders = append(holders, e.Name())
			}
		}
		for _, part := range holders {
			if hs, _ := os.ReadDir(filepath.Join(dir, part, "holders")); len(hs) > 0 {
				return fmt.Errorf("%w: disk %s (%s) is held by %s", pool.ErrInUse, d.ID, d.Device, hs[0].Name())
			}
		}
	}
	// A btrfs mount shows an anonymous device number, and its source is
	// the name the device had when it was mounted (another device's
	// since, after a rename): the kernel's exclusive hold tells for it
	// (verifyEmpty, DeleteVolume).
	for _, m := range mounts {
		if name := devs[m.MajorMinor()]; name != "" {
			return fmt.Errorf("%w: disk %s (%s) is mounted at %s (%s)", pool.ErrInUse, d.ID, d.Device, m.Mountpoint, name)
		}
	}
	if p.cfg.Loops != nil {
		if devs, _ := p.cfg.Loops.FindAll(d.Device); len(devs) > 0 {
			return fmt.Errorf("%w: disk %s (%s) has loop device %s over it", pool.ErrInUse, d.ID, d.Device, devs[0].Path)
		}
	}
	return nil
}

// DeleteVolume erases the disk's signatures (and discards its blocks where
// the disk supports it) before the disk is free again, so nothing of the
// volume reaches the next one. A disk that is gone keeps its volume's
// record, deleting, until it is back.
func (p *Pool) DeleteVolume(ctx context.Context, id string) error {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return err
	}
	// The disks are read again after the wipe, once mu is released: a
	// rescan that finds a change publishes the node's status, which
	// reads this pool's Stats (mu): under mu, the two waited on each
	// other for ever.
	rescan := false
	defer func() {
		if rescan && p.cfg.Rescan != nil {
			if err := p.cfg.Rescan(ctx); err != nil {
				klog.ErrorS(err, "Read the disks again after a wipe", "pool", p.cfg.Name)
			}
		}
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if errors.Is(err, pool.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	d, ok := p.cfg.Disks.Find(v.Disk)
	if !ok {
		if err := p.index.MarkDeleting(id); err != nil {
			return err
		}
		return fmt.Errorf("%w: volume %s: its disk %s is not present; it is wiped and freed when it is back", pool.ErrNotReady, id, v.Disk)
	}
	if err := p.inUse(d); err != nil {
		return fmt.Errorf("delete volume %s: %w", id, err)
	}
	if err := p.cfg.Probe.Exclusive(d.Device); err != nil {
		return fmt.Errorf("delete volume %s: %w: disk %s: %w", id, pool.ErrInUse, d.ID, err)
	}
	if v.State != pool.StateDeleting {
		// What is on the disk now must be what the volume put there: a
		// disk someone formatted after it was handed out, or before its
		// consumer ever had it, is not plinth's to wipe.
		sig, err := p.cfg.Probe.Probe(ctx, d.Device)
		if err != nil {
			return fmt.Errorf("delete volume %s: %w", id, err)
		}
		if other := p.otherVolumeOwns(ctx, id, sig.UUID); other != "" {
			return fmt.Errorf("delete volume %s: %w: disk %s (%s) carries the filesystem of volume %s (UUID %s); plinth does not wipe another volume's disk",
				id, pool.ErrInUse, d.ID, d.Device, other, sig.UUID)
		}
		if v.Parameters[fillingKey] != "" && !p.fillBegan(id) {
			// Handed over to be filled, but no transfer wrote to it: what
			// is there now is nobody's the volume knows.
			v.Parameters = without(v.Parameters, fillingKey)
		}
		if err := owned(v, sig); err != nil {
			return fmt.Errorf("delete volume %s: %w: disk %s (%s) %w; plinth does not wipe what it did not put there: "+
				"erase it yourself (wipefs --all %s) or take the disk out of the pool, and the delete goes on", id, pool.ErrInUse, d.ID, d.Device, err, d.Device)
		}
	}
	if err := p.index.MarkDeleting(id); err != nil {
		return err
	}
	// wipefs opens the disk exclusively: it fails, and erases nothing,
	// if something mounted or opened the disk since the checks above.
	if _, err := p.cfg.Run.Run(ctx, "wipefs", "--all", "--quiet", d.Device); err != nil {
		return fmt.Errorf("delete volume %s: wipe disk %s (%s): %w", id, d.ID, d.Device, err)
	}
	// Discard, where the disk supports it, so that a raw block volume's
	// data does not reach the next volume on this disk. Where it does
	// not, only the signatures are gone (docs/limitations.md).
	if err := discard(d.Device); err != nil {
		if errors.Is(err, disk.ErrHeld) {
			return fmt.Errorf("delete volume %s: %w: %w", id, pool.ErrInUse, err)
		}
		klog.V(2).InfoS("Disk does not discard; its signatures were erased", "disk", d.ID, "device", d.Device, "err", err)
	}
	if err := durable.Remove(p.progressOf(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete volume %s: remove its fill's progress record: %w", id, err)
	}
	if err := p.index.DropVolume(id); err != nil {
		return err
	}
	rescan = true
	klog.InfoS("Wiped and freed disk", "pool", p.cfg.Name, "volumeID", id, "disk", d.ID, "device", d.Device)
	return nil
}

// owned says whether sig is what the volume may have put on its disk.
func owned(v pool.Volume, sig disk.Signature) error {
	switch {
	case sig.Empty():
		return nil
	case v.Parameters[fillingKey] != "":
		return nil // what another node's transfer wrote there
	case !v.DiskHanded:
		return fmt.Errorf("holds %s, and was never attached for the volume", sig)
	case v.Mode == pool.ModeBlock:
		return nil // its consumer wrote what it liked
	case v.DiskFsUUID != "" && sig.Only(v.DiskFsUUID):
		return nil
	case v.DiskFsUUID != "":
		return fmt.Errorf("holds %s, not the volume's filesystem (UUID %s)", sig, v.DiskFsUUID)
	}
	return fmt.Errorf("holds %s, and plinth recorded no filesystem of its own there", sig)
}

// discardChunk is how much one exclusive descriptor discards.
const discardChunk = 1 << 30

// discard discards every block of dev, a chunk at a time, each through a
// descriptor that holds the disk exclusively and exists only while
// syscall.ForkLock is held for reading (a child forked meanwhile would
// keep the disk claimed until it execs; see fsimage's writeExcl). Between
// two chunks nothing is held: something that opens or mounts the disk
// meanwhile stops the discard (disk.ErrHeld), and nothing of it is
// discarded.
func discard(dev string) error {
	for off, size := uint64(0), uint64(1); off < size; off += discardChunk {
		var err error
		if size, err = discardAt(dev, off); err != nil {
			return err
		}
	}
	return nil
}

// discardAt discards one chunk from off and returns the disk's size.
func discardAt(dev string, off uint64) (uint64, error) {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Open(dev, unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.EBUSY) {
		return 0, fmt.Errorf("discard %s: %w", dev, disk.ErrHeld)
	}
	if err != nil {
		return 0, fmt.Errorf("discard %s: %w", dev, err)
	}
	defer unix.Close(fd)
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("size of %s: %w", dev, errno)
	}
	if off >= size {
		return size, nil
	}
	r := [2]uint64{off, min(discardChunk, size-off)}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKDISCARD, uintptr(unsafe.Pointer(&r[0]))); errno != 0 {
		return 0, fmt.Errorf("discard %s at %d: %w", dev, off, errno)
	}
	return size, nil
}

// ExpandVolume: a whole disk does not grow; a size it already has is
// answered with its size.
func (p *Pool) ExpandVolume(ctx context.Context, id string, capacityBytes int64) (pool.Volume, error) {
	v, err := p.GetVolume(ctx, id)
	if err != nil {
		return pool.Volume{}, err
	}
	if capacityBytes > v.CapacityBytes {
		return pool.Volume{}, fmt.Errorf("%w: volume %s is a whole disk of %d bytes; it cannot grow to %d", pool.ErrOutOfRange, id, v.CapacityBytes, capacityBytes)
	}
	return v, nil
}

func (p *Pool) CreateSnapshot(ctx context.Context, s pool.Snapshot) (pool.Snapshot, error) {
	return pool.Snapshot{}, fmt.Errorf("%w: a disk pool's volumes are whole disks: no snapshots", pool.ErrUnsupported)
}
func (p *Pool) DeleteSnapshot(ctx context.Context, id string) error { return nil }
func (p *Pool) GetSnapshot(ctx context.Context, id string) (pool.Snapshot, error) {
	return pool.Snapshot{}, pool.ErrNotFound
}
func (p *Pool) ListSnapshots(ctx context.Context) ([]pool.Snapshot, error) { return nil, nil }

// disk returns the present disk of a ready volume.
func (p *Pool) disk(id string) (disk.Disk, error) {
	v, err := p.GetVolume(context.Background(), id)
	if err != nil {
		return disk.Disk{}, err
	}
	if v.State != pool.StateReady {
		return disk.Disk{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotReady)
	}
	d, ok := p.cfg.Disks.Find(v.Disk)
	if !ok {
		return disk.Disk{}, fmt.Errorf("%w: volume %s: its disk %s is not present", pool.ErrNotReady, id, v.Disk)
	}
	return d, nil
}

// CheckVolume: a volume whose disk is gone is out of reach.
func (p *Pool) CheckVolume(ctx context.Context, id string) error {
	_, err := p.disk(id)
	return err
}

var _ pool.VolumeChecker = (*Pool)(nil)

// Attach: the disk is the volume's device. The first attach reads the
// disk once more and hands it over only if it is still empty and unheld;
// a later one of a filesystem volume only if it holds nothing or the
// filesystem the node made there.
func (p *Pool) Attach(ctx context.Context, id string) (pool.Attachment, error) {
	d, err := p.disk(id)
	if err != nil {
		return pool.Attachment{}, err
	}
	if err := p.checkHandover(ctx, id, d); err != nil {
		return pool.Attachment{}, err
	}
	a, _, err := p.Attached(ctx, id)
	if err != nil {
		return pool.Attachment{}, err
	}
	a.Device = d.Device
	return a, nil
}

// checkHandover is Attach's check of what is on the disk.
func (p *Pool) checkHandover(ctx context.Context, id string, d disk.Disk) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if err != nil {
		return err
	}
	if v.Parameters[fillingKey] != "" {
		return fmt.Errorf("%w: volume %s: its disk is being filled from another node", pool.ErrNotReady, id)
	}
	if v.Parameters[filledKey] != "" {
		// Handed to its consumer now: never filled from another node again.
		v.Parameters = without(v.Parameters, filledKey)
		if err := p.index.PutVolume(v); err != nil {
			return err
		}
	}
	if !v.DiskHanded {
		if err := p.verifyEmpty(ctx, d); err != nil {
			return fmt.Errorf("volume %s: its disk is not as it was when plinth chose it: %w", id, err)
		}
		// No signature is not no data: what a previous owner left behind
		// erased signatures (wipefs) goes before the first consumer
		// reads it, where the disk discards.
		if err := discard(d.Device); errors.Is(err, disk.ErrHeld) {
			return fmt.Errorf("volume %s: %w: %w", id, pool.ErrInUse, err)
		} else if err != nil {
			klog.V(2).InfoS("Disk does not discard; handed over as it is", "disk", d.ID, "device", d.Device, "err", err)
		}
		v.DiskHanded = true
		return p.index.PutVolume(v)
	}
	sig, err := p.cfg.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if other := p.otherVolumeOwns(ctx, id, sig.UUID); other != "" {
		return fmt.Errorf("%w: volume %s: disk %s (%s) carries the filesystem of volume %s (UUID %s): it is that volume's disk; plinth does not hand it to this one",
			pool.ErrInUse, id, d.ID, d.Device, other, sig.UUID)
	}
	if v.Mode != pool.ModeFilesystem {
		return nil
	}
	switch {
	case sig.Empty() && v.DiskFsUUID != "":
		return fmt.Errorf("%w: volume %s: disk %s (%s) is empty: the volume's filesystem (UUID %s) is gone from it; plinth does not make a new, empty one in its place",
			pool.ErrInUse, id, d.ID, d.Device, v.DiskFsUUID)
	case sig.Empty(), v.DiskFsUUID != "" && sig.Only(v.DiskFsUUID):
		return nil
	case v.DiskFsUUID == "" && sig.Type == v.FsType && sig.Only(sig.UUID) && p.uuidRecorded(id, sig.UUID) == "":
		// The node formatted the disk and stopped before it said so
		// (RecordFilesystem): the volume's own filesystem type, alone on
		// a disk that was empty when it was handed over.
		v.DiskFsUUID = sig.UUID
		return p.index.PutVolume(v)
	}
	what := "no filesystem plinth made"
	if v.DiskFsUUID != "" {
		what = "not the volume's filesystem (UUID " + v.DiskFsUUID + ")"
	}
	return fmt.Errorf("%w: volume %s: disk %s (%s) holds %s, %s; plinth does not mount it", pool.ErrInUse, id, d.ID, d.Device, sig, what)
}

// CheckDevice refuses while the volume's disk carries another volume's
// recorded filesystem.
func (p *Pool) CheckDevice(ctx context.Context, id string) error {
	d, err := p.disk(id)
	if err != nil {
		return err
	}
	sig, err := p.cfg.Probe.Probe(ctx, d.Device)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if other := p.otherVolumeOwns(ctx, id, sig.UUID); other != "" {
		return fmt.Errorf("%w: volume %s: disk %s (%s) carries the filesystem of volume %s (UUID %s): it is that volume's disk, not this one's",
			pool.ErrInUse, id, d.ID, d.Device, other, sig.UUID)
	}
	return nil
}

var _ pool.DeviceChecker = (*Pool)(nil)

// RecordFilesystem records the filesystem the node made on the volume's
// disk.
func (p *Pool) RecordFilesystem(ctx context.Context, id, device string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	v, err := p.index.Volume(id)
	if err != nil {
		return err
	}
	sig, err := p.cfg.Probe.Probe(ctx, device)
	if err != nil {
		return fmt.Errorf("volume %s: %w", id, err)
	}
	if v.DiskFsUUID == sig.UUID || !sig.Only(sig.UUID) {
		return nil
	}
	if v.DiskFsUUID != "" {
		return fmt.Errorf("%w: volume %s: disk holds %s, not the volume's filesystem (UUID %s)", pool.ErrInUse, id, sig, v.DiskFsUUID)
	}
	v.DiskFsUUID = sig.UUID
	return p.index.PutVolume(v)
}

var _ pool.FilesystemRecorder = (*Pool)(nil)

// Detach has nothing to release but the read-only devices.
func (p *Pool) Detach(ctx context.Context, id string) error {
	d, err := p.disk(id)
	if errors.Is(err, pool.ErrNotFound) || errors.Is(err, pool.ErrNotReady) {
		return nil
	}
	if err != nil {
		return err
	}
	if p.cfg.Loops == nil {
		return nil
	}
	devs, err := p.cfg.Loops.FindAll(d.Device)
	if err != nil {
		return err
	}
	for _, ro := range devs {
		if err := p.cfg.Loops.DetachDevice(d.Device, ro.Path); err != nil {
			return err
		}
	}
	return nil
}

func (p *Pool) Attached(ctx context.Context, id string) (pool.Attachment, bool, error) {
	d, err := p.disk(id)
	if errors.Is(err, pool.ErrNotReady) {
		return pool.Attachment{}, false, nil
	}
	if err != nil {
		return pool.Attachment{}, false, err
	}
	a := pool.Attachment{Device: d.Device}
	if p.cfg.Loops != nil {
		devs, err := p.cfg.Loops.FindAll(d.Device)
		if err != nil {
			return pool.Attachment{}, false, err
		}
		for _, ro := range devs {
			if ro.ReadOnly {
				a.ReadOnly = append(a.ReadOnly, ro.Path)
			}
		}
	}
	return a, true, nil
}

// AttachReadOnly makes a loop device over the disk that refuses writes.
func (p *Pool) AttachReadOnly(ctx context.Context, id string) (string, error) {
	d, err := p.disk(id)
	if err != nil {
		return "", err
	}
	if p.cfg.Loops == nil {
		return "", fmt.Errorf("attach %s: %w: no loop device support configured", id, pool.ErrUnsupported)
	}
	dev, err := p.cfg.Loops.Attach(d.Device, true)
	if err != nil {
		return "", fmt.Errorf("attach read-only device over disk %s for %s: %w", d.ID, id, err)
	}
	return dev, nil
}

// ReleaseDevice releases dev if it is a read-only device over the
// volume's disk.
func (p *Pool) ReleaseDevice(ctx context.Context, id, dev string) error {
	d, err := p.disk(id)
	if err != nil || p.cfg.Loops == nil || dev == "" {
		return err
	}
	if err := p.cfg.Loops.DetachDevice(d.Device, dev); err != nil {
		if errors.Is(err, mount.ErrLoopBusy) {
			return fmt.Errorf("volume %s: %w: %w", id, pool.ErrInUse, err)
		}
		return err
	}
	return nil
}

// Usage: the mounted filesystem tells.
func (p *Pool) Usage(ctx context.Context, id string) (pool.VolumeUsage, bool, error) {
	return pool.VolumeUsage{}, false, nil
}
