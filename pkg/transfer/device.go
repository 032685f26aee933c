package transfer

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DeviceDestination fills a whole disk with an image (a disk volume's
// content, sent with its chunks of zeros left out): the disk is zeroed
// when a transfer starts, so what is not sent reads as zeros, and it is
// written through one exclusive descriptor held for the whole attempt.
type DeviceDestination struct {
	// Open opens the disk for writing, exclusively, checked to be the
	// volume's (pool.ImportTarget.OpenDevice).
	Open func() (*os.File, error)
	// Progress is the record of how far the disk is written.
	Progress string

	f    *os.File
	name string
}

// Format: a disk takes an image.
func (d *DeviceDestination) Format() string { return FormatImage }

// Resume opens the disk and returns where the record says a transfer of
// contentID got to; otherwise the disk is zeroed whole and 0 returned. A
// content larger than the disk is refused before anything is written.
func (d *DeviceDestination) Resume(contentID string, size int64) (int64, error) {
	if d.f == nil {
		f, err := d.Open()
		if err != nil {
			return 0, err
		}
		d.f, d.name = f, f.Name()
	}
	devSize, err := blockSize(d.f)
	if err != nil {
		return 0, err
	}
	if size > devSize {
		return 0, fmt.Errorf("%w: the content is %d bytes, disk %s holds %d", ErrTooLarge, size, d.name, devSize)
	}
	var p progress
	if ProgressRecords.Read(d.Progress, &p) == nil && p.ContentID == contentID && p.Size == size && p.Through >= 0 && p.Through <= size {
		return p.Through, nil
	}
	// Start over: nothing of an earlier content, or of the disk's past,
	// may show through what this transfer leaves out.
	if err := os.Remove(d.Progress); err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, fmt.Errorf("remove progress record %s: %w", d.Progress, err)
	}
	if err := zeroOut(d.f, devSize); err != nil {
		return 0, err
	}
	if err := d.f.Sync(); err != nil {
		return 0, fmt.Errorf("fsync %s: %w", d.name, err)
	}
	return 0, ProgressRecords.Write(d.Progress, progress{Schema: ProgressRecords.Version(), ContentID: contentID, Size: size})
}

// WriteAt writes data at off.
func (d *DeviceDestination) WriteAt(p []byte, off int64) error {
	return writeImage(d.f, d.name, p, off)
}

// Zero is never asked of a disk filled whole (it reads zeros where nothing
// was written).
func (d *DeviceDestination) Zero(off, n int64) error {
	return fmt.Errorf("zero %d bytes at %d of a disk filled whole: %w", n, off, ErrUnsupported)
}

// Commit makes what is written durable and records how far it is.
func (d *DeviceDestination) Commit(contentID string, size, through int64) error {
	return commitImage(d.f, d.name, d.Progress, contentID, size, through)
}

// Close lets go of the disk.
func (d *DeviceDestination) Close() error { return closeImage(&d.f) }

// blockSize is the size of the block device open as f.
func blockSize(f *os.File) (int64, error) {
	var size uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size))); errno != 0 {
		return 0, fmt.Errorf("size of %s: %w", f.Name(), errno)
	}
	return int64(size), nil
}

// zeroChunk is how much one BLKZEROOUT asks.
const zeroChunk = 1 << 30

// zeroOut makes the first size bytes of the block device f read as zeros
// (BLKZEROOUT: the device's write-zeroes where it has one; the kernel
// writes zeros where not).
func zeroOut(f *os.File, size int64) error {
	for off := int64(0); off < size; off += zeroChunk {
		r := [2]uint64{uint64(off), uint64(min(zeroChunk, size-off))}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r[0]))); errno != 0 {
			return fmt.Errorf("zero %s at %d: %w", f.Name(), off, errno)
		}
	}
	return nil
}
