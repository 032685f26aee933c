package extent

import (
	"errors"
	"fmt"
	"iter"
	"os"

	"golang.org/x/sys/unix"
)

// Range is the bytes [Off, Off+Len) of a file.
type Range struct{ Off, Len int64 }

// End is where r ends.
func (r Range) End() int64 { return r.Off + r.Len }

// ErrUnsupported: the file's filesystem has no extent map (FIEMAP).
var ErrUnsupported = errors.New("no extent map")

// Allocated walks the data ranges of f from from to size, in order
// (SEEK_DATA and SEEK_HOLE: unwritten and never-written ranges are holes).
// A filesystem without them reports all of f as data.
func Allocated(f *os.File, from, size int64) iter.Seq2[Range, error] {
	return func(yield func(Range, error) bool) {
		fd := int(f.Fd())
		for off := max(from, 0); off < size; {
			data, err := unix.Seek(fd, off, unix.SEEK_DATA)
			if errors.Is(err, unix.ENXIO) {
				return // only a hole is left
			}
			if errors.Is(err, unix.EINVAL) && off == max(from, 0) {
				// No holes to find (a block device): all of it is data.
				yield(Range{Off: off, Len: size - off}, nil)
				return
			}
			if err != nil {
				yield(Range{}, fmt.Errorf("seek data in %s at %d: %w", f.Name(), off, err))
				return
			}
			if data >= size {
				return
			}
			hole, err := unix.Seek(fd, data, unix.SEEK_HOLE)
			if err != nil {
				yield(Range{}, fmt.Errorf("seek hole in %s at %d: %w", f.Name(), data, err))
				return
			}
			hole = min(max(hole, data+1), size)
			if !yield(Range{Off: data, Len: hole - data}, nil) {
				return
			}
			off = hole
		}
	}
}

// Shared reports whether any block of f is shared with another file (a
// reflink copy, or the file it was copied from).
func Shared(f *os.File) (bool, error) {
	m := &mapper{f: f, size: 1<<63 - 1, end: 1<<63 - 1}
	for {
		s, ok, err := m.next()
		if err != nil || !ok {
			return false, err
		}
		if s.shared {
			return true, nil
		}
	}
}

// ShareBlocks reports whether Delta of base and now can be exact: both lie
// on one filesystem, and now shares some of its blocks (with base, when
// base is its reflink copy). Where it is false Delta yields every data
// range of either file, and only comparing their bytes tells what changed.
func ShareBlocks(base, now *os.File) (bool, error) {
	same, err := sameDevice(base, now)
	if err != nil || !same {
		return false, err
	}
	return Shared(now)
}

func sameDevice(a, b *os.File) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(a.Fd()), &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a.Name(), err)
	}
	if err := unix.Fstat(int(b.Fd()), &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b.Name(), err)
	}
	return sa.Dev == sb.Dev, nil
}

// Delta walks, in order, the ranges from from to size where base and now are not
// backed by the same blocks: where one holds data and the other reads as
// zeros, or both hold data in different places. For a reflink copy and its
// original that is what was written to either since the copy, a block at
// a time. Ranges that read as zeros in both (holes, unwritten extents) are
// the same. Both files are flushed first (FIEMAP_FLAG_SYNC); neither may
// change during the walk. On a filesystem without FIEMAP the first thing
// yielded is ErrUnsupported.
func Delta(base, now *os.File, from, size int64) iter.Seq2[Range, error] {
	return func(yield func(Range, error) bool) {
		from = max(from, 0)
		// Block addresses are compared only within one filesystem: two
		// made alike place data alike (btrfs subvolumes, one filesystem
		// with a device number each, are taken as two, conservatively).
		oneFs, err := sameDevice(base, now)
		if err != nil {
			yield(Range{}, err)
			return
		}
		a := &mapper{f: base, size: size, pos: from}
		b := &mapper{f: now, size: size, pos: from}
		for _, m := range []*mapper{a, b} {
			var st unix.Stat_t
			if err := unix.Fstat(int(m.f.Fd()), &st); err != nil {
				yield(Range{}, fmt.Errorf("stat %s: %w", m.f.Name(), err))
				return
			}
			// Past its own end a file reads as zeros, whatever block a
			// partial last block shares.
			m.end = min(st.Size, size)
		}
		var sa, sb segment
		var pending Range // changed, not yet yielded (merged with what follows)
		flush := func() bool {
			if pending.Len == 0 {
				return true
			}
			r := pending
			pending = Range{}
			return yield(r, nil)
		}
		for x := from; x < size; {
			if err := a.at(&sa, x); err != nil {
				yield(Range{}, err)
				return
			}
			if err := b.at(&sb, x); err != nil {
				yield(Range{}, err)
				return
			}
			end := min(sa.end, sb.end)
			if !same(sa, sb, x, oneFs) {
				if pending.Len > 0 && pending.End() == x {
					pending.Len = end - pending.Off
				} else {
					if !flush() {
						return
					}
					pending = Range{Off: x, Len: end - x}
				}
			}
			x = end
		}
		flush()
	}
}

