package unixsock

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// ErrInUse is returned by Listen when a live server answers on the path.
var ErrInUse = errors.New("a live server answers on the socket")

// DialTimeout bounds the dial that tells a live socket from a stale one.
const DialTimeout = time.Second

// Listener is a unix socket listener whose Close removes its socket file
// only if the path still names the socket it created (same device and
// inode), so that it never deletes a socket another process made there.
type Listener struct {
	*net.UnixListener
	path     string
	dev, ino uint64
	once     sync.Once
}

// Listen creates path's directory (0750) if needed, removes a stale socket
// at path, and listens there with mode perm. Anything at path that is not
// a socket is refused and left alone; so is a socket that a server answers
// on (ErrInUse), or one whose state a dial cannot tell (any error but
// "connection refused").
func Listen(path string, perm os.FileMode) (*Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	if err := RemoveStale(path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// Close removes the file itself, and only if it is still ours; Go's
	// unlink-on-close would remove whatever is at the path.
	l.SetUnlinkOnClose(false)
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		l.Close()
		return nil, fmt.Errorf("stat %s after listen: %w", path, err)
	}
	ours := &Listener{UnixListener: l, path: path, dev: uint64(st.Dev), ino: st.Ino}
	if err := os.Chmod(path, perm); err != nil {
		ours.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	return ours, nil
}

// Close stops listening and removes the socket file if it is still the one
// this listener created.
func (l *Listener) Close() error {
	err := l.UnixListener.Close()
	l.once.Do(func() {
		if l.isOurs() {
			_ = os.Remove(l.path)
		}
	})
	return err
}

// Path is the socket's path.
func (l *Listener) Path() string { return l.path }

func (l *Listener) isOurs() bool {
	var st syscall.Stat_t
	if err := syscall.Lstat(l.path, &st); err != nil {
		return false
	}
	return st.Mode&syscall.S_IFMT == syscall.S_IFSOCK && uint64(st.Dev) == l.dev && st.Ino == l.ino
}

// RemoveStale removes the socket at path if nobody answers on it (nil
// when there is none); a server that answers is ErrInUse, and anything but
// a socket is refused.
func RemoveStale(path string) error {
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return fmt.Errorf("%s exists and is not a socket; refusing to remove it", path)
	}
	conn, err := net.DialTimeout("unix", path, DialTimeout)
	switch {
	case err == nil:
		conn.Close()
		return fmt.Errorf("%s: %w (is another plinth running?); refusing to replace it", path, ErrInUse)
	case errors.Is(err, syscall.ENOENT):
		return nil // gone meanwhile
	case !errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%s: cannot tell whether a server answers on it (%v); refusing to replace it", path, err)
	}
	// Nobody answers: stale. Remove it only if it is still the file that
	// was dialled (another process may have replaced it meanwhile).
	var again syscall.Stat_t
	if err := syscall.Lstat(path, &again); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", path, err)
	}
	if again.Dev != st.Dev || again.Ino != st.Ino {
		return fmt.Errorf("%s was replaced while it was checked; refusing to remove it", path)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	return nil
}
