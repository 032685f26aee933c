package file

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// cloneFile makes dst a copy of src: a reflink (FICLONE) where the
// filesystem shares extents, otherwise a sparse copy that skips holes.
// It reports whether the copy was a reflink.
func cloneFile(dst, src string) (reflinked bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("open clone source: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return false, fmt.Errorf("create clone target: %w", err)
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return true, out.Sync()
	} else if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EXDEV) &&
		!errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
		return false, fmt.Errorf("reflink %s to %s: %w", src, dst, err)
	}
	if err := sparseCopy(out, in); err != nil {
		return false, fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	return false, out.Sync()
}

// sparseCopy copies the data segments of in to out (found with SEEK_DATA /
// SEEK_HOLE) and sets out's size, so holes stay holes.
func sparseCopy(out, in *os.File) error {
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	inFd, outFd := int(in.Fd()), int(out.Fd())
	var off int64
	for off < size {
		data, err := unix.Seek(inFd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return fmt.Errorf("seek data: %w", err)
		}
		hole, err := unix.Seek(inFd, data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("seek hole: %w", err)
		}
		for pos := data; pos < hole; {
			srcOff, dstOff := pos, pos
			n, err := unix.CopyFileRange(inFd, &srcOff, outFd, &dstOff, int(hole-pos), 0)
			if err != nil {
				return fmt.Errorf("copy range at %d: %w", pos, err)
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return out.Truncate(size)
}

// probePrefix names the files reflinkSupported makes in a pool directory.
const probePrefix = ".plinth-reflink-probe-"

// reflinkSupported reports whether dir's filesystem shares extents
// (FICLONE), by cloning a one-block file there; the probe files are removed,
// and so are any an interrupted probe left.
func reflinkSupported(dir string) (bool, error) {
	if old, err := filepath.Glob(filepath.Join(dir, probePrefix+"*")); err == nil {
		for _, f := range old {
			_ = os.Remove(f)
		}
	}
	src, err := os.CreateTemp(dir, probePrefix+"*")
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(src.Name())
	defer src.Close()
	if _, err := src.Write(make([]byte, 4096)); err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	dst, err := os.CreateTemp(dir, probePrefix+"*")
	if err != nil {
		return false, fmt.Errorf("reflink probe: %w", err)
	}
	defer os.Remove(dst.Name())
	defer dst.Close()
	return unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())) == nil, nil
}
