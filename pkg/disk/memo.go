package disk

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/device"
)

// probeMemo answers a rescan's probe of a device with the last probe's
// answer while nothing that could change the device's signatures has
// changed, so that an idle node launches no program (a probe is wipefs).
// What is compared, read without launching anything:
//
//   - the kernel's view in sysfs: device number, size, media sequence
//     number (diskseq), read-only flag, partitions, holders (of the disk
//     and of each partition), and a loop device's backing file and
//     offset;
//   - for a disk not in use (no mount, holder, swap or mounted btrfs on
//     it), its first and last MiB, read past the page cache (O_DIRECT):
//     where the signatures libblkid knows are written (a filesystem's or
//     RAID member's superblock, swap, LVM, LUKS, a partition table and its
//     backup at the end). A disk in use is foreign or plinth's whatever it
//     holds, and its filesystem rewrites its superblock as it works: its
//     bytes are not read, and it is probed again once it is no longer in
//     use.
//
// A probe that failed (a disk wipefs cannot open) is answered with the same
// error until something changes. A device whose sysfs entry or ends cannot
// be read is probed every time. Decisions that
// change a disk (claiming, wiping, handing one out) never use the memo:
// they probe again themselves, and ask for the kernel's exclusive hold.
type probeMemo struct {
	Prober
	sysfs string

	mu   sync.Mutex
	last map[string]memoEntry // by device path
}

type memoEntry struct {
	sys, edges string
	inUse      bool
	sig        Signature
	err        error // a probe that failed fails again until something changes
}

func newProbeMemo(p Prober, sysfs string) *probeMemo {
	return &probeMemo{Prober: p, sysfs: sysfs, last: map[string]memoEntry{}}
}

// inUseProber is a Prober told whether the disk is in use (Scan asks it
// so when it can).
type inUseProber interface {
	ProbeInUse(ctx context.Context, device string, inUse bool) (Signature, error)
}

var _ inUseProber = (*probeMemo)(nil)

// Exclusive is never asked in a rescan: the open itself would make
// another program's mount of the disk fail in that instant.
func (m *probeMemo) Exclusive(string) error { return nil }

// ProbeInUse is the last answer for device while what could change its
// signatures holds, else the prober's.
func (m *probeMemo) ProbeInUse(ctx context.Context, device string, inUse bool) (Signature, error) {
	// The fingerprint is taken before the probe: a change while it runs
	// shows as a new fingerprint at the next scan.
	sys, err := m.sysfsPrint(device)
	var edge string
	if err == nil && !inUse {
		edge, err = edges(device)
	}
	if err == nil {
		m.mu.Lock()
		e, ok := m.last[device]
		m.mu.Unlock()
		if ok && e.sys == sys && e.inUse == inUse && e.edges == edge {
			return e.sig, e.err
		}
	}
	sig, perr := m.Prober.Probe(ctx, device)
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case err != nil:
		delete(m.last, device)
	case ctx.Err() != nil:
		// A probe cut short says nothing of the disk.
		delete(m.last, device)
	default:
		m.last[device] = memoEntry{sys: sys, edges: edge, inUse: inUse, sig: sig, err: perr}
	}
	return sig, perr
}

// keep forgets every device but those given (the ones a scan saw).
func (m *probeMemo) keep(devices map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for d := range m.last {
		if !devices[d] {
			delete(m.last, d)
		}
	}
}

// edgeBytes is how much of each end of a device the fingerprint reads.
const edgeBytes = 1 << 20

// sysfsPrint is the kernel's view of dev that would change with its
// signatures.
func (m *probeMemo) sysfsPrint(dev string) (string, error) {
	name := filepath.Base(dev)
	dir := filepath.Join(m.sysfs, "block", name)
	var b strings.Builder
	for _, attr := range []string{"dev", "size", "diskseq", "ro", "loop/backing_file", "loop/offset"} {
		fmt.Fprintf(&b, "%s=%s;", attr, device.ReadAttr(filepath.Join(dir, attr)))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", err
	}
	holders := func(d string) {
		hs, _ := os.ReadDir(filepath.Join(d, "holders"))
		for _, h := range hs {
			fmt.Fprintf(&b, "holder=%s;", h.Name())
		}
	}
	holders(dir)
	var parts []string
	for _, e := range entries {
		if _, err := os.Stat(filepath.Join(dir, e.Name(), "partition")); err == nil {
			parts = append(parts, e.Name())
		}
	}
	sort.Strings(parts)
	for _, p := range parts {
		fmt.Fprintf(&b, "part=%s:%s;", p, device.ReadAttr(filepath.Join(dir, p, "size")))
		holders(filepath.Join(dir, p))
	}
	return b.String(), nil
}

// edges hashes the first and last MiB of device as they are on the
// medium (O_DIRECT: the page cache may hold older blocks than a mounted
// filesystem wrote past it).
func edges(device string) (string, error) {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", device, err)
	}
	defer unix.Close(fd)
	size, err := unix.Seek(fd, 0, 2)
	if err != nil {
		return "", fmt.Errorf("size of %s: %w", device, err)
	}
	const align = 4096 // the largest logical block size O_DIRECT asks to align to
	raw := make([]byte, edgeBytes+align)
	buf := raw[align-int(uintptr(unsafe.Pointer(&raw[0]))%align):][:edgeBytes]
	h := sha256.New()
	offsets := []int64{0}
	if end := (size - edgeBytes) / align * align; end > 0 {
		offsets = append(offsets, end)
	}
	for _, off := range offsets {
		n := min(int64(len(buf)), size-off) / align * align
		if n <= 0 {
			continue
		}
		got, err := unix.Pread(fd, buf[:n], off)
		if err != nil {
			return "", fmt.Errorf("read %s at %d: %w", device, off, err)
		}
		if int64(got) != n {
			return "", fmt.Errorf("read %s at %d: %w", device, off, errors.New("short read"))
		}
		h.Write(buf[:got])
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
