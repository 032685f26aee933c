package disk

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// Host is where discovery reads: sysfs, the device nodes and procfs (for
// mounts and swap), each a root that a fixture tree can stand in for.
type Host struct {
	Sysfs, Dev, Proc string
	// OwnDirs hold plinth's own image files: loop devices backed by a file
	// below one of them are volumes, not disks, and are left out.
	OwnDirs []string
}

// Transport is how a disk is attached.
type Transport string

const (
	TransportNVMe    Transport = "nvme"
	TransportSATA    Transport = "sata"
	TransportSAS     Transport = "sas"
	TransportSCSI    Transport = "scsi"
	TransportVirtio  Transport = "virtio"
	TransportUSB     Transport = "usb"
	TransportLoop    Transport = "loop"
	TransportUnknown Transport = "unknown"
)

// State is what a disk is to plinth.
type State string

const (
	// StateFree: no partition, signature, mount, holder or swap: plinth may
	// format it when a rule selects it.
	StateFree State = "free"
	// StatePlinth: recorded as one of plinth's pools' disks.
	StatePlinth State = "plinth"
	// StateForeign: something else is on it or uses it (Reasons say what).
	StateForeign State = "foreign"
	// StateMissing: one of plinth's pools' disks that is not there.
	StateMissing State = "missing"
)

// Disk is one whole block device and what was found on it.
type Disk struct {
	// Name is the kernel's name now (sdb, nvme0n1, loop3): it may change
	// at the next boot; ID does not.
	Name string `json:"name"`
	// ID is the disk's identity across reboots: "wwn:<WWN>", else
	// "serial:<serial>", else for a loop device "file:<backing file>",
	// else "path:<sysfs device path>" (the slot it sits in).
	ID                 string    `json:"id"`
	Device             string    `json:"device"` // the device node, under Host.Dev
	MajorMinor         string    `json:"majorMinor"`
	SizeBytes          int64     `json:"sizeBytes"`
	LogicalBlockBytes  int       `json:"logicalBlockBytes,omitempty"`
	PhysicalBlockBytes int       `json:"physicalBlockBytes,omitempty"`
	Rotational         bool      `json:"rotational"`
	Removable          bool      `json:"removable"`
	ReadOnly           bool      `json:"readOnly,omitempty"`
	Model              string    `json:"model,omitempty"`
	Vendor             string    `json:"vendor,omitempty"`
	Serial             string    `json:"serial,omitempty"`
	WWN                string    `json:"wwn,omitempty"`
	Transport          Transport `json:"transport"`
	// PCIAddress and PCIPath are the disk's PCI function (an NVMe
	// controller or the HBA it hangs off) and the bridges above it;
	// NUMANode is -1 where the platform does not say.
	PCIAddress  string   `json:"pciAddress,omitempty"`
	PCIPath     []string `json:"pciPath,omitempty"`
	NUMANode    int      `json:"numaNode"`
	BackingFile string   `json:"backingFile,omitempty"` // loop devices
	Partitions  []string `json:"partitions,omitempty"`
	Holders     []string `json:"holders,omitempty"`
	// MountPoints of the disk or any partition of it (from mountinfo).
	MountPoints []string `json:"mountPoints,omitempty"`
	Swap        bool     `json:"swap,omitempty"`
	// Held says why the kernel refuses an exclusive open of the disk
	// (ErrHeld): in use by something mountinfo, holders and swap may not
	// show.
	Held string `json:"held,omitempty"`
	// Signature is what blkid found on the whole device.
	Signature Signature `json:"signature"`
	State     State     `json:"state"`
	// Pool is the plinth pool the disk belongs to (StatePlinth).
	Pool string `json:"pool,omitempty"`
	// Reasons say why a disk is foreign (or, after Plan, why no rule
	// claimed it).
	Reasons []string `json:"reasons,omitempty"`
	// btrfs lists the mounted btrfs filesystems (fsid) the disk or a
	// partition of it belongs to.
	btrfs []string
}

