package oci

import (
	"context"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func testSpec(t *testing.T, ref string) Spec {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "plinth")
	if err := os.WriteFile(bin, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := Binary(bin, "/usr/bin/plinth")
	if err != nil {
		t.Fatal(err)
	}
	return Spec{Ref: ref, Entrypoint: []string{"/usr/bin/plinth"}, Files: []File{f, {Path: "/bin", Link: "usr/bin"}},
		Labels: map[string]string{"org.opencontainers.image.version": "v1.2.3"}}
}

// The tarball carries every tag, the entrypoint and the labels, and the
// files at their paths.
func TestWriteTagsAndConfig(t *testing.T) {
	out := filepath.Join(t.TempDir(), "img.tar")
	if err := Write(testSpec(t, "example.com/plinth:v1.2.3"), out, "example.com/plinth:dev"); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"example.com/plinth:v1.2.3", "example.com/plinth:dev"} {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s in the tarball: %v", ref, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Config.Entrypoint[0] != "/usr/bin/plinth" || cfg.Config.Labels["org.opencontainers.image.version"] != "v1.2.3" || cfg.OS != "linux" {
			t.Errorf("%s: config %+v", ref, cfg.Config)
		}
	}
	if err := Write(testSpec(t, "not a reference"), out); err == nil {
		t.Error("a bad reference was accepted")
	}
}

// Push writes the image to a registry (an in-process one here) under its
// reference, and what comes back is the same image.
func TestPushToRegistry(t *testing.T) {
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	u, err := url.Parse(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	spec := testSpec(t, u.Host+"/plinth/plinth:v1.2.3")
	if err := Push(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	want, err := Image(spec)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(spec.Ref)
	if err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pull back: %v", err)
	}
	wd, _ := want.Digest()
	gd, _ := got.Digest()
	if wd != gd {
		t.Errorf("pushed %s, registry has %s", wd, gd)
	}
}
