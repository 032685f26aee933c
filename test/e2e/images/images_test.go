package images

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestShell(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	files, err := Shell()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := tarOf(files)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*tar.Header{}
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h
	}
	for name, want := range map[string]func(*tar.Header) bool{
		"bin/busybox": func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Mode == 0o755 },
		"bin/sh":      func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink && h.Linkname == "busybox" },
		"bin/dd":      func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg },
		"tmp/":        func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o1777 },
		"etc/passwd":  func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg },
	} {
		if h, ok := got[name]; !ok || !want(h) {
			t.Errorf("%s: got %+v", name, h)
		}
	}
}

// The dd stand-in turns oflag=nocache (which busybox 1.35 lacks) into conv=fsync and passes
// everything else on.
func TestBusyboxDD(t *testing.T) {
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	dir := t.TempDir()
	dd := filepath.Join(dir, "dd")
	if err := os.WriteFile(dd, []byte(busyboxDD), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "out")
	cmd := exec.Command(dd, "of="+out, "oflag=nocache", "bs=5", "count=1")
	cmd.Stdin = strings.NewReader("hello world")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if b, err := os.ReadFile(out); err != nil || string(b) != "hello" {
		t.Fatalf("got %q, %v", b, err)
	}
}
