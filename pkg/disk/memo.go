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
//     it), its first and last MiB to the last sector, and 64 KiB at 1, 2
//     and 4 MiB, read past the page cache (O_DIRECT): where the
//     signatures libblkid knows are written (a filesystem's or RAID
//     member's superblock, swap, LVM, LUKS and LUKS2's second header,
//     VMFS, a partition table and its backup at the end; RAID metadata in
//     the very last sectors). A disk in use is foreign or plinth's
//     whatever it holds, and its filesystem rewrites its superblock as it
//     works: its bytes are not read, and it is probed again once it is no
//     longer in use.
//
// Before a probe of a disk not in use, the kernel's cache of its blocks is
// dropped (BLKFLSBUF): wipefs reads through that cache, which may be older
// than the medium (another loop device over the same file, another host's
// write to a shared LUN), and an answer kept for a fingerprint must be of
// the medium. A probe that failed is tried again at the next scan, then
// after 1, 3, 7... scans (at most 63) while it keeps failing. A device
// whose sysfs entry or ends cannot be read is probed every time. Decisions that
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
	err        error // a probe that failed: answered again for a while (retryAfter)
	// failures in a row, and scans answered from the memo since the last.
	failures, skipped int
}

// retryAfter is how many scans a probe that failed failures times in a
// row is answered from the memo before it is tried again.
func retryAfter(failures int) int { return 1<<min(failures-1, 6) - 1 }

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
		hit := ok && e.sys == sys && e.inUse == inUse && e.edges == edge && (e.err == nil || e.skipped < retryAfter(e.failures))
		if hit && e.err != nil {
			e.skipped++
			m.last[device] = e
		}
		m.mu.Unlock()
		if hit {
			return e.sig, e.err
		}
	}
	if !inUse {
		flushBuffers(device)
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
		e := memoEntry{sys: sys, edges: edge, inUse: inUse, sig: sig, err: perr}
		if perr != nil {
			e.failures = 1
			if old, ok := m.last[device]; ok && old.err != nil {
				e.failures = old.failures + 1
			}
		}
		m.last[device] = e
	}
	return sig, perr
}

// flushBuffers drops the kernel's cached blocks of device (BLKFLSBUF),
// so that a probe reads the medium; a device that cannot be opened or
// flushed is probed as it is.
func flushBuffers(device string) {
	fd, err := unix.Open(device, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	_ = unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0)
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

// middleReads are where edges reads 64 KiB beyond the first MiB: VMFS's
// volume header and filesystem (1 and 2 MiB), LUKS2's second header (at
// 1, 2 or 4 MiB for the larger metadata sizes).
var middleReads = []int64{1 << 20, 2 << 20, 4 << 20}

// edges hashes the first MiB of device, 64 KiB at each of middleReads and
// its last MiB to its last sector, as they are on the medium (O_DIRECT:
// the page cache may hold older blocks than a mounted filesystem wrote
// past it).
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
	// O_DIRECT reads in whole logical blocks (512 bytes or 4 KiB), at
	// offsets aligned to them, into memory aligned to them.
	const memAlign = 4096
	align := int64(512)
	if lbs, err := unix.IoctlGetInt(fd, unix.BLKSSZGET); err == nil && lbs >= 512 && lbs <= memAlign {
		align = int64(lbs)
	}
	raw := make([]byte, edgeBytes+memAlign)
	buf := raw[memAlign-int(uintptr(unsafe.Pointer(&raw[0]))%memAlign):][:edgeBytes]
	h := sha256.New()
	type read struct{ off, n int64 }
	reads := []read{{0, edgeBytes}}
	for _, off := range middleReads {
		reads = append(reads, read{off, 64 << 10})
	}
	if end := (size - edgeBytes) / align * align; end > 0 {
		reads = append(reads, read{end, edgeBytes})
	}
	for _, r := range reads {
		off := r.off
		if off >= size {
			continue
		}
		n := min(r.n, size-off) / align * align
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