// segment is a stretch of a file that either reads as zeros (!data) or is
// data whose block for offset off is at phys, linearly (located).
type segment struct {
	off, end      int64
	data, located bool
	phys          int64
	shared        bool
}

// same reports whether a and b read the same at x onwards (both as zeros,
// or from the same blocks of one filesystem).
func same(a, b segment, x int64, oneFs bool) bool {
	if !a.data || !b.data {
		return a.data == b.data
	}
	return oneFs && a.located && b.located && a.phys+(x-a.off) == b.phys+(x-b.off)
}

// mapper walks a file's extents as segments covering [0, size), a batch
// of FIEMAP at a time.
type mapper struct {
	f    *os.File
	size int64
	// end is the file's own size (at most size): data past it reads as
	// zeros.
	end    int64
	buf    fiemapBuf
	ext    []fiemapExtent
	pos    int64 // all before it is walked
	last   bool  // the kernel has no extents after ext
	synced bool
}

// at moves s on to the segment that holds x (x at or after s).
func (m *mapper) at(s *segment, x int64) error {
	for s.end <= x {
		next, ok, err := m.next()
		if err != nil {
			return err
		}
		if !ok {
			next = segment{off: x, end: m.size}
		}
		*s = next
	}
	return nil
}

// next is the segment at m.pos; false once the size is reached.
func (m *mapper) next() (segment, bool, error) {
	for m.pos < m.size {
		if len(m.ext) == 0 && !m.last {
			ext, err := mapFrom(m.f, m.pos, !m.synced, &m.buf)
			if err != nil {
				return segment{}, false, err
			}
			m.synced = true
			m.ext = ext
			if len(ext) == 0 || ext[len(ext)-1].flags&extentLast != 0 {
				m.last = true
			}
		}
		if len(m.ext) == 0 {
			s := segment{off: m.pos, end: m.size}
			m.pos = m.size
			return s, true, nil
		}
		e := m.ext[0]
		lo, hi := int64(e.logical), int64(e.logical+e.length)
		if hi <= m.pos {
			m.ext = m.ext[1:] // behind: an extent the last batch ended in
			continue
		}
		if lo > m.pos {
			// A hole before the extent.
			s := segment{off: m.pos, end: min(lo, m.size)}
			m.pos = s.end
			return s, true, nil
		}
		if m.pos >= m.end {
			// Past the file's end: zeros to the size.
			s := segment{off: m.pos, end: m.size}
			m.pos, m.ext, m.last = m.size, nil, true
			return s, true, nil
		}
		hi = min(hi, m.end)
		s := segment{off: m.pos, end: hi, data: e.flags&extentUnwritten == 0,
			located: e.flags&extentNoLocation == 0, phys: int64(e.physical) + (m.pos - lo), shared: e.flags&extentShared != 0}
		m.pos = s.end
		if hi == int64(e.logical+e.length) {
			m.ext = m.ext[1:]
		}
		return s, true, nil
	}
	return segment{}, false, nil
}
