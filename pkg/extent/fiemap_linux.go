package extent

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The FIEMAP ioctl (linux/fiemap.h); golang.org/x/sys does not define it.
const (
	fsIocFiemap    = 0xC020660B // _IOWR('f', 11, struct fiemap)
	fiemapFlagSync = 0x1        // flush dirty data before mapping

	extentLast      = 0x1
	extentUnwritten = 0x800 // allocated, reads as zeros
	extentShared    = 0x2000
	// The extent's place on disk is not known, or not linear with the
	// file's offsets (unknown, delayed, encoded (compressed), encrypted,
	// not aligned, inline, tail): never taken as the same as another's.
	extentNoLocation = 0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400

	batch = 256 // extents per ioctl
)

type fiemapHeader struct {
	start         uint64
	length        uint64
	flags         uint32
	mappedExtents uint32
	extentCount   uint32
	reserved      uint32
}

type fiemapExtent struct {
	logical    uint64
	physical   uint64
	length     uint64
	reserved64 [2]uint64
	flags      uint32
	reserved   [3]uint32
}

// fiemapBuf is one ioctl's request and answer.
type fiemapBuf struct {
	hdr     fiemapHeader
	extents [batch]fiemapExtent
}

// mapFrom asks for the extents of f from off on, a batch of them, after
// flushing its dirty data (FIEMAP_FLAG_SYNC) when sync is set.
func mapFrom(f *os.File, off int64, sync bool, buf *fiemapBuf) ([]fiemapExtent, error) {
	buf.hdr = fiemapHeader{start: uint64(off), length: ^uint64(0) - uint64(off), extentCount: batch}
	if sync {
		buf.hdr.flags = fiemapFlagSync
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var errno unix.Errno
	if err := raw.Control(func(fd uintptr) {
		_, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, fsIocFiemap, uintptr(unsafe.Pointer(buf)))
	}); err != nil {
		return nil, err
	}
	if errno != 0 {
		if errno == unix.EOPNOTSUPP || errno == unix.ENOTTY || errno == unix.EINVAL {
			return nil, fmt.Errorf("map the extents of %s: %w (%v)", f.Name(), ErrUnsupported, errno)
		}
		return nil, fmt.Errorf("map the extents of %s at %d: %w", f.Name(), off, errno)
	}
	return buf.extents[:buf.hdr.mappedExtents], nil
}

// The kernel's layout: a 32-byte header, 56-byte extents.
var (
	_ [32]byte = [unsafe.Sizeof(fiemapHeader{})]byte{}
	_ [56]byte = [unsafe.Sizeof(fiemapExtent{})]byte{}
)
