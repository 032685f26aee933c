package fsimage

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// chunk is how much of a template is read and written at once; a multiple
// of every block size, so that no superblock straddles two chunks.
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

// copyExt4 writes the ext4 template at tmpl onto device (size bytes, read
// as zeros) with a new identity. The device is opened O_EXCL: one mounted
// or held open exclusively is refused before anything is written. Nothing
// is written before the template checks out; everything but the block of
// the primary superblock is written and flushed first, that block last.
func copyExt4(tmpl, device string, size int64) error {
	src, g, err := openTemplate(tmpl, size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	defer src.Close()
	extents, err := dataExtents(src, size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	supers := g.superOffsets()
	for _, s := range supers {
		if !slices.ContainsFunc(extents, func(e extent) bool { return s >= e.off && s+ext4SuperSize <= e.end }) {
			return fmt.Errorf("%w: template %s holds no superblock at %d", ErrUnsupported, tmpl, s)
		}
	}
	uuid, seed, err := newIdentity()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	dst, err := os.OpenFile(device, os.O_WRONLY|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", device, err) // mounted, or held by another
	}
	defer dst.Close()

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
				if s >= off && s+ext4SuperSize <= off+int64(len(b)) {
					if err := reidentify(b[s-off:s-off+ext4SuperSize], uuid, seed); err != nil {
						return fmt.Errorf("template %s at %d: %w", tmpl, s, err)
					}
					patched++
				}
			}
			if off == 0 {
				first = append([]byte(nil), b[:min(len(b), 4096)]...)
				b = b[len(first):]
				if len(b) == 0 {
					continue
				}
				if _, err := dst.WriteAt(b, off+int64(len(first))); err != nil {
					return fmt.Errorf("write %s: %w", device, err)
				}
				continue
			}
			if _, err := dst.WriteAt(b, off); err != nil {
				return fmt.Errorf("write %s: %w", device, err)
			}
		}
	}
	if patched != len(supers) || first == nil {
		return fmt.Errorf("template %s: %d of its %d superblocks hold data", tmpl, patched, len(supers))
	}
	if err := dst.Sync(); err != nil {
		return fmt.Errorf("flush %s: %w", device, err)
	}
	// Not flushed here: the mount that follows writes this superblock
	// again and flushes it. Lost to a crash before that, it leaves a
	// device with no filesystem, which the next stage formats.
	if _, err := dst.WriteAt(first, 0); err != nil {
		return fmt.Errorf("write superblock of %s: %w", device, err)
	}
	return dst.Close()
}
