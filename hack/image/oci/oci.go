package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// NodeTools are the programs plinth node runs (mkfs, fsck and grow tools
// for ext4, xfs and btrfs; mount and blkid for k8s.io/mount-utils; blkid,
// wipefs and blkdiscard for the disks it claims).
var NodeTools = []string{
	"mount", "umount", "blkid", "findmnt", "fsck", "e2fsck", "fsck.ext4", "mkfs.ext4", "mke2fs", "resize2fs", "dumpe2fs",
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
	// Arch is the image's architecture (GOARCH: amd64, arm64); amd64 when
	// empty. The OS is linux.
	Arch string
	// Created dates the image and every file of its layer (the commit's
	// time, SOURCE_DATE_EPOCH); the Unix epoch when zero. Two builds of
	// one Spec give one digest.
	Created time.Time
}

// Image builds spec's image: one layer of its files, with OCI media types.
func Image(spec Spec) (v1.Image, error) {
	created := spec.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	layerTar, err := LayerTarAt(spec.Files, created)
	if err != nil {
		return nil, err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, err
	}
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: created.UTC()}, CreatedBy: "plinth hack/image"}})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = spec.Arch, "linux"
	if cfg.Architecture == "" {
		cfg.Architecture = "amd64"
	}
	cfg.Created = v1.Time{Time: created.UTC()}
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	cfg.Config.Labels = spec.Labels
	cfg.Config.User = spec.User
	return mutate.ConfigFile(img, cfg)
}

// Write writes spec as a docker-archive tarball at path (what `ctr images
// import` and `docker load` take), tagged spec.Ref and each of more.
func Write(spec Spec, path string, more ...string) error {
	img, err := Image(spec)
	if err != nil {
		return err
	}
	refs := map[name.Reference]v1.Image{}
	for _, r := range append([]string{spec.Ref}, more...) {
		tag, err := name.NewTag(r)
		if err != nil {
			return fmt.Errorf("image tag %q: %w", r, err)
		}
		refs[tag] = img
	}
	return tarball.MultiRefWriteToFile(path, refs)
}

// Push pushes spec's image to its Ref in a registry, with the credentials
// of the Docker configuration (~/.docker/config.json) unless opts say
// otherwise.
func Push(ctx context.Context, spec Spec, opts ...remote.Option) error {
	img, err := Image(spec)
	if err != nil {
		return err
	}
	ref, err := name.ParseReference(spec.Ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", spec.Ref, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.Write(ref, img, opts...); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

// LayerTar is LayerTarAt with every file dated the Unix epoch.
func LayerTar(files []File) ([]byte, error) { return LayerTarAt(files, time.Unix(0, 0)) }

// LayerTarAt is files as one layer (a tar stream), sorted by path, with the
// parent directories each needs, every entry dated mtime and owned by root.
func LayerTarAt(files []File, mtime time.Time) ([]byte, error) {
	files = append([]File(nil), files...)
	mtime = mtime.UTC().Truncate(time.Second)
	sort.SliceStable(files, func(i, j int) bool { return files[i].Path < files[j].Path })
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
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: mtime})
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
		h := &tar.Header{Name: strings.TrimPrefix(f.Path, "/"), Mode: f.Mode, ModTime: mtime}
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
