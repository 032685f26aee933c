package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// LockFileName is the file in --root that the process using the root
// holds an exclusive flock on for as long as it runs.
const LockFileName = "plinth.lock"

// RootLock is the exclusive hold of one process on a --root (and the
// pool directories it serves, LockDir).
type RootLock struct {
	f *os.File
	// dirs are the locked directories themselves: a lock file can be
	// renamed away, a directory's inode stays what was locked.
	dirs []int
}

// privateDir refuses a directory that plinth's user does not own or that
// others may write: whoever can write there can put a symlink where an
// image or a record is read, or move plinth's records aside.
func privateDir(fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("is owned by uid %d, not plinth's (uid %d): plinth's records and images must be its own", st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("is writable by others (mode %04o): whoever can write there can replace plinth's records and images; chmod go-w it", fi.Mode().Perm())
	}
	return nil
}

// lockDir takes an exclusive, non-blocking flock of dir itself.
func lockDir(what, dir string) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s %s: %w", what, dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return -1, &rootBusyError{fmt.Sprintf("%s %s is in use by another plinth process: two processes on one directory would hand one volume's image to both", what, dir)}
		}
		return -1, fmt.Errorf("lock %s %s: %w", what, dir, err)
	}
	return fd, nil
}

// LockDir locks a pool directory for as long as the root's lock is held;
// a directory that does not exist yet (a pool below the root, made when
// it opens) is covered by the root's lock.
func (l *RootLock) LockDir(what, dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if err := privateDir(fi); err != nil {
		return fmt.Errorf("%s: %s %w", what, dir, err)
	}
	fd, err := lockDir(what, dir)
	if err != nil {
		return err
	}
	l.dirs = append(l.dirs, fd)
	return nil
}

// LockRoot takes the exclusive, non-blocking lock of root (creating root,
// 0750, and its lock file, 0600, if needed) so that no two plinth
// processes ever share one root's records. When another process holds it,
// LockRoot fails at once naming the root and, when the lock file says, the
// holder's pid; it then has changed nothing on disk. The kernel drops the
// lock when the process ends, however it ends.
func LockRoot(root string) (*RootLock, error) {
	if err := os.MkdirAll(root, 0o750); err != nil {
		return nil, fmt.Errorf("create root %s: %w", root, err)
	}
	fi, err := os.Stat(root)
	if err != nil {
		return nil, fmt.Errorf("root %s: %w", root, err)
	}
	if err := privateDir(fi); err != nil {
		return nil, fmt.Errorf("root %s %w", root, err)
	}
	path := filepath.Join(root, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file of root %s: %w", root, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := holderPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &rootBusyError{fmt.Sprintf("root %s is in use by another plinth process (%s holds %s); "+
				"two processes on one root would corrupt each other's records: stop it, or give this one another --root", root, holder, path)}
		}
		return nil, fmt.Errorf("lock root %s (%s): %w", root, path, err)
	}
	// The lock file can be renamed away under a running plinth; the
	// directory itself is locked too.
	dirFD, err := lockDir("root", root)
	if err != nil {
		f.Close()
		return nil, err
	}
	// Ours now: say who holds it, for the next one that tries.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &RootLock{f: f, dirs: []int{dirFD}}, nil
}

// ErrRootBusy is what LockRoot's and LockDir's errors are (errors.Is) when
// another process holds the root or a directory of it (its lock file may
// have been removed; a process that exits lets go of its locks in any
// order): the one case worth waiting on (WaitRoot).
var ErrRootBusy = errors.New("root in use by another plinth process")

type rootBusyError struct{ msg string }

func (e *rootBusyError) Error() string        { return e.msg }
func (e *rootBusyError) Is(target error) bool { return target == ErrRootBusy }

// WaitRoot calls claim until it returns the lock, fails for another
// reason than ErrRootBusy, ctx ends (nil, ctx's error) or wait has passed
// (the last error, saying how long it waited). With wait 0 it calls claim
// once. A pod that replaces another in a surge rolling update waits so for
// the old pod to stop: the kernel drops the old lock when that process
// ends, and a claim every 50 ms takes the root over within that much.
func WaitRoot(ctx context.Context, wait time.Duration, claim func() (*RootLock, error)) (*RootLock, error) {
	deadline := time.Now().Add(wait)
	start := time.Now()
	for logged := false; ; {
		l, err := claim()
		if err == nil || wait <= 0 || !errors.Is(err, ErrRootBusy) {
			if err == nil && logged {
				klog.InfoS("Took the root over", "waited", time.Since(start).Round(time.Millisecond).String())
			}
			return l, err
		}
		if !time.Now().Before(deadline) {
			return nil, fmt.Errorf("waited %s for the root (--wait-for-root): %w", wait, err)
		}
		if !logged {
			klog.InfoS("Waiting for the root: another process holds it (the pod this one replaces, until it stops)", "err", err.Error(), "wait", wait.String())
			logged = true
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// Unlock releases the lock (the file stays, holding the last pid).
func (l *RootLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	for _, fd := range l.dirs {
		unix.Close(fd)
	}
	l.dirs = nil
	err := l.f.Close()
	l.f = nil
	return err
}

// holderPID reads the pid the holder wrote into the lock file.
func holderPID(f *os.File) string {
	b, err := io.ReadAll(io.LimitReader(f, 32))
	if err != nil {
		return "a process"
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return "a process"
	}
	return "pid " + strconv.Itoa(pid)
}
