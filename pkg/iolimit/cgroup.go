package iolimit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const (
	// findDepth bounds the search for a pod's cgroup: directories this
	// many levels below the hierarchy's root are the deepest looked at.
	findDepth = 8
	// podDepth bounds the cgroups below a pod's that get its rules and
	// are watched (cgroup v1): containers, and what they nest.
	podDepth = 4
)

// The cgroup v1 blk-throttle files, and the cgroup v2 one.
const (
	fileReadIOPS  = "blkio.throttle.read_iops_device"
	fileWriteIOPS = "blkio.throttle.write_iops_device"
	fileReadBPS   = "blkio.throttle.read_bps_device"
	fileWriteBPS  = "blkio.throttle.write_bps_device"
	fileIOMax     = "io.max"
)

// depthBelow is how many levels dir lies below top: 0 for top itself, -1
// when it is not at or below top.
func depthBelow(top, dir string) int {
	rel, err := filepath.Rel(top, dir)
	if err != nil || !filepath.IsLocal(rel) {
		return -1
	}
	if rel == "." {
		return 0
	}
	return strings.Count(rel, string(filepath.Separator)) + 1
}

// findPod walks base, to findDepth levels and never through a symlink,
// for the cgroup directory of the pod uid. It does not descend into any
// pod's directory, and stops at the first match.
func findPod(base, uid string) (string, error) {
	var found string
	err := filepath.WalkDir(base, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == base {
				return err
			}
			return nil // a cgroup removed while walking, or unreadable: not there
		}
		if !d.IsDir() { // files, and symlinks (WalkDir does not follow them)
			return nil
		}
		if path == base {
			return nil
		}
		if u, ok := podDirUID(d.Name()); ok {
			if u == uid {
				found = path
				return fs.SkipAll
			}
			return fs.SkipDir
		}
		if depthBelow(base, path) >= findDepth {
			return fs.SkipDir
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("look for the cgroup of pod %s under %s: %w", uid, base, err)
	}
	if found == "" {
		return "", fmt.Errorf("pod %s under %s: %w", uid, base, ErrPodNotFound)
	}
	found = filepath.Clean(found)
	if depthBelow(base, found) < 1 {
		return "", fmt.Errorf("cgroup of pod %s at %s, outside %s: %w", uid, found, base, ErrInvalid)
	}
	return found, nil
}

// isDir reports whether path is a directory itself, not a symlink to one.
func isDir(path string) (bool, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}

// tree writes cgroup files under base, relative to a descriptor of it:
// with openat2 no symlink is followed and nothing resolves outside base.
type tree struct {
	base string
	fd   int
}

func openTree(base string) (*tree, error) {
	fd, err := unix.Open(base, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", base, err)
	}
	return &tree{base: base, fd: fd}, nil
}

func (t *tree) close() { unix.Close(t.fd) }

// write writes line to the file name of the cgroup directory dir with one
// write(2). The file is opened write-only and never created: a missing
// file is an error (fs.ErrNotExist), not a new file. O_APPEND changes
// nothing for a cgroup file (the kernel reads each write as one command)
// and keeps every line in a regular file standing in for one in a test.
// O_NONBLOCK keeps a FIFO planted in the tree from blocking the open.
func (t *tree) write(dir, name, line string) error {
	path := filepath.Join(dir, name)
	rel, err := filepath.Rel(t.base, path)
	if err != nil || !filepath.IsLocal(rel) {
		return fmt.Errorf("write %s: outside %s: %w", path, t.base, ErrInvalid)
	}
	flags := unix.O_WRONLY | unix.O_APPEND | unix.O_NONBLOCK | unix.O_CLOEXEC | unix.O_NOCTTY
	fd, err := unix.Openat2(t.fd, rel, &unix.OpenHow{
		Flags:   uint64(flags),
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
	if errors.Is(err, unix.ENOSYS) {
		// No openat2 (before Linux 5.6, or filtered): the last component
		// at least is not followed; findPod and the walks follow none.
		fd, err = unix.Openat(t.fd, rel, flags|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("write %s: not a regular file: %w", path, ErrInvalid)
	}
	n, err := unix.Write(fd, []byte(line))
	if err == nil && n != len(line) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write %q to %s: %w", strings.TrimSpace(line), path, err)
	}
	return nil
}

// writeV1 sets the rules of set in the cgroup v1 directory dir, and
// removes those of the devices in clear.
func (t *tree) writeV1(dir string, set map[Device]Limits, clear []Device) error {
	for _, d := range sortedDevices(set) {
		l := set[d]
		if err := t.writeV1Rule(dir, d, l); err != nil {
			return err
		}
	}
	for _, d := range clear {
		if err := t.writeV1Rule(dir, d, Limits{}); err != nil && !errors.Is(err, unix.ENODEV) {
			return err // ENODEV: no such disk (any more), so no rule for it
		}
	}
	return nil
}

func (t *tree) writeV1Rule(dir string, d Device, l Limits) error {
	for _, r := range []struct {
		file string
		n    uint64
	}{
		{fileReadIOPS, v1Value(l.ReadIOPS, true)},
		{fileWriteIOPS, v1Value(l.WriteIOPS, true)},
		{fileReadBPS, v1Value(l.ReadBytesPerSecond, false)},
		{fileWriteBPS, v1Value(l.WriteBytesPerSecond, false)},
	} {
		if err := t.write(dir, r.file, fmt.Sprintf("%s %d\n", d, r.n)); err != nil {
			return err
		}
	}
	return nil
}

// writeV2 sets the limits of set in the io.max of the cgroup v2
// directory dir, and removes those of the devices in clear.
func (t *tree) writeV2(dir string, set map[Device]Limits, clear []Device) error {
	for _, d := range sortedDevices(set) {
		if err := t.write(dir, fileIOMax, v2Line(d, set[d])); err != nil {
			return err
		}
	}
	for _, d := range clear {
		if err := t.write(dir, fileIOMax, v2Line(d, Limits{})); err != nil && !errors.Is(err, unix.ENODEV) {
			return err
		}
	}
	return nil
}

func v2Line(d Device, l Limits) string {
	return fmt.Sprintf("%s riops=%s wiops=%s rbps=%s wbps=%s\n", d,
		v2Value(l.ReadIOPS), v2Value(l.WriteIOPS), v2Value(l.ReadBytesPerSecond), v2Value(l.WriteBytesPerSecond))
}