// Signature is what a probe of a device found (Empty: nothing).
type Signature struct {
	Type   string `json:"type,omitempty"` // filesystem or other signature (xfs, LVM2_member, swap, ...)
	UUID   string `json:"uuid,omitempty"`
	Label  string `json:"label,omitempty"`
	PTType string `json:"ptType,omitempty"` // partition table (gpt, dos)
	// Found lists every signature the probe saw, with its offset
	// ("gpt at offset 0xffffe00"): a backup partition table, a second
	// filesystem's superblock, one with a bad checksum.
	Found []string `json:"found,omitempty"`
	// Ambivalent: more than one filesystem-like signature.
	Ambivalent bool `json:"ambivalent,omitempty"`
}

// Empty reports that nothing was found.
func (s Signature) Empty() bool { return s.Type == "" && s.PTType == "" && len(s.Found) == 0 }

// Only reports that the device holds one filesystem-like signature with
// this UUID and nothing else (no partition table, no second signature).
func (s Signature) Only(uuid string) bool {
	return uuid != "" && s.UUID == uuid && s.PTType == "" && !s.Ambivalent && len(s.Found) <= 1
}

func (s Signature) String() string {
	if len(s.Found) > 0 {
		t := "signatures " + strings.Join(s.Found, ", ")
		if len(s.Found) == 1 {
			t = "signature " + s.Found[0]
		}
		if s.UUID != "" {
			t += " (UUID " + s.UUID + ")"
		}
		return t
	}
	var parts []string
	if s.PTType != "" {
		parts = append(parts, "partition table "+s.PTType)
	}
	if s.Type != "" {
		t := "signature " + s.Type
		if s.UUID != "" {
			t += " (UUID " + s.UUID + ")"
		}
		parts = append(parts, t)
	}
	return strings.Join(parts, ", ")
}

// Prober reads a device's signatures and asks the kernel whether anything
// holds it: Wipefs on a host, a table in fixture tests, where no real
// device stands behind the tree.
type Prober interface {
	Probe(ctx context.Context, device string) (Signature, error)
	// Exclusive is nil when the kernel grants an exclusive open of
	// device now, ErrHeld when it refuses.
	Exclusive(device string) error
}

// skip are kernel devices that are never disks: RAM disks, compressed
// swap, optical and floppy drives, and device-mapper, md and other
// stacked devices (they are holders of disks, seen through Holders).
var skip = regexp.MustCompile(`^(ram|zram|sr|fd|dm-|md|nbd|rbd|drbd|bcache)`)

