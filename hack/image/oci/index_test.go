package oci

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// An index of two architectures, written as a layout tarball twice, gives
// the same bytes; read back, it is the same index, and it pushes as one.
func TestIndexLayout(t *testing.T) {
	var specs []Spec
	for _, arch := range []string{"amd64", "arm64"} {
		s := testSpec(t, "example.com/plinth:v1.2.3")
		s.Arch, s.Created = arch, time.Unix(1700000000, 0)
		specs = append(specs, s)
	}
	idx, err := Index(specs)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	for _, p := range []string{a, b} {
		idx, err := Index(specs)
		if err != nil {
			t.Fatal(err)
		}
		if err := WriteLayout(idx, "example.com/plinth:v1.2.3", time.Unix(1700000000, 0), p); err != nil {
			t.Fatal(err)
		}
	}
	ab, _ := os.ReadFile(a)
	bb, _ := os.ReadFile(b)
	if !bytes.Equal(ab, bb) {
		t.Error("two layouts of one index differ")
	}
	back, cleanup, err := ReadLayout(a)
	if err != nil {
		t.Fatal(err)
	}
	defer cleanup()
	want, _ := idx.Digest()
	got, _ := back.Digest()
	if want != got {
		t.Errorf("read back %s, wrote %s", got, want)
	}
	im, err := back.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.Manifests[0].Platform.Architecture != "amd64" || im.Manifests[1].Platform.Architecture != "arm64" {
		t.Errorf("manifests %+v", im.Manifests)
	}
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	ref := u.Host + "/plinth/plinth:v1.2.3"
	if err := PushIndex(context.Background(), back, ref); err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref)
	pulled, err := remote.Index(r)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := pulled.Digest(); d != want {
		t.Errorf("registry has %s, pushed %s", d, want)
	}
}
