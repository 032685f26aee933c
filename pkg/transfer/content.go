package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"os"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/extent"
)

// FormatImage is content carried as a volume image's bytes at their
// offsets; what is not sent reads as zeros.
const FormatImage = "image"

// FormatImageDelta is content carried as what differs from a base image
// the receiver already holds: changed bytes, and ranges that now read as
// zeros; what is not sent is as the receiver has it.
const FormatImageDelta = "image-delta"

// FormatStream is content carried as one stream of bytes, sent whole (a
// btrfs send stream): a receiver that breaks off starts over.
const FormatStream = "stream"

// Content is what a serving node streams: an image that does not change
// while it is read (a snapshot's), or a stream.
type Content struct {
	// ID names the content and its version (the snapshot and when it was
	// made): a receiver keeps what it has only for the same ID.
	ID   string
	File *os.File
	// Size is the image's size; for a stream, what the content needs on
	// the receiving side at most (the volume's capacity).
	Size int64
	// Base, when set, is the image the receiver was filled from: only
	// what differs from it is sent (FormatImageDelta). Closed with File.
	Base *os.File
	// Stream, when set, is content carried as one stream (FormatStream),
	// with neither File nor Base: it writes the whole stream to w.
	Stream func(ctx context.Context, w io.Writer) error
	// DataBytes is about what Stream carries.
	DataBytes int64
	// Release, when set, is called by Close (a snapshot made to send).
	Release func()
}

// Close closes the content's files and releases what it holds.
func (c *Content) Close() {
	if c.File != nil {
		c.File.Close()
	}
	if c.Base != nil {
		c.Base.Close()
	}
	if c.Release != nil {
		c.Release()
	}
}

// format is how the content is carried.
func (c *Content) format() string {
	switch {
	case c.Stream != nil:
		return FormatStream
	case c.Base != nil:
		return FormatImageDelta
	default:
		return FormatImage
	}
}

// Errors a Source answers, mapped to gRPC codes at the service.
var (
	// ErrDenied: the volume object does not name the caller, or does not
	// name content on this node (PERMISSION_DENIED).
	ErrDenied = errors.New("transfer not permitted")
	// ErrNoContent: the object or its content does not exist (NOT_FOUND).
	ErrNoContent = errors.New("no such content")
)

// Source finds the content that node peer may read to fill its volume
// volumeID, or refuses (ErrDenied, ErrNoContent). The caller closes the
// content's file.
type Source interface {
	Content(ctx context.Context, peer, volumeID string) (*Content, error)
}

// ranges walks what may have to travel from off on: the content's data
// ranges, or, for a sync, the ranges where it is not backed by the same
// blocks as its base (the extent maps: nothing is read to find them).
// compare says that those ranges' bytes must still be compared with the
// base's: the two files share no blocks (a filesystem without reflinks,
// or two filesystems, where every data range of either differs by place)
// or the filesystem has no extent map (then every data range of either is
// walked).
func (c *Content) ranges(off int64) (seq iter.Seq2[extent.Range, error], compare bool, err error) {
	if c.Base == nil {
		return extent.Allocated(c.File, off, c.Size), false, nil
	}
	shared, err := extent.ShareBlocks(c.Base, c.File)
	if errors.Is(err, extent.ErrUnsupported) {
		return unionData([]*os.File{c.File, c.Base}, off, c.Size), true, nil
	}
	if err != nil {
		return nil, false, err
	}
	return extent.Delta(c.Base, c.File, off, c.Size), !shared, nil
}

// unionData walks the ranges from off to size where any of files holds
// data.
func unionData(files []*os.File, off, size int64) iter.Seq2[extent.Range, error] {
	return func(yield func(extent.Range, error) bool) {
		for off < size {
			start, err := nextData(files, off, size)
			if err != nil {
				yield(extent.Range{}, err)
				return
			}
			if start >= size {
				return
			}
			end, err := holeAfter(files, start, size)
			if err != nil {
				yield(extent.Range{}, err)
				return
			}
			end = max(end, start+1)
			if !yield(extent.Range{Off: start, Len: end - start}, nil) {
				return
			}
			off = end
		}
	}
}

// nextData is the first offset at or after off, below size, where any of
// files holds data (size when none does).
func nextData(files []*os.File, off, size int64) (int64, error) {
	first := size
	for _, f := range files {
		d, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			continue // only a hole (or the end) is left in this one
		}
		if err != nil {
			return 0, fmt.Errorf("seek data in %s at %d: %w", f.Name(), off, err)
		}
		first = min(first, d)
	}
	return first, nil
}

// holeAfter is where the data at off ends in every one of files (the
// furthest hole at or after off), at most size.
func holeAfter(files []*os.File, off, size int64) (int64, error) {
	end := off
	for _, f := range files {
		h, err := unix.Seek(int(f.Fd()), off, unix.SEEK_HOLE)
		if errors.Is(err, unix.ENXIO) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("seek hole in %s at %d: %w", f.Name(), off, err)
		}
		end = max(end, h)
	}
	return min(end, size), nil
}

// readFull reads len(p) bytes at off.
func readFull(f *os.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = io.ErrUnexpectedEOF
	}
	return fmt.Errorf("read %s at %d: %w", f.Name(), off, err)
}

// allZero reports whether p holds only zero bytes.
func allZero(p []byte) bool {
	for len(p) >= 8 {
		if p[0]|p[1]|p[2]|p[3]|p[4]|p[5]|p[6]|p[7] != 0 {
			return false
		}
		p = p[8:]
	}
	for _, b := range p {
		if b != 0 {
			return false
		}
	}
	return true
}