// Scan reads every whole block device under h.Sysfs/block, probes it and
// judges its state from its partitions, holders, mounts, swap and
// signatures. Loop devices with no backing file are left out.
func Scan(ctx context.Context, h Host, probe Prober) ([]Disk, error) {
	entries, err := os.ReadDir(filepath.Join(h.Sysfs, "block"))
	if err != nil {
		return nil, fmt.Errorf("list block devices: %w", err)
	}
	mounts, err := h.readMounts()
	if err != nil {
		return nil, err
	}
	btrfsOf := h.mountedBtrfs()
	loopsOver := h.loopsOverDevices(entries)
	swaps := readSwaps(filepath.Join(h.Proc, "swaps"))
	var out []Disk
	for _, e := range entries {
		name := e.Name()
		if skip.MatchString(name) {
			continue
		}
		d, ok, err := h.read(name)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		for _, mm := range append([]string{d.MajorMinor}, h.partitionDevs(name, d.Partitions)...) {
			d.MountPoints = appendNew(d.MountPoints, mounts["dev:"+mm]...)
			// A loop device over the disk (losetup /dev/sdb, with an
			// offset or not) uses it as much as a mount does, and shows
			// in no holders directory.
			for _, l := range loopsOver[mm] {
				d.Holders = appendNew(d.Holders, l+" (a loop device over it)")
			}
		}
		for _, n := range append([]string{name}, d.Partitions...) {
			d.Swap = d.Swap || swaps[filepath.Join(h.Dev, n)] || swaps["/dev/"+n]
			// A btrfs mount shows an anonymous device number in
			// mountinfo; sysfs lists every device of a mounted btrfs.
			if fsid := btrfsOf[n]; fsid != "" {
				d.btrfs = append(d.btrfs, fsid)
			}
		}
		var probeErr error
		inUse := len(d.MountPoints) > 0 || len(d.btrfs) > 0 || len(d.Holders) > 0 || d.Swap
		if m, ok := probe.(inUseProber); ok {
			d.Signature, probeErr = m.ProbeInUse(ctx, d.Device, inUse)
		} else if probe != nil {
			d.Signature, probeErr = probe.Probe(ctx, d.Device)
		}
		if probe != nil {
			// The kernel's exclusive hold is asked only where it can
			// change the outcome (a disk that looks unused, free or only
			// wipeable): the brief exclusive open itself makes another
			// program's mount or mkfs of that disk fail in that instant,
			// so plinth does not open every disk of the node at every scan.
			if probeErr == nil && !inUse {
				if err := probe.Exclusive(d.Device); errors.Is(err, ErrHeld) {
					d.Held = "the kernel refuses an exclusive open (a mounted filesystem, swap, RAID or LVM, or a program holds it)"
				} else if err != nil {
					probeErr = err
				}
			}
		}
		d.judge()
		if probeErr != nil {
			// What cannot be read is never free (a device going away as
			// it is read, a medium error): plinth leaves it alone.
			d.State = StateForeign
			d.Reasons = append(d.Reasons, "cannot be probed: "+probeErr.Error())
		}
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// judge sets State and Reasons from what was read.
func (d *Disk) judge() {
	var why []string
	if len(d.Partitions) > 0 {
		why = append(why, "has partitions "+strings.Join(d.Partitions, ", "))
	}
	if !d.Signature.Empty() {
		why = append(why, "has "+d.Signature.String())
	}
	if len(d.MountPoints) > 0 {
		why = append(why, "mounted at "+strings.Join(d.MountPoints, ", "))
	}
	for _, fsid := range d.btrfs {
		why = append(why, "a device of mounted btrfs "+fsid+" (findmnt --source UUID="+fsid+")")
	}
	if d.Held != "" {
		why = append(why, "in use: "+d.Held)
	}
	if len(d.Holders) > 0 {
		why = append(why, "held by "+strings.Join(d.Holders, ", "))
	}
	if d.Swap {
		why = append(why, "used as swap")
	}
	if d.ReadOnly {
		why = append(why, "read-only")
	}
	if d.SizeBytes == 0 {
		why = append(why, "has no medium (size 0)")
	}
	d.Reasons = why
	d.State = StateFree
	if len(why) > 0 {
		d.State = StateForeign
	}
}

func readInt(path string) int64 {
	n, _ := strconv.ParseInt(device.ReadAttr(path), 10, 64)
	return n
}

// read reads one whole block device's attributes (ok=false: not a disk).
func (h Host) read(name string) (Disk, bool, error) {
	dir := filepath.Join(h.Sysfs, "block", name)
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return Disk{}, false, nil // a partition listed at the top: not a whole disk
	}
	// An unbound loop device (no loop/backing_file: the kernel adds the
	// loop directory only while one is bound) is nothing: found with one
	// read, before the rest. A node that ran many volumes keeps hundreds
	// of loop devices, and a rescan reads every one.
	if strings.HasPrefix(name, "loop") && device.ReadAttr(filepath.Join(dir, "loop", "backing_file")) == "" {
		return Disk{}, false, nil
	}
	d := Disk{Name: name, Device: filepath.Join(h.Dev, name), NUMANode: -1,
		MajorMinor:         device.ReadAttr(filepath.Join(dir, "dev")),
		SizeBytes:          readInt(filepath.Join(dir, "size")) * 512,
		LogicalBlockBytes:  int(readInt(filepath.Join(dir, "queue", "logical_block_size"))),
		PhysicalBlockBytes: int(readInt(filepath.Join(dir, "queue", "physical_block_size"))),
		Rotational:         device.ReadAttr(filepath.Join(dir, "queue", "rotational")) == "1",
		Removable:          device.ReadAttr(filepath.Join(dir, "removable")) == "1",
		ReadOnly:           device.ReadAttr(filepath.Join(dir, "ro")) == "1",
	}
	if d.MajorMinor == "" {
		return Disk{}, false, nil
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return Disk{}, false, fmt.Errorf("resolve %s: %w", dir, err)
	}
	rel, err := filepath.Rel(h.Sysfs, real)
	if err != nil || strings.HasPrefix(rel, "..") {
		return Disk{}, false, fmt.Errorf("%s resolves outside %s", dir, h.Sysfs)
	}
	devPath := "/" + filepath.ToSlash(rel)
	d.Transport = transport(devPath)
	if d.Transport == TransportLoop {
		d.BackingFile = device.ReadAttr(filepath.Join(dir, "loop", "backing_file"))
		if d.BackingFile == "" {
			return Disk{}, false, nil // an unused loop device
		}
		if strings.HasPrefix(d.BackingFile, "/dev/") {
			return Disk{}, false, nil // a device over another disk (a read-only publish)
		}
		for _, own := range h.OwnDirs {
			if strings.HasPrefix(d.BackingFile, strings.TrimSuffix(own, "/")+"/") {
				return Disk{}, false, nil // one of plinth's volumes
			}
		}
	}
	// Model, vendor and serial: the device's (SCSI/ATA, NVMe controller),
	// or the block device's own (virtio's serial).
	d.Model = firstOf(filepath.Join(dir, "device", "model"), filepath.Join(dir, "model"))
	d.Vendor = firstOf(filepath.Join(dir, "device", "vendor"))
	d.Serial = firstOf(filepath.Join(dir, "device", "serial"), filepath.Join(dir, "serial"))
	d.WWN = normaliseWWN(firstOf(filepath.Join(dir, "wwid"), filepath.Join(dir, "device", "wwid")))
	// The PCI function nearest the disk (an NVMe controller, the HBA or
	// AHCI controller it hangs off), placed as pkg/device places
	// accelerators: its NUMA node and the bridges above it.
	els := strings.Split(devPath, "/")
	for i := len(els) - 1; i >= 0; i-- {
		if !device.IsPCIAddress(els[i]) {
			continue
		}
		d.PCIAddress = els[i]
		if d.NUMANode, d.PCIPath, err = device.PCIPlacement(filepath.Join(h.Sysfs, filepath.Join(els[:i+1]...))); err != nil {
			return Disk{}, false, err
		}
		break
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return Disk{}, false, fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), name) {
			if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
				d.Partitions = append(d.Partitions, e.Name())
			}
		}
	}
	for _, n := range append([]string{""}, d.Partitions...) {
		hs, _ := os.ReadDir(filepath.Join(dir, n, "holders"))
		for _, e := range hs {
			d.Holders = append(d.Holders, e.Name())
		}
	}
	switch {
	case d.WWN != "":
		d.ID = "wwn:" + d.WWN
	case d.Serial != "":
		d.ID = "serial:" + d.Serial
	case d.BackingFile != "":
		d.ID = "file:" + d.BackingFile
	default:
		d.ID = "path:" + devPath
	}
	return d, true, nil
}

