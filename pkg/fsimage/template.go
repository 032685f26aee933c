package fsimage

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/ext4"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// ErrNoTemplate: no template can format this device (a filesystem type
// made only by mkfs, or a template that could not be made); nothing was
// written to the device, and the caller runs mkfs.
var ErrNoTemplate = mount.ErrNoTemplate

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
// written temp → fsync → rename, so whoever reads it reads a whole one, and
// a temp file is locked (flock) by its maker while it is made.
//
// Everything in dir is reached through a descriptor of dir opened without
// following a symlink, and only a template that looks like one plinth made
// is copied (openTemplate): a regular file, in a directory that is not a
// symlink, owned by this process's user and writable by no one else, with
// one link. Anything else at a template's name is replaced by a new
// template, never followed, opened for reading, or copied.
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

// New returns a Cache of templates kept in dir, made with run. It removes
// the temp files of templates that a plinth killed while making them left
// in dir (cleanTemps).
func New(dir string, run mount.Runner) *Cache {
	c := &Cache{dir: dir, run: run, making: map[string]*making{}}
	c.cleanTemps()
	return c
}

var _ mount.Templater = (*Cache)(nil)

// Format makes a filesystem of fsType on device, which must read as zeros
// (a blank volume), by copying the template of its size onto it. An error
// that wraps ErrNoTemplate means nothing was written to device.
func (c *Cache) Format(ctx context.Context, device, fsType string) error {
	if fsType != "ext4" {
		return fmt.Errorf("%w for %s", ErrNoTemplate, fsType)
	}
	size, err := mount.DeviceSize(device)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	if size > MaxSize {
		return fmt.Errorf("%w for a device of %d bytes (more than %d)", ErrNoTemplate, size, int64(MaxSize))
	}
	src, g, err := c.template(ctx, fsType, size)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNoTemplate, err)
	}
	defer src.Close()
	return copyExt4(src, g, device, size)
}

func (c *Cache) name(fsType string, size int64) string {
	return fsType + "-" + strconv.FormatInt(size, 10) + "." + templateVersion + ".img"
}

func (c *Cache) path(fsType string, size int64) string {
	return filepath.Join(c.dir, c.name(fsType, size))
}

// tempName matches the names of the temp files make creates
// ("." + template name + ".tmp-" + digits), of any type and version.
var tempName = regexp.MustCompile(`^\.[a-z0-9]+-[0-9]+\.v[0-9]+\.img\.tmp-[0-9]+$`)

// errNotPlinths: what is at a template's name, or the templates
// directory, is not what plinth made.
var errNotPlinths = errors.New("not plinth's")

// openDir opens the templates directory (made first, 0700, when create and
// it is missing): a directory, not a symlink to one, owned by this
// process's user and writable by no one else.
func (c *Cache) openDir(create bool) (int, error) {
	fd, err := unix.Open(c.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) && create {
		if err := os.MkdirAll(filepath.Dir(c.dir), 0o700); err != nil {
			return -1, fmt.Errorf("create template dir: %w", err)
		}
		if err := unix.Mkdir(c.dir, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return -1, fmt.Errorf("create template dir %s: %w", c.dir, err)
		}
		fd, err = unix.Open(c.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	}
	if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) {
		return -1, fmt.Errorf("template dir %s: %w: not a directory (a symlink?)", c.dir, errNotPlinths)
	}
	if err != nil {
		return -1, fmt.Errorf("open template dir %s: %w", c.dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("stat template dir %s: %w", c.dir, err)
	}
	if st.Uid != uint32(os.Geteuid()) || st.Mode&0o022 != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("template dir %s: %w: owner %d, mode %o", c.dir, errNotPlinths, st.Uid, st.Mode&0o7777)
	}
	return fd, nil
}

// openAt opens name in dir for reading if it is a regular file there (not
// a symlink, FIFO or device: nothing that could block, have effects when
// opened, or lead elsewhere), and returns it with its stat.
func openAt(dir int, name string) (int, unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, st, fmt.Errorf("%s: %w: not a regular file", name, errNotPlinths)
	}
	fd, err := unix.Openat(dir, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, st, err
	}
	var now unix.Stat_t
	if err := unix.Fstat(fd, &now); err != nil || now.Ino != st.Ino || now.Dev != st.Dev || now.Mode&unix.S_IFMT != unix.S_IFREG {
		unix.Close(fd)
		return -1, st, fmt.Errorf("%s: %w: replaced while opened", name, errNotPlinths)
	}
	return fd, now, nil
}

