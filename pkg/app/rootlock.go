package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockFileName is the file in --root that the process using the root
// holds an exclusive flock on for as long as it runs.
const LockFileName = "plinth.lock"

// RootLock is the exclusive hold of one process on a --root.
type RootLock struct{ f *os.File }

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
	path := filepath.Join(root, LockFileName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file of root %s: %w", root, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := holderPID(f)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("root %s is in use by another plinth process (%s holds %s); "+
				"two processes on one root would corrupt each other's records: stop it, or give this one another --root", root, holder, path)
		}
		return nil, fmt.Errorf("lock root %s (%s): %w", root, path, err)
	}
	// Ours now: say who holds it, for the next one that tries.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &RootLock{f: f}, nil
}

// Unlock releases the lock (the file stays, holding the last pid).
func (l *RootLock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
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
