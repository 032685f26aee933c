package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"path"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/hack/image/debian"
	"github.com/plinth-dev/plinth/hack/image/oci"
)

func TestRelLink(t *testing.T) {
	for _, c := range []struct{ at, abs, want string }{
		{"/usr/lib/x86_64-linux-gnu/libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", "libz.so.1.2.13"},
		{"/usr/lib64/ld-linux-x86-64.so.2", "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"},
		{"/usr/sbin/mkfs.ext4", "/usr/sbin/mke2fs", "mke2fs"},
		{"/bin", "/usr/bin", "usr/bin"},
	} {
		if got := relLink(c.at, c.abs); got != c.want {
			t.Errorf("relLink(%s, %s) = %s, want %s", c.at, c.abs, got, c.want)
		}
	}
	if merged("/lib64/ld-linux-x86-64.so.2") != "/usr/lib64/ld-linux-x86-64.so.2" || merged("/libexec/x") != "/libexec/x" {
		t.Error("merged")
	}
}

// image builds the image's layer for arch from the lock (fetching into
// the default cache) with a stand-in plinth, and returns its digest and
// its files by path.
func image(t *testing.T, arch string) (string, map[string]*tar.Header, map[string][]byte, []debian.Locked) {
	t.Helper()
	lock, err := debian.ReadLock("../debian.lock")
	if err != nil {
		t.Fatal(err)
	}
	cache, err := debian.DefaultCache()
	if err != nil {
		t.Fatal(err)
	}
	pkgs := lock.For(arch)
	files, err := Build(context.Background(), Config{Arch: arch, Packages: pkgs, Tools: oci.NodeTools, Mirror: debian.Mirror, Cache: cache})
	if err != nil {
		t.Fatal(err)
	}
	img, err := oci.Image(oci.Spec{Ref: "example.com/plinth:test", Arch: arch, Created: time.Unix(1700000000, 0), Files: files})
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %v, %d", err, len(layers))
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	hdrs, content := map[string]*tar.Header{}, map[string][]byte{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := path.Clean("/" + h.Name)
		hdrs[p] = h
		if h.Typeflag == tar.TypeReg {
			content[p], _ = io.ReadAll(tr)
		}
	}
	return d.String(), hdrs, content, pkgs
}

// Every ELF file of the image (each architecture's) is for that
// architecture, and its program interpreter and every library it needs
// (DT_NEEDED) lie in the image's own filesystem, where the dynamic linker
// looks; every tool plinth node runs is there, and each pinned package's
// copyright file. Fetches the pinned packages (cached in
// ~/.cache/plinth/debs).
func TestImageHasWhatItsProgramsNeed(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches Debian packages")
	}
	for _, arch := range []string{"amd64", "arm64"} {
		t.Run(arch, func(t *testing.T) {
			_, hdrs, content, pkgs := image(t, arch)
			lookup := func(p string) (string, bool, bool) {
				h, ok := hdrs[p]
				if !ok {
					for q := range hdrs {
						if strings.HasPrefix(q, p+"/") {
							return "", false, true
						}
					}
					return "", false, false
				}
				return h.Linkname, h.Typeflag == tar.TypeSymlink, true
			}
			dirs := []string{"/lib/" + Arches[arch].Triplet, "/usr/lib/" + Arches[arch].Triplet, "/lib", "/usr/lib"}
			elves := 0
			for p, b := range content {
				if !bytes.HasPrefix(b, []byte(elf.ELFMAG)) {
					continue
				}
				elves++
				f, err := elf.NewFile(bytes.NewReader(b))
				if err != nil {
					t.Fatalf("%s: %v", p, err)
				}
				if f.Machine != Arches[arch].Machine {
					t.Errorf("%s: %s, want %s", p, f.Machine, Arches[arch].Machine)
				}
				for _, prog := range f.Progs {
					if prog.Type == elf.PT_INTERP {
						b := make([]byte, prog.Filesz)
						if _, err := prog.ReadAt(b, 0); err != nil {
							t.Fatal(err)
						}
						interp := strings.TrimRight(string(b), "\x00")
						if _, err := Resolve(lookup, interp); err != nil {
							t.Errorf("%s: interpreter %s: %v", p, interp, err)
						}
					}
				}
				libs, err := f.ImportedLibraries()
				if err != nil {
					t.Fatal(err)
				}
				for _, lib := range libs {
					found := false
					for _, d := range dirs {
						if r, err := Resolve(lookup, path.Join(d, lib)); err == nil && hdrs[r].Typeflag == tar.TypeReg {
							found = true
							break
						}
					}
					if !found {
						t.Errorf("%s needs %s, which the image lacks", p, lib)
					}
				}
				f.Close()
			}
			if elves < len(oci.NodeTools)/2 {
				t.Errorf("only %d ELF files", elves)
			}
			for _, tool := range oci.NodeTools {
				if _, err := Resolve(lookup, "/sbin/"+tool); err != nil {
					if _, err := Resolve(lookup, "/bin/"+tool); err != nil {
						t.Errorf("%s is not in the image", tool)
					}
				}
			}
			for _, p := range pkgs {
				if _, ok := content["/usr/share/doc/"+p.Name+"/copyright"]; !ok {
					t.Errorf("no copyright file of %s", p.Name)
				}
			}
			for p, h := range hdrs {
				if !h.ModTime.Equal(time.Unix(1700000000, 0)) || h.Uid != 0 || h.Gid != 0 {
					t.Errorf("%s: dated %s, owned %d:%d", p, h.ModTime, h.Uid, h.Gid)
				}
			}
		})
	}
}

// Two builds from one lock give one digest.
func TestImageReproducible(t *testing.T) {
	if testing.Short() {
		t.Skip("fetches Debian packages")
	}
	a, _, _, _ := image(t, "arm64")
	b, _, _, _ := image(t, "arm64")
	if a != b {
		t.Errorf("two builds: %s and %s", a, b)
	}
}
