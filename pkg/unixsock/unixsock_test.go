package unixsock

import (
	"errors"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func dial(path string) error {
	c, err := net.Dial("unix", path)
	if err == nil {
		c.Close()
	}
	return err
}

func ino(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

// A socket a live server answers on is refused and left alone; the first
// server still answers after the refused one gave up.
func TestLiveSocketRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	first, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	go func() {
		for {
			c, err := first.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	before := ino(t, path)
	if _, err := Listen(path, 0o600); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen on a live socket: %v, want ErrInUse", err)
	}
	if ino(t, path) != before {
		t.Fatal("the live socket was replaced")
	}
	if err := dial(path); err != nil {
		t.Fatalf("first server unreachable after the refused Listen: %v", err)
	}
}

// A socket nobody answers on (its server died) is replaced.
func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	dead, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	dead.SetUnlinkOnClose(false)
	dead.Close()
	l, err := Listen(path, 0o640)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer l.Close()
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", fi.Mode().Perm())
	}
	if err := dial(path); err != nil {
		t.Fatal(err)
	}
}

// Anything else at the path is refused and left alone.
func TestNotASocketRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "precious")
	os.WriteFile(path, []byte("data"), 0o600)
	if _, err := Listen(path, 0o600); err == nil {
		t.Fatal("listened over a regular file")
	}
	if b, _ := os.ReadFile(path); string(b) != "data" {
		t.Fatalf("file changed: %q", b)
	}
}

// Close removes the socket only while the path is still this listener's:
// a socket another process put there since is left alone.
func TestCloseRemovesOnlyItsOwn(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("own socket left after Close: %v", err)
	}

	l, err = Listen(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(path) // someone removed it and served their own there
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	l.Close()
	if err := dial(path); err != nil {
		t.Fatalf("Close removed another server's socket: %v", err)
	}
}
