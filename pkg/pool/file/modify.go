package file

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
)

var _ pool.Modifier = (*Pool)(nil)

// ModifyVolume changes a Ready volume's provisioning and IO limits.
// Thin to thick allocates every block of the image (its size unchanged),
// checked against the pool filesystem's free space first; thick to thin
// only records it: the image keeps its blocks until the node trims the
// mounted filesystem (the loop device punches the freed ranges out of the
// image). Neither changes what the pool counts as committed: a thin
// volume's unwritten capacity is committed already (nothing is
// over-committed), so only the filesystem's free space moves.
func (p *Pool) ModifyVolume(ctx context.Context, id string, m pool.Mutable) (pool.Volume, error) {
	v, err := p.index.ReadyVolume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if m.Thick && !v.Thick {
		if err := p.allocateAll(v); err != nil {
			return pool.Volume{}, err
		}
	}
	out, err := p.index.SetMutable(id, m)
	if err != nil {
		return pool.Volume{}, err
	}
	if m.Thick != v.Thick {
		klog.InfoS("Volume provisioning changed", "pool", p.name, "volumeID", id, "thick", m.Thick)
	}
	return out, nil
}

// allocateAll allocates the blocks of v's image that hold none yet.
func (p *Pool) allocateAll(v pool.Volume) error {
	img := p.volImage(v.ID)
	f, err := os.OpenFile(img, os.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open image %s: %w", img, err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("stat image %s: %w", img, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: image %s is not a regular file", pool.ErrInvalid, img)
	}
	need := v.CapacityBytes - st.Blocks*512
	var fs unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &fs); err != nil {
		return fmt.Errorf("statfs %s: %w", img, err)
	}
	free := int64(fs.Bavail) * fs.Bsize
	if need > free {
		return fmt.Errorf("%w: thick provisioning of volume %s asks %d bytes more, and pool %s's filesystem has %d bytes free", pool.ErrNoSpace, v.ID, need, p.name, free)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, v.CapacityBytes); err != nil {
		if errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.EDQUOT) {
			return fmt.Errorf("%w: thick provisioning of volume %s asks %d bytes more, and pool %s's filesystem has %d bytes free: %w", pool.ErrNoSpace, v.ID, need, p.name, free, err)
		}
		return fmt.Errorf("allocate image %s: %w", img, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync image %s: %w", img, err)
	}
	return nil
}