func (h Host) partitionDevs(disk string, parts []string) []string {
	var out []string
	for _, p := range parts {
		if mm := device.ReadAttr(filepath.Join(h.Sysfs, "block", disk, p, "dev")); mm != "" {
			out = append(out, mm)
		}
	}
	return out
}

func firstOf(paths ...string) string {
	for _, p := range paths {
		if v := device.ReadAttr(p); v != "" {
			return v
		}
	}
	return ""
}

// normaliseWWN turns the kernel's wwid forms (naa.5000c500a1b2c3d4,
// eui.0025385b71b0a0a1, t10.ATA ...) into the lower-case identifier after
// the type; a t10 vendor string (not unique) is dropped.
func normaliseWWN(w string) string {
	w = strings.TrimSpace(w)
	if w == "" || strings.HasPrefix(w, "t10.") {
		return ""
	}
	if _, rest, ok := strings.Cut(w, "."); ok {
		w = rest
	}
	return strings.ToLower(strings.TrimPrefix(w, "0x"))
}

// transport reads the bus from the device's sysfs path.
func transport(devPath string) Transport {
	switch {
	case strings.HasPrefix(devPath, "/devices/virtual/block/loop"):
		return TransportLoop
	case strings.Contains(devPath, "/nvme/") || strings.Contains(devPath, "/nvme-subsystem/"):
		return TransportNVMe
	case strings.Contains(devPath, "/usb"):
		return TransportUSB
	case strings.Contains(devPath, "/virtio"):
		return TransportVirtio
	case strings.Contains(devPath, "/ata"):
		return TransportSATA
	case strings.Contains(devPath, "/end_device-") || strings.Contains(devPath, "/sas_"):
		return TransportSAS
	case strings.Contains(devPath, "/host") && strings.Contains(devPath, "/target"):
		return TransportSCSI
	}
	return TransportUnknown
}

