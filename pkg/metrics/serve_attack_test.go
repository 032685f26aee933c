package metrics

import (
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func attackIno(t *testing.T, p string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(p, &st); err != nil {
		t.Fatalf("lstat %s: %v", p, err)
	}
	return st.Ino
}

// serveOnce runs ServeUnix until it fails or 300 ms passed; it returns
// ServeUnix's error (nil when it served and was stopped).
func serveOnce(t *testing.T, path string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	return New().ServeUnix(ctx, path)
}

// --health-socket pointed at something plinth does not own: a regular
// file, a directory, a symlink (to a file, to a live socket, dangling),
// another process's live socket (the CSI socket, the kubelet's). Each is
// refused, and left exactly as it was: same inode, same content, the live
// server still answers.
func TestAttackHealthSocketNeverClobbers(t *testing.T) {
	tmp := t.TempDir()
	file := filepath.Join(tmp, "precious")
	os.WriteFile(file, []byte("data"), 0o600)
	dir := filepath.Join(tmp, "adir")
	os.MkdirAll(filepath.Join(dir, "inner"), 0o750)
	live := filepath.Join(tmp, "csi.sock")
	ll, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer ll.Close()
	go func() {
		for {
			c, err := ll.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	linkFile := filepath.Join(tmp, "link-file")
	os.Symlink(file, linkFile)
	linkLive := filepath.Join(tmp, "link-live")
	os.Symlink(live, linkLive)
	dangling := filepath.Join(tmp, "dangling")
	os.Symlink(filepath.Join(tmp, "nowhere", "x.sock"), dangling)

	for name, p := range map[string]string{
		"regular file": file, "directory": dir, "live socket": live,
		"symlink to a file": linkFile, "symlink to a live socket": linkLive, "dangling symlink": dangling,
		"directory, trailing slash": dir + "/",
	} {
		before := attackIno(t, p)
		if err := serveOnce(t, p); err == nil {
			t.Errorf("%s: served on %s", name, p)
		}
		if after := attackIno(t, p); after != before {
			t.Errorf("%s: %s replaced (inode %d -> %d)", name, p, before, after)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "data" {
		t.Errorf("file content changed: %q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "inner")); err != nil {
		t.Errorf("directory content changed: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(tmp, "nowhere")); err == nil {
		t.Errorf("the dangling symlink's target directory was created")
	}
	c, err := net.Dial("unix", live)
	if err != nil {
		t.Fatalf("the live socket's server no longer answers: %v", err)
	}
	c.Close()
}

// The health socket goes away with the server, however it stops, and a
// waiting ServeWhenFree leaves nothing listening: run many times.
func TestAttackServeUnixLeavesNothing(t *testing.T) {
	for i := 0; i < 20; i++ {
		p := filepath.Join(t.TempDir(), "h", "health.sock")
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- New().ServeUnix(ctx, p) }()
		time.Sleep(time.Duration(i%5) * time.Millisecond)
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.Errorf("run %d: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("run %d: ServeUnix did not return 10 s after cancel", i)
		}
		if _, err := os.Lstat(p); err == nil {
			t.Errorf("run %d: health socket %s left behind", i, p)
		}
	}
}

// A health socket in a directory others can write: anyone who can write
// there can move plinth's socket aside and answer the kubelet's exec
// probes with a server of their own (a dead plinth stays "live" and
// "ready"), or swap the path for a symlink between listen and chmod (plinth,
// root, then chmods the symlink's target). plinth refuses such a root
// (privateDir); its health socket should get the same care.
func TestAttackHealthSocketInDirWritableByOthers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "shared")
	os.MkdirAll(dir, 0o750)
	os.Chmod(dir, 0o777)
	p := filepath.Join(dir, "health.sock")
	if err := serveOnce(t, p); err == nil {
		t.Errorf("served the health socket in %s (mode 0777): anyone can replace it", dir)
	}
}
