package mount

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Loop manages loop devices through ioctls on /dev/loop-control and
// /dev/loopN, finding existing attachments through sysfs.
type Loop struct {
	SysfsRoot string // "/sys" on a host
	DevRoot   string // "/dev" on a host
	// BlockSize is the logical block size given to new loop devices;
	// 4096 lets direct I/O reach the backing filesystem unbuffered.
	BlockSize uint32
	// Avoid, when set, names free loop devices that must not be handed
	// out; a fresh device is added for the attach instead. The rule it
	// carries is the node's, not the allocator's: a loop number that a
	// consumer still holds (a raw block volume's publish record names it,
	// or a devtmpfs bind of it is mounted in a pod) is never given to
	// another volume, since the consumer would then reach that volume's
	// data through its old device node. plinth sets it to node.DeviceBound
	// (pkg/node/targets.go) where it wires the node's pools (pkg/app).
	Avoid func(dev string) bool

	index loopIndex
	// beforeClear, when set (by tests), runs after a device was chosen to
	// be released and before it is opened to be cleared: where another
	// process may free it and bind it to another file.
	beforeClear func(dev string)
}

// loopIndex is what a Loop knows of which loop devices back which files:
// the result of its last full scan for a file, plus what it attached and
// minus what it detached since. Known checks each entry against the
// kernel before answering, so a stale entry costs a device check, not a
// wrong answer; what it cannot see is a device bound to the file by
// another process after the scan (see Known).
type loopIndex struct {
	mu sync.Mutex
	m  map[string]map[string]bool // file → device path
}

// maxIndexed bounds the index: past it, it starts afresh (and files are
// scanned again as they come).
const maxIndexed = 4096

func (x *loopIndex) set(file string, devs []Device) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.m == nil || len(x.m) >= maxIndexed {
		x.m = map[string]map[string]bool{}
	}
	set := map[string]bool{}
	for _, d := range devs {
		set[d.Path] = true
	}
	x.m[file] = set
}

func (x *loopIndex) add(file, dev string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if set, ok := x.m[file]; ok {
		set[dev] = true
	}
	// Not indexed yet: the next Known scans, and finds it.
}

func (x *loopIndex) drop(file, dev string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	delete(x.m[file], dev)
}

func (x *loopIndex) get(file string) ([]string, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	set, ok := x.m[file]
	var out []string
	for d := range set {
		out = append(out, d)
	}
	sort.Strings(out)
	return out, ok
}

// NewLoop returns a Loop for the host rooted at sysfsRoot and devRoot.
func NewLoop(sysfsRoot, devRoot string) *Loop {
	return &Loop{SysfsRoot: sysfsRoot, DevRoot: devRoot, BlockSize: 4096}
}

// Find returns the read-write loop device backed by file, or "" when none
// is: the one Known names, else what a full scan finds (a second
// read-write device for a file is never attached because this Loop did
// not know of the first).
func (l *Loop) Find(file string) (string, error) {
	devs, scanned, err := l.known(file)
	if err != nil {
		return "", err
	}
	for _, d := range devs {
		if !d.ReadOnly {
			return d.Path, nil
		}
	}
	if scanned {
		return "", nil
	}
	if devs, err = l.FindAll(file); err != nil {
		return "", err
	}
	for _, d := range devs {
		if !d.ReadOnly {
			return d.Path, nil
		}
	}
	return "", nil
}

// Known returns the loop devices backed by file that this Loop found in
// its last scan for file or attached since, each checked with
// LOOP_GET_STATUS64 to be still backed by the file (backs); a file it has
// not scanned for yet is scanned (FindAll). It scans no device per call
// but the ones it names: a device bound to the file by another process
// after the scan is not among them, so what must see every device (a
// delete's in-use check) calls FindAll.
func (l *Loop) Known(file string) ([]Device, error) {
	devs, _, err := l.known(file)
	return devs, err
}

// known is Known, and whether it scanned.
func (l *Loop) known(file string) ([]Device, bool, error) {
	devs, ok := l.index.get(file)
	if !ok {
		all, err := l.FindAll(file)
		return all, true, err
	}
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil, false, fmt.Errorf("stat %s: %w", file, err)
	}
	var out []Device
	for _, dev := range devs {
		ro, same, err := sameBacking(dev, st)
		if err != nil || !same {
			l.index.drop(file, dev)
			continue
		}
		out = append(out, Device{Path: dev, ReadOnly: ro})
	}
	return out, false, nil
}

// Device is a loop device and whether it refuses writes.
type Device struct {
	Path     string
	ReadOnly bool
}