// readMounts maps "dev:<major:minor>" to the mount points of that device.
// A btrfs mount shows an anonymous device number, and its source is the
// name the device had when it was mounted (another device's, after a
// rename): sysfs names a mounted btrfs's devices (mountedBtrfs).
func (h Host) readMounts() (map[string][]string, error) {
	mounts, err := mount.ReadMounts(filepath.Join(h.Proc, "self", "mountinfo"))
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	out := map[string][]string{}
	for _, m := range mounts {
		out["dev:"+m.MajorMinor()] = append(out["dev:"+m.MajorMinor()], m.Mountpoint)
	}
	return out, nil
}

// loopsOverDevices maps a block device's major:minor to the loop devices
// whose backing file is that device.
func (h Host) loopsOverDevices(entries []os.DirEntry) map[string][]string {
	out := map[string][]string{}
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "loop") {
			continue
		}
		bf := device.ReadAttr(filepath.Join(h.Sysfs, "block", e.Name(), "loop", "backing_file"))
		rel, ok := strings.CutPrefix(bf, "/dev/")
		if !ok {
			continue
		}
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join(h.Dev, rel), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			continue
		}
		mm := fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		out[mm] = append(out[mm], e.Name())
	}
	return out
}

// mountedBtrfs maps a device name to the mounted btrfs filesystem it is a
// device of (sysfs lists them under fs/btrfs/<fsid>/devices while the
// filesystem is mounted).
func (h Host) mountedBtrfs() map[string]string {
	out := map[string]string{}
	fss, _ := os.ReadDir(filepath.Join(h.Sysfs, "fs", "btrfs"))
	for _, fs := range fss {
		devs, _ := os.ReadDir(filepath.Join(h.Sysfs, "fs", "btrfs", fs.Name(), "devices"))
		for _, d := range devs {
			out[d.Name()] = fs.Name()
		}
	}
	return out
}

// appendNew appends what to has that has not already.
func appendNew(has []string, what ...string) []string {
	for _, w := range what {
		if !slices.Contains(has, w) {
			has = append(has, w)
		}
	}
	return has
}

// readSwaps returns the swap devices in use (a missing file: none).
func readSwaps(path string) map[string]bool {
	out := map[string]bool{}
	b, err := os.ReadFile(path)
	if err != nil {
		return out
	}
	for i, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); i > 0 && len(f) > 0 {
			out[f[0]] = true
		}
	}
	return out
}

// ErrNotFound: no disk with the identity asked for is present.
var ErrNotFound = errors.New("disk not found")
