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

	"github.com/plinth-dev/plinth/hack/image/oci"
)

func TestShell(t *testing.T) {
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	files, err := Shell()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := oci.LayerTar(files)
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
		"bin/busybox":  func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Mode == 0o755 },
		"bin/sh":       func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink && h.Linkname == "../usr/bin/bash" },
		"usr/bin/bash": func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg && h.Mode == 0o755 },
		"lib64":        func(h *tar.Header) bool { return h.Typeflag == tar.TypeSymlink },
		"bin/dd":       func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg },
		"tmp/":         func(h *tar.Header) bool { return h.Typeflag == tar.TypeDir && h.Mode == 0o1777 },
		"etc/passwd":   func(h *tar.Header) bool { return h.Typeflag == tar.TypeReg },
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

// The shell image's own sh runs a pipeline into dd with oflag=nocache, as the
// storage suite's block specs do (`sh -c "... | dd of=DEV oflag=nocache ..."`),
// and `let`, as its volumeIO specs do:
// the layer unpacked into a directory and run there with chroot.
func TestShellPipelineReachesDDStandIn(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: chroot")
	}
	if _, err := exec.LookPath("busybox"); err != nil {
		t.Skip("busybox-static is not installed")
	}
	files, err := Shell()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := oci.LayerTar(files)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	tr := tar.NewReader(bytes.NewReader(layer))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, h.Name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode))
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				err = os.WriteFile(p, b, os.FileMode(h.Mode))
			}
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command("chroot", root, "/bin/sh", "-c",
		"echo hello | dd of=/tmp/out oflag=nocache bs=6 count=1 && cat /tmp/out && i=0 && let i+=1 && echo i=$i").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hello") || !strings.Contains(string(out), "i=1") {
		t.Fatalf("sh -c with dd oflag=nocache in the image: %v\n%s", err, out)
	}
}
