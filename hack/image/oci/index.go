package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Index builds one image per spec (each with its own Arch) and an OCI
// image index of them, one entry per platform (linux/<arch>), in the
// order given.
func Index(specs []Spec) (v1.ImageIndex, error) {
	var adds []mutate.IndexAddendum
	for _, s := range specs {
		img, err := Image(s)
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", s.Arch, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			return nil, err
		}
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Platform:  &v1.Platform{OS: cfg.OS, Architecture: cfg.Architecture},
		}})
	}
	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...), nil
}

// WriteLayout writes idx as an OCI image layout in one tarball at path
// (oci-layout, index.json, blobs/sha256/...): index.json names idx with
// ref (org.opencontainers.image.ref.name: its tag; io.containerd.image.name:
// ref itself, which `ctr images import` takes), every entry dated mtime,
// blobs sorted, so the same index always gives the same bytes.
func WriteLayout(idx v1.ImageIndex, ref string, mtime time.Time, path string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image tag %q: %w", ref, err)
	}
	blobs := map[string][]byte{}
	put := func(d v1.Hash, b []byte) { blobs[d.Hex] = b }
	raw, err := idx.RawManifest()
	if err != nil {
		return err
	}
	digest, err := idx.Digest()
	if err != nil {
		return err
	}
	mt, err := idx.MediaType()
	if err != nil {
		return err
	}
	put(digest, raw)
	im, err := idx.IndexManifest()
	if err != nil {
		return err
	}
	for _, d := range im.Manifests {
		img, err := idx.Image(d.Digest)
		if err != nil {
			return err
		}
		m, err := img.RawManifest()
		if err != nil {
			return err
		}
		put(d.Digest, m)
		c, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		cd, err := img.ConfigName()
		if err != nil {
			return err
		}
		put(cd, c)
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			ld, err := l.Digest()
			if err != nil {
				return err
			}
			rc, err := l.Compressed()
			if err != nil {
				return err
			}
			b, err := io.ReadAll(rc)
			rc.Close()
			if err != nil {
				return err
			}
			put(ld, b)
		}
	}
	top := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{{
		MediaType: mt, Digest: digest, Size: int64(len(raw)),
		Annotations: map[string]string{"org.opencontainers.image.ref.name": tag.TagStr(), "io.containerd.image.name": tag.Name()},
	}}}
	indexJSON, err := json.Marshal(top)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime = mtime.UTC().Truncate(time.Second)
	file := func(n string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: 0o644, Size: int64(len(b)), ModTime: mtime}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	dir := func(n string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755, ModTime: mtime})
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	if err := file("index.json", indexJSON); err != nil {
		return err
	}
	if err := dir("blobs/"); err != nil {
		return err
	}
	if err := dir("blobs/sha256/"); err != nil {
		return err
	}
	names := make([]string, 0, len(blobs))
	for h := range blobs {
		names = append(names, h)
	}
	sort.Strings(names)
	for _, h := range names {
		if err := file("blobs/sha256/"+h, blobs[h]); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// ReadLayout reads back the image index a WriteLayout tarball names.
// The returned index reads its blobs from a temporary directory, which
// cleanup removes.
func ReadLayout(path string) (idx v1.ImageIndex, cleanup func(), err error) {
	dir, err := os.MkdirTemp("", "plinth-oci-layout-")
	if err != nil {
		return nil, nil, err
	}
	cleanup = func() { os.RemoveAll(dir) }
	defer func() {
		if err != nil {
			cleanup()
		}
	}()
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", path, err)
		}
		n := filepath.Clean(h.Name)
		if strings.HasPrefix(n, "..") || filepath.IsAbs(n) {
			return nil, nil, fmt.Errorf("%s: bad entry %q", path, h.Name)
		}
		dst := filepath.Join(dir, n)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(dst, 0o755); err != nil {
				return nil, nil, err
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
				return nil, nil, err
			}
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, nil, err
			}
			if err := os.WriteFile(dst, b, 0o644); err != nil {
				return nil, nil, err
			}
		}
	}
	top, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	im, err := top.IndexManifest()
	if err != nil {
		return nil, nil, err
	}
	if len(im.Manifests) != 1 {
		return nil, nil, fmt.Errorf("%s: index.json names %d manifests, want 1", path, len(im.Manifests))
	}
	idx, err = top.ImageIndex(im.Manifests[0].Digest)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return idx, cleanup, nil
}

// PushIndex pushes idx to ref in a registry, with the credentials of the
// Docker configuration unless opts say otherwise.
func PushIndex(ctx context.Context, idx v1.ImageIndex, ref string, opts ...remote.Option) error {
	r, err := name.ParseReference(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	opts = append([]remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}, opts...)
	if err := remote.WriteIndex(r, idx, opts...); err != nil {
		return fmt.Errorf("push %s: %w", r, err)
	}
	return nil
}
