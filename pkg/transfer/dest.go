package transfer

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/durable"
)

// ProgressRecords is the receiver's record of how far an image is written
// (a FileDestination's progress file).
var ProgressRecords = durable.Format{Kind: "transfer progress record", Field: "schema"}

// progress is what a receiver keeps beside the image it fills.
type progress struct {
	Schema    int    `json:"schema"`
	ContentID string `json:"contentID"`
	Size      int64  `json:"size"`
	// Through: everything of the content before it is in the image, on
	// disk (the image was fsynced before this was written).
	Through int64 `json:"through"`
}

// FileDestination fills an image file that is kept across restarts, with
// its progress in a record of its own.
type FileDestination struct {
	// Image is the image being filled; it is made (sparse, Size bytes)
	// when missing.
	Image string
	// Progress is the record of how far Image is written.
	Progress string
	// MaxSize, when set, is the most content the image may take (the
	// volume's capacity): a larger content is refused before anything is
	// written.
	MaxSize int64

	f *os.File
}

// Resume returns where the transfer of contentID (size bytes) goes on from:
// where the record says, if it is for the same content and the image is
// there; otherwise 0, with the image emptied and sized again.
func (d *FileDestination) Resume(contentID string, size int64) (int64, error) {
	if d.MaxSize > 0 && size > d.MaxSize {
		return 0, fmt.Errorf("%w: the content is %d bytes, the volume holds %d", ErrTooLarge, size, d.MaxSize)
	}
	// A record that cannot be read (torn, not a file, a newer one) only
	// says how far a throwaway image got: start over.
	var p progress
	known := ProgressRecords.Read(d.Progress, &p) == nil
	f, ferr := os.OpenFile(d.Image, os.O_RDWR|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if ferr == nil {
		st, serr := f.Stat()
		if known && serr == nil && st.Mode().IsRegular() && st.Size() == size &&
			p.ContentID == contentID && p.Size == size && p.Through >= 0 && p.Through <= size {
			d.f = f
			return p.Through, nil
		}
		f.Close()
	}
	// Start over: a new image of zeros, and a record of nothing written
	// for this content. Whatever is at the image's name (a link, a FIFO,
	// an older image) goes; nothing is written through it.
	if err := os.Remove(d.Image); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove partial image %s: %w", d.Image, err)
	}
	if err := os.Remove(d.Progress); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove progress record %s: %w", d.Progress, err)
	}
	f, err := os.OpenFile(d.Image, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return 0, fmt.Errorf("create image %s: %w", d.Image, err)
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return 0, fmt.Errorf("size image %s to %d bytes: %w", d.Image, size, err)
	}
	d.f = f
	if err := ProgressRecords.Write(d.Progress, progress{Schema: ProgressRecords.Version(), ContentID: contentID, Size: size}); err != nil {
		return 0, err
	}
	return 0, nil
}

// ErrTooLarge: the content is larger than the destination may hold.
var ErrTooLarge = errors.New("content too large")

// Format: a FileDestination is a new image.
func (d *FileDestination) Format() string { return FormatImage }

// Zero is never asked of a new image (it reads zeros where nothing was
// written).
func (d *FileDestination) Zero(off, n int64) error {
	return fmt.Errorf("zero %d bytes at %d of a new image: %w", n, off, ErrUnsupported)
}

// WriteAt writes data at off.
func (d *FileDestination) WriteAt(p []byte, off int64) error { return writeImage(d.f, d.Image, p, off) }

// Commit makes what is written durable and records that everything before
// through is.
func (d *FileDestination) Commit(contentID string, size, through int64) error {
	return commitImage(d.f, d.Image, d.Progress, contentID, size, through)
}

// Close closes the image (the records stay).
func (d *FileDestination) Close() error { return closeImage(&d.f) }

// SyncDestination brings an image filled before up to date in place: only
// what differs from the base it was filled from comes. The image is never
// made or emptied here; a sync resumed for other content starts from the
// beginning again (what was written is rewritten as the new content has it).
type SyncDestination struct {
	Image    string
	Progress string

	f *os.File
}

// Format: a sync takes deltas.
func (d *SyncDestination) Format() string { return FormatImageDelta }

// Resume opens the image (it must be size bytes) and returns where the
// record says a sync of contentID got to, or 0.
func (d *SyncDestination) Resume(contentID string, size int64) (int64, error) {
	f, err := os.OpenFile(d.Image, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return 0, fmt.Errorf("open image %s: %w", d.Image, err)
	}
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() || st.Size() != size {
		f.Close()
		return 0, fmt.Errorf("image %s is not a %d-byte regular file: %w", d.Image, size, ErrUnsupported)
	}
	d.f = f
	var p progress
	if ProgressRecords.Read(d.Progress, &p) == nil && p.ContentID == contentID && p.Size == size && p.Through >= 0 && p.Through <= size {
		return p.Through, nil
	}
	// No record, another content's, or one that cannot be read: from the
	// start (rewriting what differs is idempotent).
	if err := os.Remove(d.Progress); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove progress record %s: %w", d.Progress, err)
	}
	return 0, ProgressRecords.Write(d.Progress, progress{Schema: ProgressRecords.Version(), ContentID: contentID, Size: size})
}

// WriteAt writes data at off.
func (d *SyncDestination) WriteAt(p []byte, off int64) error { return writeImage(d.f, d.Image, p, off) }

// Zero punches a hole: the range reads as zeros and takes no space.
func (d *SyncDestination) Zero(off, n int64) error {
	if err := unix.Fallocate(int(d.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n); err != nil {
		return fmt.Errorf("zero %d bytes at %d of %s: %w", n, off, d.Image, err)
	}
	return nil
}

// Commit makes what is written durable and records how far it is.
func (d *SyncDestination) Commit(contentID string, size, through int64) error {
	return commitImage(d.f, d.Image, d.Progress, contentID, size, through)
}

// Close closes the image.
func (d *SyncDestination) Close() error { return closeImage(&d.f) }

// writeImage writes p at off of the image open as f.
func writeImage(f *os.File, image string, p []byte, off int64) error {
	if _, err := f.WriteAt(p, off); err != nil {
		return fmt.Errorf("write image %s at %d: %w", image, off, err)
	}
	return nil
}

// commitImage fsyncs the image, then records that the content is in it
// through that offset.
func commitImage(f *os.File, image, record, contentID string, size, through int64) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fsync image %s: %w", image, err)
	}
	return ProgressRecords.Write(record, progress{Schema: ProgressRecords.Version(), ContentID: contentID, Size: size, Through: through})
}

// closeImage closes *f once.
func closeImage(f **os.File) error {
	if *f == nil {
		return nil
	}
	err := (*f).Close()
	*f = nil
	return err
}
