package fsimage

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// ErrUnsupported: no template can format this device (a filesystem type
// made only by mkfs, or a template that could not be made); nothing was
// written to the device, and the caller runs mkfs.
var ErrUnsupported = mount.ErrNoTemplate

// templateVersion names the mkfs options below: templates made with other
// options are never used.
const templateVersion = "v1"

// MaxTemplates is how many templates a Cache keeps; the least recently
// used go first.
const MaxTemplates = 8

// MaxSize is the largest device formatted from a template. A template is
// a sparse file whose allocated part grows with the filesystem (140 KiB
// for 64 MiB, 5 MiB for 100 GiB, 15 MiB for 1 TiB): past this, the
// templates would weigh on the node's root disk more than mkfs costs.
const MaxSize = 1 << 40

// Cache makes templates in dir and formats devices from them. Safe for
// concurrent use, and by several processes on one dir: a template is
// written temp → fsync → rename, so whoever reads it reads a whole one.
type Cache struct {
	dir string
	run mount.Runner

	mu     sync.Mutex
	making map[string]*making
}

type making struct {
	done chan struct{}
	err  error
}

// New returns a Cache of templates kept in dir, made with run.
func New(dir string, run mount.Runner) *Cache {
	return &Cache{dir: dir, run: run, making: map[string]*making{}}
}

var _ mount.Templater = (*Cache)(nil)

// Format makes a filesystem of fsType on device, which must read as zeros
// (a blank volume), by copying the template of its size onto it. An error
// that wraps ErrUnsupported means nothing was written to device.
func (c *Cache) Format(ctx context.Context, device, fsType string) error {
	if fsType != "ext4" {
		return fmt.Errorf("%w for %s", ErrUnsupported, fsType)
	}
	size, err := mount.DeviceSize(device)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	if size > MaxSize {
		return fmt.Errorf("%w for a device of %d bytes (more than %d)", ErrUnsupported, size, int64(MaxSize))
	}
	tmpl, err := c.template(ctx, fsType, size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return copyExt4(tmpl, device, size)
}

func (c *Cache) path(fsType string, size int64) string {
	return filepath.Join(c.dir, fsType+"-"+strconv.FormatInt(size, 10)+"."+templateVersion+".img")
}

// template returns the path of the template for fsType and size, made
// first if need be (one maker per template in this process).
func (c *Cache) template(ctx context.Context, fsType string, size int64) (string, error) {
	p := c.path(fsType, size)
	if err := checkTemplate(p, size); err == nil {
		now := time.Now()
		_ = os.Chtimes(p, now, now) // recently used: evicted last
		return p, nil
	}
	c.mu.Lock()
	m, ok := c.making[p]
	if !ok {
		m = &making{done: make(chan struct{})}
		c.making[p] = m
		go func() {
			// Made apart from the request that asked first, so that its
			// cancellation does not fail the others waiting for it.
			mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
			defer cancel()
			m.err = c.make(mctx, fsType, size, p)
			c.mu.Lock()
			delete(c.making, p)
			c.mu.Unlock()
			close(m.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-m.done:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	if m.err != nil {
		return "", m.err
	}
	return p, nil
}

// mkfsArgs are the options a blank loop device of plinth's (4 KiB logical
// blocks, reading as zeros) gets from mount.Host, plus what makes the copy
// re-identifiable: mke2fs then picks the same layout for the file as for
// the device.
func mkfsArgs(file string) []string {
	return []string{"-F", "-q", "-m0", "-b", "4096", "-O", "metadata_csum_seed", "-E", "nodiscard,assume_storage_prezeroed=1", file}
}

func (c *Cache) make(ctx context.Context, fsType string, size int64, p string) error {
	if err := os.MkdirAll(c.dir, 0o700); err != nil {
		return fmt.Errorf("create template dir: %w", err)
	}
	f, err := os.CreateTemp(c.dir, "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create template: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone once renamed
	err = func() error {
		defer f.Close()
		if err := f.Truncate(size); err != nil {
			return fmt.Errorf("size template %s: %w", tmp, err)
		}
		if _, err := c.run.Run(ctx, "mkfs."+fsType, mkfsArgs(tmp)...); err != nil {
			return fmt.Errorf("make template: %w", err)
		}
		if err := checkTemplate(tmp, size); err != nil {
			return err
		}
		return f.Sync()
	}()
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, p); err != nil {
		return fmt.Errorf("rename template %s: %w", tmp, err)
	}
	if err := pool.SyncDir(c.dir); err != nil {
		return err
	}
	klog.V(2).InfoS("Filesystem template made", "fsType", fsType, "size", size, "path", p)
	c.evict(p)
	return nil
}

// checkTemplate checks the template at p (openTemplate).
func checkTemplate(p string, size int64) error {
	f, _, err := openTemplate(p, size)
	if err != nil {
		return err
	}
	return f.Close()
}

// openTemplate opens the template at p: a regular file of size bytes whose
// primary superblock checks out and describes a filesystem of that size.
func openTemplate(p string, size int64) (*os.File, ext4Geometry, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, ext4Geometry{}, err
	}
	g, err := func() (ext4Geometry, error) {
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil {
			return ext4Geometry{}, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size {
			return ext4Geometry{}, fmt.Errorf("template %s: not a regular file of %d bytes", p, size)
		}
		sb := make([]byte, ext4SuperSize)
		if _, err := f.ReadAt(sb, ext4SuperOffset); err != nil {
			return ext4Geometry{}, fmt.Errorf("read template %s: %w", p, err)
		}
		g, err := parseExt4(sb)
		if err != nil {
			return ext4Geometry{}, fmt.Errorf("template %s: %w", p, err)
		}
		if int64(g.blocks)*g.blockSize != size {
			return ext4Geometry{}, fmt.Errorf("template %s: a filesystem of %d bytes, not %d", p, int64(g.blocks)*g.blockSize, size)
		}
		return g, nil
	}()
	if err != nil {
		f.Close()
		return nil, ext4Geometry{}, err
	}
	return f, g, nil
}

// evict removes the least recently used templates beyond MaxTemplates,
// never keep.
func (c *Cache) evict(keep string) {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	type tmpl struct {
		path string
		used time.Time
	}
	var all []tmpl
	for _, e := range entries {
		if !e.Type().IsRegular() || !strings.HasSuffix(e.Name(), ".img") || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		if info, err := e.Info(); err == nil {
			all = append(all, tmpl{filepath.Join(c.dir, e.Name()), info.ModTime()})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.After(all[j].used) })
	for i, t := range all {
		if i >= MaxTemplates && t.path != keep {
			if err := os.Remove(t.path); err == nil {
				klog.V(2).InfoS("Filesystem template evicted", "path", t.path)
			}
		}
	}
}

// newIdentity returns a random UUID (version 4) and directory hash seed.
func newIdentity() (uuid, seed [16]byte, err error) {
	if _, err = io.ReadFull(rand.Reader, uuid[:]); err != nil {
		return
	}
	if _, err = io.ReadFull(rand.Reader, seed[:]); err != nil {
		return
	}
	uuid[6] = uuid[6]&0x0f | 0x40
	uuid[8] = uuid[8]&0x3f | 0x80
	return
}