// FindAll returns every loop device backed by file: the read-write one a
// stage attaches and the read-only ones read-only block publishes use.
// Each bound loop device is asked which file backs it (LOOP_GET_STATUS64):
// the path sysfs prints is not compared, since the kernel prints the one
// it resolved (through a symlinked directory, the target's; through a bind
// mount, the bind's), not the one file was given by.
func (l *Loop) FindAll(file string) ([]Device, error) {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		return nil, fmt.Errorf("stat %s: %w", file, err)
	}
	// One directory read, and per loop device one stat and, for a bound
	// one, one ioctl: a glob of block/loop*/loop reads every loop device's
	// directory, three times slower.
	entries, err := os.ReadDir(filepath.Join(l.SysfsRoot, "block"))
	if err != nil {
		return nil, err
	}
	var out []Device
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		if _, err := os.Stat(filepath.Join(l.SysfsRoot, "block", name, "loop")); err != nil {
			continue // not bound, or detached meanwhile
		}
		dev := filepath.Join(l.DevRoot, name)
		ro, ok, err := sameBacking(dev, st)
		if err != nil || !ok {
			continue
		}
		out = append(out, Device{Path: dev, ReadOnly: ro})
	}
	l.index.set(file, out)
	return out, nil
}

func sameBacking(dev string, st unix.Stat_t) (readOnly, ok bool, err error) {
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, false, err
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if err != nil {
		return false, false, err
	}
	return info.Flags&unix.LO_FLAGS_READ_ONLY != 0, backs(info, st), nil
}

// backs reports whether the loop device whose status is info is backed by
// the file st describes: the same inode of the same filesystem, or, for a
// block device (a disk under a read-only publish), the same device number,
// through whichever device node it was opened. Paths are never compared.
func backs(info *unix.LoopInfo64, st unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT == unix.S_IFBLK {
		return info.Rdevice == st.Rdev
	}
	return info.Inode == st.Ino && info.Device == st.Dev
}

// Attach returns the read-write loop device backed by file, attaching a
// free one when none is attached yet; with readOnly it attaches a new
// device that refuses writes (the kernel's LO_FLAGS_READ_ONLY), each call
// its own. Direct I/O is asked for so that the page cache is not filled
// twice; the kernel falls back to buffered I/O where it cannot.
func (l *Loop) Attach(file string, readOnly bool) (string, error) {
	dev, _, err := l.AttachMade(file, readOnly)
	return dev, err
}

// AttachMade is Attach, and whether this call bound the device (false: it
// was bound to file already, by this process or another): what a caller
// that undoes its work may release, and nothing else.
func (l *Loop) AttachMade(file string, readOnly bool) (dev string, made bool, err error) {
	if !readOnly {
		if dev, err := l.Find(file); err != nil || dev != "" {
			return dev, false, err
		}
	}
	dev, err = l.bindFree(file, readOnly)
	return dev, err == nil, err
}

// bindFree binds a free loop device to file.
func (l *Loop) bindFree(file string, readOnly bool) (string, error) {
	// Never through a symlink, never a FIFO or a character device: an
	// image file, or a disk (a read-only device over a whole disk).
	backing, err := unix.Open(file, openMode(readOnly)|unix.O_CLOEXEC|unix.O_NOFOLLOW|unix.O_NONBLOCK, 0)
	if err != nil {
		return "", fmt.Errorf("open backing file %s: %w", file, err)
	}
	defer unix.Close(backing)
	var st unix.Stat_t
	if err := unix.Fstat(backing, &st); err != nil {
		return "", fmt.Errorf("stat backing file %s: %w", file, err)
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFBLK {
		return "", fmt.Errorf("backing file %s is not a regular file or a block device (mode %o)", file, st.Mode)
	}
	ctl, err := unix.Open(filepath.Join(l.DevRoot, "loop-control"), unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open loop-control: %w", err)
	}
	defer unix.Close(ctl)

	// Another process may take the free device between GET_FREE and
	// CONFIGURE (EBUSY); try again a bounded number of times.
	for attempt := 0; attempt < 20; attempt++ {
		n, err := unix.IoctlRetInt(ctl, unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", fmt.Errorf("get free loop device: %w", err)
		}
		dev := filepath.Join(l.DevRoot, "loop"+strconv.Itoa(n))
		if l.Avoid != nil && l.Avoid(dev) {
			if dev, err = l.addFresh(ctl); err != nil {
				return "", err
			}
		}
		err = l.configure(dev, backing, readOnly)
		if errors.Is(err, unix.EBUSY) {
			time.Sleep(time.Duration(attempt+1) * time.Millisecond)
			continue
		}
		if err != nil {
			return "", err
		}
		l.index.add(file, dev)
		return dev, nil
	}
	return "", fmt.Errorf("attach %s: no free loop device after retries", file)
}

// addFresh adds a loop device with a number above every existing one
// (LOOP_CTL_ADD) that Avoid does not name, and waits for its node.
func (l *Loop) addFresh(ctl int) (string, error) {
	matches, _ := filepath.Glob(filepath.Join(l.SysfsRoot, "block", "loop*"))
	next := 0
	for _, m := range matches {
		if n, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(m), "loop")); err == nil && n >= next {
			next = n + 1
		}
	}
	for tries := 0; tries < 64; tries, next = tries+1, next+1 {
		dev := filepath.Join(l.DevRoot, "loop"+strconv.Itoa(next))
		if l.Avoid(dev) {
			continue
		}
		if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(ctl), unix.LOOP_CTL_ADD, uintptr(next)); errno != 0 && errno != unix.EEXIST {
			return "", fmt.Errorf("add loop device %d: %w", next, errno)
		}
		for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			if _, err := os.Stat(dev); err == nil {
				return dev, nil
			}
			if time.Now().After(deadline) {
				return "", fmt.Errorf("add loop device %d: %s did not appear", next, dev)
			}
		}
	}
	return "", errors.New("no loop device number left to add")
}

