package fsimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/ext4"
)

// chunk is how much of a template is read and written at once. No
// superblock straddles two chunks, because chunks are counted from the
// start of each extent and both are multiples of 4 KiB (dataExtents widens
// extents to 4 KiB; copyExt4 checks that each superblock lies inside one
// extent), while a superblock is 1024 bytes at a multiple of 1024 (the
// primary at 1024, a backup at the start of a block) and so never crosses a
// 4 KiB boundary. (Were one to straddle, copyExt4's count of the
// superblocks it rewrote would fail the copy before the primary's block is
// written.)
const chunk = 1 << 20

// extent is a range of a template that holds data.
type extent struct{ off, end int64 }

// dataExtents lists the ranges of f that hold data (SEEK_DATA and
// SEEK_HOLE), widened to 4 KiB boundaries and merged.
func dataExtents(f *os.File, size int64) ([]extent, error) {
	var out []extent
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // no data after off
		}
		if err != nil {
			return nil, fmt.Errorf("seek data in %s: %w", f.Name(), err)
		}
		hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seek hole in %s: %w", f.Name(), err)
		}
		e := extent{data &^ 4095, min((hole+4095)&^4095, size)}
		if n := len(out); n > 0 && e.off <= out[n-1].end {
			out[n-1].end = max(out[n-1].end, e.end)
		} else {
			out = append(out, e)
		}
		off = hole
	}
	return out, nil
}

// copyExt4 writes the ext4 template src (of geometry g: openTemplate)
// onto device (size bytes, read as zeros) with a new identity. Every write
// goes through a descriptor that holds the device exclusively (writeExcl):
// one mounted or held open exclusively by another is refused before
// anything is written. Nothing is written before the template checks out;
// everything but the block of the primary superblock is written and
// flushed first, that block last.
func copyExt4(src *os.File, g ext4Geometry, device string, size int64) error {
	tmpl := src.Name()
	extents, err := dataExtents(src, size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	supers := g.superOffsets()
	for _, s := range supers {
		if !slices.ContainsFunc(extents, func(e extent) bool { return s >= e.off && s+ext4.SuperSize <= e.end }) {
			return fmt.Errorf("%w: template %s holds no superblock at %d", ErrNoTemplate, tmpl, s)
		}
	}
	uuid, seed, err := newIdentity()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	// Open from the first write to the last, read-only and shared: the
	// flush between them goes through it, and the device's last close
	// (which flushes its page cache) is this one, not one under ForkLock
	// in writeExcl. A child that inherits it cannot make a mount fail:
	// mount(2) is refused only by another exclusive holder (or, where the
	// kernel blocks writes to mounted devices, by a writer).
	keep, err := unix.Open(device, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err)
	}
	defer unix.Close(keep)

	var first []byte // the block of the primary superblock, written last
	patched := 0
	buf := make([]byte, chunk)
	for _, e := range extents {
		for off := e.off; off < e.end; off += chunk {
			b := buf[:min(chunk, e.end-off)]
			if _, err := src.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read template %s: %w", tmpl, err)
			}
			for _, s := range supers {
				if s >= off && s+ext4.SuperSize <= off+int64(len(b)) {
					if err := reidentify(b[s-off:s-off+ext4.SuperSize], uuid, seed); err != nil {
						return fmt.Errorf("template %s at %d: %w", tmpl, s, err)
					}
					patched++
				}
			}
			at := off
			if off == 0 {
				first = append([]byte(nil), b[:min(len(b), 4096)]...)
				b, at = b[len(first):], int64(len(first))
			}
			if len(b) == 0 {
				continue
			}
			if err := writeExcl(device, b, at); err != nil {
				return err
			}
		}
	}
	if patched != len(supers) || first == nil {
		return fmt.Errorf("template %s: %d of its %d superblocks hold data", tmpl, patched, len(supers))
	}
	if err := unix.Fsync(keep); err != nil {
		return fmt.Errorf("flush %s: %w", device, err)
	}
	// Not flushed here: the mount that follows writes this superblock
	// again and flushes it (and so does the last close of keep). Lost to
	// a crash before that, it leaves a device with no filesystem, which
	// the next stage formats.
	return writeExcl(device, first, 0)
}

// writeExcl writes b at off of device through a descriptor of its own that
// holds the device exclusively (O_EXCL: refused while the device is mounted
// or held exclusively by another) and that exists only while
// syscall.ForkLock is held for reading.
//
// Why the lock: a child forked by another goroutine of this process (any
// exec.Command) gets a copy of every descriptor the process holds at that
// moment, and keeps it until it execs. Close-on-exec does not help in
// between: the clone copies the table, and the kernel lets the forking
// thread go on (the vfork wait ends in exec_mmap) before the child closes
// its close-on-exec descriptors. An exclusive descriptor copied into such
// a child keeps the device claimed after this process closed its own, and
// the mount that follows the copy fails with EBUSY. syscall.forkExec holds
// ForkLock for writing from before the clone until it returns, so while
// this function holds it for reading no child is forked, and a child forked
// before it took the lock was forked before the descriptor existed: no
// child ever holds it. (Only os/exec and syscall fork in a Go process, and
// both take the lock; plinth has no cgo.) The lock is held for one
// open, write and close: at most chunk bytes into the page cache.
func writeExcl(device string, b []byte, off int64) error {
	syscall.ForkLock.RLock()
	defer syscall.ForkLock.RUnlock()
	fd, err := unix.Open(device, unix.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err) // mounted, or held by another
	}
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err == nil && n == 0 {
			err = io.ErrShortWrite
		}
		if err != nil {
			unix.Close(fd)
			return fmt.Errorf("write %s at %d: %w", device, off, err)
		}
		b, off = b[n:], off+int64(n)
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close %s: %w", device, err)
	}
	return nil
}