// readNames lists the directory open at dir (named path).
func readNames(dir int, path string) ([]string, error) {
	fd, err := unix.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	d := os.NewFile(uintptr(fd), path)
	defer d.Close()
	return d.Readdirnames(-1)
}

// cleanTemps removes from dir the temp files of templates whose maker is
// gone: regular files named like make's temp files, directly in dir, that
// no one holds locked. A symlink, FIFO, directory or file of another name
// stays, and a templates directory that is not plinth's is not cleaned.
func (c *Cache) cleanTemps() {
	dir, err := c.openDir(false)
	if errors.Is(err, unix.ENOENT) {
		return
	}
	if err != nil {
		klog.ErrorS(err, "Filesystem templates are not used: mkfs formats every volume")
		return
	}
	defer unix.Close(dir)
	names, err := readNames(dir, c.dir)
	if err != nil {
		klog.ErrorS(err, "List filesystem templates", "dir", c.dir)
		return
	}
	for _, name := range names {
		if !tempName.MatchString(name) {
			continue
		}
		fd, st, err := openAt(dir, name)
		if err != nil {
			continue
		}
		// Locked: a live maker (another process on this dir) is at it.
		if unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB) == nil {
			var now unix.Stat_t
			if unix.Fstatat(dir, name, &now, unix.AT_SYMLINK_NOFOLLOW) == nil && now.Ino == st.Ino && now.Dev == st.Dev {
				if err := unix.Unlinkat(dir, name, 0); err == nil {
					klog.InfoS("Removed a half-made filesystem template", "path", filepath.Join(c.dir, name))
				}
			}
		}
		unix.Close(fd)
	}
}

// template opens the template for fsType and size, made first if need be
// (one maker per template in this process).
func (c *Cache) template(ctx context.Context, fsType string, size int64) (*os.File, ext4Geometry, error) {
	name := c.name(fsType, size)
	if f, g, err := c.openTemplate(name, size); err == nil {
		now := time.Now()
		tv := []unix.Timeval{unix.NsecToTimeval(now.UnixNano()), unix.NsecToTimeval(now.UnixNano())}
		_ = unix.Futimes(int(f.Fd()), tv) // recently used: evicted last
		return f, g, nil
	}
	p := filepath.Join(c.dir, name)
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
			m.err = c.make(mctx, fsType, size, name)
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
		return nil, ext4Geometry{}, ctx.Err()
	}
	if m.err != nil {
		return nil, ext4Geometry{}, m.err
	}
	return c.openTemplate(name, size)
}

// mkfsArgs are the options a blank loop device of plinth's (4 KiB logical
// blocks, reading as zeros) gets from mount.Host, plus what makes the copy
// re-identifiable: mke2fs then picks the same layout for the file as for
// the device.
func mkfsArgs(file string) []string {
	return []string{"-F", "-q", "-m0", "-b", "4096", "-O", "metadata_csum_seed", "-E", "nodiscard,assume_storage_prezeroed=1", file}
}