func openMode(readOnly bool) int {
	if readOnly {
		return unix.O_RDONLY
	}
	return unix.O_RDWR
}

func (l *Loop) configure(dev string, backing int, readOnly bool) error {
	fd, err := unix.Open(dev, openMode(readOnly)|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	cfg := unix.LoopConfig{Fd: uint32(backing), Size: l.BlockSize}
	cfg.Info.Flags = unix.LO_FLAGS_DIRECT_IO
	if readOnly {
		cfg.Info.Flags |= unix.LO_FLAGS_READ_ONLY
	}
	if err := unix.IoctlLoopConfigure(fd, &cfg); err != nil {
		return fmt.Errorf("configure %s: %w", dev, err)
	}
	return nil
}

// ErrLoopBusy: a loop device stays attached because something holds it open.
var ErrLoopBusy = errors.New("loop device busy")

// Detach releases the loop devices backed by file that Known names (all of
// them, when the last look was a full scan), and waits until the kernel
// has let them go: LOOP_CLR_FD only marks a device to be cleared at its
// last close, which can come a moment later.
func (l *Loop) Detach(file string) error {
	return l.detach(file, "")
}

// DetachDevice releases dev if, and only if, it is a loop device backed by
// file; anything else is left alone.
func (l *Loop) DetachDevice(file, dev string) error {
	return l.detach(file, dev)
}

func (l *Loop) detach(file, only string) error {
	// The devices Known names (or only, while it is backed by file) are
	// released, then watched until the kernel lets them go. (The node's
	// unstage has just refreshed what is known with a full scan,
	// pool.FullAttacher, under the volume's lock.)
	remaining := func() ([]Device, error) {
		if only != "" {
			var st unix.Stat_t
			if err := unix.Stat(file, &st); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return nil, nil
				}
				return nil, fmt.Errorf("stat %s: %w", file, err)
			}
			if ro, same, err := sameBacking(only, st); err == nil && same {
				return []Device{{Path: only, ReadOnly: ro}}, nil
			}
			return nil, nil // unbound, gone, or another file's
		}
		devs, err := l.Known(file)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return devs, err
	}
	devs, err := remaining()
	if err != nil {
		return err
	}
	for _, d := range devs {
		if l.beforeClear != nil {
			l.beforeClear(d.Path)
		}
		if err := clearDevice(d.Path, file); err != nil {
			return err
		}
	}
	for deadline := time.Now().Add(5 * time.Second); len(devs) > 0; {
		if devs, err = remaining(); err != nil || len(devs) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("detach %s from %s: %w: still attached after 5s (open elsewhere?)", devs[0].Path, file, ErrLoopBusy)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// clearDevice releases dev if it is backed by file: it asks which file
// backs it and clears it through one descriptor. A device freed since it
// was found and bound to another file meanwhile is that file's now, and
// is left alone; while the descriptor is open the device cannot be freed
// and bound again (LOOP_CLR_FD of an open device only marks it to go at
// its last close).
func clearDevice(dev, file string) error {
	var st unix.Stat_t
	if err := unix.Stat(file, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", file, err)
	}
	fd, err := unix.Open(dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil // the device node went: nothing bound there
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", dev, err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlLoopGetStatus64(fd)
	if errors.Is(err, unix.ENXIO) {
		return nil // freed meanwhile
	}
	if err != nil {
		return fmt.Errorf("status of %s: %w", dev, err)
	}
	if !backs(info, st) {
		return nil // another file's now
	}
	if err := unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("detach %s from %s: %w", dev, file, err)
	}
	return nil
}

// Refresh makes the loop devices attached to file pick up its new size.
func (l *Loop) Refresh(file string) error {
	devs, err := l.FindAll(file)
	if err != nil {
		return err
	}
	for _, d := range devs {
		fd, err := unix.Open(d.Path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s: %w", d.Path, err)
		}
		err = unix.IoctlSetInt(fd, unix.LOOP_SET_CAPACITY, 0)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("refresh capacity of %s: %w", d.Path, err)
		}
	}
	return nil
}
