// Package images assembles plinth's OCI images without a Docker engine:
// a static plinth binary and, for the node, the filesystem tools it runs
// (with their shared libraries) taken from this Debian machine, the same
// set the Dockerfile installs. Images are written as tarballs that
// `ctr images import` takes.
package images

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// NodeTools are the programs plinth node runs (mkfs, fsck and grow tools
// for ext4, xfs and btrfs; mount and blkid for k8s.io/mount-utils; blkid,
// wipefs and blkdiscard for the disks it claims).
var NodeTools = []string{
	"mount", "umount", "blkid", "findmnt", "fsck", "e2fsck", "mkfs.ext4", "mke2fs", "resize2fs", "dumpe2fs",
	"mkfs.xfs", "xfs_growfs", "xfs_repair", "xfs_io", "mkfs.btrfs", "btrfs", "wipefs", "blkdiscard",
}

// File is one entry of a layer.
type File struct {
	Path    string // absolute, in the image
	Mode    int64
	Content []byte
	Link    string // a symlink's target, when set
	Dir     bool   // a directory (with Mode; parents are made 0755)
}

// Spec describes an image.
type Spec struct {
	Ref        string
	Entrypoint []string
	Cmd        []string
	Files      []File
	Labels     map[string]string
	User       string
}

// Write writes spec as a docker-archive tarball at path.
func Write(spec Spec, path string) error {
	layerTar, err := tarOf(spec.Files)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Labels = spec.Labels
	cfg.Config.User = spec.User
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		return err
	}
	ref, err := name.NewTag(spec.Ref)
	if err != nil {
		return err
	}
	return tarball.WriteToFile(path, ref, img)
}

func tarOf(files []File) ([]byte, error) {
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var addDir func(d string) error
	addDir = func(d string) error {
		if d == "/" || d == "." || dirs[d] {
			return nil
		}
		if err := addDir(filepath.Dir(d)); err != nil {
			return err
		}
		dirs[d] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755})
	}
	seen := map[string]bool{}
	for _, f := range files {
		if seen[f.Path] {
			continue
		}
		seen[f.Path] = true
		if err := addDir(filepath.Dir(f.Path)); err != nil {
			return nil, err
		}
		h := &tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode}
		if f.Dir {
			if dirs[f.Path] {
				continue
			}
			dirs[f.Path] = true
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			if err := tw.WriteHeader(h); err != nil {
				return nil, err
			}
			continue
		}
		if f.Link != "" {
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		} else {
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Content))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if f.Link == "" {
			if _, err := tw.Write(f.Content); err != nil {
				return nil, err
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Binary is a file from this machine at the same path in the image.
func Binary(hostPath, imagePath string) (File, error) {
	b, err := os.ReadFile(hostPath)
	if err != nil {
		return File{}, err
	}
	return File{Path: imagePath, Mode: 0o755, Content: b}, nil
}

var lddLine = regexp.MustCompile(`(/[^ ]+) \(0x`)

// HostTools returns the named programs of this machine with every shared
// library they load (found with ldd), at their own paths, and the merged-/usr
// links Debian has (/bin, /sbin, /lib, /lib64 into /usr).
func HostTools(names []string) ([]File, error) {
	files := []File{
		{Path: "/bin", Link: "usr/bin"}, {Path: "/sbin", Link: "usr/sbin"},
		{Path: "/lib", Link: "usr/lib"}, {Path: "/lib64", Link: "usr/lib64"},
		{Path: "/etc/fstab", Mode: 0o644},
		{Path: "/etc/passwd", Mode: 0o644, Content: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/nonexistent:/sbin/nologin\n")},
		{Path: "/etc/group", Mode: 0o644, Content: []byte("root:x:0:\nnonroot:x:65532:\n")},
	}
	if b, err := os.ReadFile("/etc/mke2fs.conf"); err == nil {
		files = append(files, File{Path: "/etc/mke2fs.conf", Mode: 0o644, Content: b})
	}
	need := map[string]bool{}
	for _, n := range names {
		p, err := exec.LookPath(n)
		if err != nil {
			return nil, fmt.Errorf("%s (install e2fsprogs, xfsprogs, btrfs-progs, util-linux): %w", n, err)
		}
		need[p] = true
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", p, err)
		}
		for _, m := range lddLine.FindAllStringSubmatch(string(out), -1) {
			need[m[1]] = true
		}
	}
	for p := range need {
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			return nil, err
		}
		f, err := Binary(real, real)
		if err != nil {
			return nil, err
		}
		files = append(files, f)
		// The name ldd or PATH gave, under /usr, pointing at the real file.
		alias := p
		for _, top := range []string{"/bin/", "/sbin/", "/lib/", "/lib64/"} {
			if strings.HasPrefix(alias, top) {
				alias = "/usr" + alias
			}
		}
		if alias != real {
			rel, err := filepath.Rel(filepath.Dir(alias), real)
			if err != nil {
				return nil, err
			}
			files = append(files, File{Path: alias, Link: rel})
		}
	}
	return files, nil
}

// busyboxDD stands in for dd: Debian 12's busybox (1.35) has no oflag=nocache, which the storage
// suite's block specs write with; conv=fsync also puts the data on the device before dd returns.
const busyboxDD = `#!/bin/busybox sh
n=0
for a in "$@"; do
	[ $n = 0 ] && set --
	n=1
	case $a in
	oflag=nocache) set -- "$@" conv=fsync ;;
	*) set -- "$@" "$a" ;;
	esac
done
exec /bin/busybox dd "$@"
`

// Shell is a small userland for test images: this machine's static busybox
// (Debian's busybox-static) at /bin/busybox with a link per applet in /bin,
// Debian's bash as /bin/sh (with the libraries it loads), /tmp, and the users
// root and nobody. The shell is not busybox's: busybox's shell runs its own
// applets before anything in PATH, so `sh -c "... | dd oflag=nocache"` (the
// storage suite's block writes) would never reach the dd stand-in. Nor dash:
// the suite's scripts use `let`.
func Shell() ([]File, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, fmt.Errorf("busybox (install busybox-static): %w", err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	f, err := Binary(bb, "/bin/busybox")
	if err != nil {
		return nil, err
	}
	files := []File{f,
		{Path: "/bin/dd", Mode: 0o755, Content: []byte(busyboxDD)},
		{Path: "/tmp", Mode: 0o1777, Dir: true},
		{Path: "/etc/passwd", Mode: 0o644, Content: []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")},
		{Path: "/etc/group", Mode: 0o644, Content: []byte("root:x:0:\nnogroup:x:65534:\n")},
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && a != "dd" && a != "sh" {
			files = append(files, File{Path: "/bin/" + a, Link: "busybox"})
		}
	}
	shell, err := HostTools([]string{"bash"})
	if err != nil {
		return nil, err
	}
	for _, f := range shell {
		// bash and its libraries under /usr, and the /lib, /lib64 links its
		// loader path goes through; /bin stays the busybox directory.
		if f.Path == "/lib" || f.Path == "/lib64" || strings.HasPrefix(f.Path, "/usr/") {
			files = append(files, f)
		}
	}
	p, err := exec.LookPath("bash")
	if err != nil {
		return nil, err
	}
	real, err := filepath.EvalSymlinks(p)
	if err != nil {
		return nil, err
	}
	return append(files, File{Path: "/bin/sh", Link: ".." + real}), nil
}