// createTemp creates a new temp file for the template name in dir.
func createTemp(dir int, name string) (int, string, error) {
	for range 100 {
		var r [4]byte
		if _, err := rand.Read(r[:]); err != nil {
			return -1, "", err
		}
		tmp := "." + name + ".tmp-" + strconv.FormatUint(uint64(r[0])|uint64(r[1])<<8|uint64(r[2])<<16|uint64(r[3])<<24, 10)
		fd, err := unix.Openat(dir, tmp, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		return fd, tmp, err
	}
	return -1, "", fmt.Errorf("no free temp name for %s", name)
}

func (c *Cache) make(ctx context.Context, fsType string, size int64, name string) error {
	dir, err := c.openDir(true)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	fd, tmp, err := createTemp(dir, name)
	if err != nil {
		return fmt.Errorf("create template in %s: %w", c.dir, err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(c.dir, tmp))
	// Locked while it is made, closed (unlocked) once renamed: a Cache
	// opening on this dir meanwhile (cleanTemps) leaves it.
	defer f.Close()
	defer unix.Unlinkat(dir, tmp, 0) // gone once renamed
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock template %s: %w", f.Name(), err)
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size template %s: %w", f.Name(), err)
	}
	// mke2fs opens the file by name; what it made is checked through f,
	// the file this call created.
	if _, err := c.run.Run(ctx, "mkfs."+fsType, mkfsArgs(f.Name())...); err != nil {
		return fmt.Errorf("make template: %w", err)
	}
	if _, err := checkTemplate(f, size); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("flush template %s: %w", f.Name(), err)
	}
	if err := unix.Renameat(dir, tmp, dir, name); err != nil {
		return fmt.Errorf("rename template %s: %w", f.Name(), err)
	}
	if err := unix.Fsync(dir); err != nil {
		return fmt.Errorf("flush template dir %s: %w", c.dir, err)
	}
	klog.V(2).InfoS("Filesystem template made", "fsType", fsType, "size", size, "path", filepath.Join(c.dir, name))
	c.evict(dir, name)
	return nil
}

// openTemplate opens the template name: a regular file of size bytes
// directly in the templates directory, owned by this process's user,
// writable by no one else and with no other link (nothing another user can
// change, and nothing that is also a file elsewhere), whose primary
// superblock checks out and describes a filesystem of that size.
func (c *Cache) openTemplate(name string, size int64) (*os.File, ext4Geometry, error) {
	dir, err := c.openDir(false)
	if err != nil {
		return nil, ext4Geometry{}, err
	}
	defer unix.Close(dir)
	fd, st, err := openAt(dir, name)
	if err != nil {
		return nil, ext4Geometry{}, fmt.Errorf("template %s: %w", filepath.Join(c.dir, name), err)
	}
	f := os.NewFile(uintptr(fd), filepath.Join(c.dir, name))
	if st.Uid != uint32(os.Geteuid()) || st.Mode&0o022 != 0 || st.Nlink != 1 {
		f.Close()
		return nil, ext4Geometry{}, fmt.Errorf("template %s: %w: owner %d, mode %o, %d links", f.Name(), errNotPlinths, st.Uid, st.Mode&0o7777, st.Nlink)
	}
	g, err := checkTemplate(f, size)
	if err != nil {
		f.Close()
		return nil, ext4Geometry{}, err
	}
	return f, g, nil
}

// checkTemplate checks that f is a regular file of size bytes whose primary
// superblock checks out and describes a filesystem of that size.
func checkTemplate(f *os.File, size int64) (ext4Geometry, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return ext4Geometry{}, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != size {
		return ext4Geometry{}, fmt.Errorf("template %s: not a regular file of %d bytes", f.Name(), size)
	}
	sb := make([]byte, ext4.SuperSize)
	if _, err := f.ReadAt(sb, ext4.SuperOffset); err != nil {
		return ext4Geometry{}, fmt.Errorf("read template %s: %w", f.Name(), err)
	}
	g, err := parseExt4(sb)
	if err != nil {
		return ext4Geometry{}, fmt.Errorf("template %s: %w", f.Name(), err)
	}
	if int64(g.blocks)*g.blockSize != size {
		return ext4Geometry{}, fmt.Errorf("template %s: a filesystem of %d bytes, not %d", f.Name(), int64(g.blocks)*g.blockSize, size)
	}
	return g, nil
}

// evict removes the least recently used templates in dir beyond
// MaxTemplates, never keep.
func (c *Cache) evict(dir int, keep string) {
	names, err := readNames(dir, c.dir)
	if err != nil {
		return
	}
	type tmpl struct {
		name string
		used time.Time
	}
	var all []tmpl
	for _, name := range names {
		if !strings.HasSuffix(name, ".img") || strings.HasPrefix(name, ".") {
			continue
		}
		var st unix.Stat_t
		if unix.Fstatat(dir, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
			all = append(all, tmpl{name, time.Unix(st.Mtim.Unix())})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].used.After(all[j].used) })
	for i, t := range all {
		if i >= MaxTemplates && t.name != keep {
			if err := unix.Unlinkat(dir, t.name, 0); err == nil {
				klog.V(2).InfoS("Filesystem template evicted", "path", filepath.Join(c.dir, t.name))
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
