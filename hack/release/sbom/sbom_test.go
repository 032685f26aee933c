package sbom

import (
	"encoding/json"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/hack/image/debian"
)

// The document is SPDX 2.3 with every module of the build information (its
// version and checksum), the toolchain, and the Debian packages; IDs are
// unique and valid; the same input gives the same bytes.
func TestDocument(t *testing.T) {
	info := &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: "github.com/plinth-dev/plinth", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "golang.org/x/sys", Version: "v0.49.0", Sum: "h1:n1uQpMJtQGs2lcfdWXaWO/jVBUcJdNxuLRpO6/Gfqz8="},
			{Path: "example.com/old", Version: "v1.0.0", Replace: &debug.Module{Path: "example.com/new", Version: "v1.0.1", Sum: "h1:n1uQpMJtQGs2lcfdWXaWO/jVBUcJdNxuLRpO6/Gfqz8="}},
		}}
	deb := []debian.Locked{{Arch: "arm64", Package: debian.Package{Name: "libc6", Version: "2.36-9+deb12u14", Architecture: "arm64", Source: "glibc",
		Archive: "debian", Filename: "pool/main/g/glibc/libc6_2.36-9+deb12u14_arm64.deb", SHA256: strings.Repeat("0", 64)}}}
	build := func() []byte {
		d := New("plinth-image", "https://github.com/plinth-dev/plinth/releases/download/v0.1.0/plinth-image.spdx.json", time.Unix(1700000000, 0))
		root := d.Describe("plinth-image_linux_arm64", "v0.1.0", "CONTAINER", "")
		d.AddGo(root, info, "v0.1.0")
		d.AddDebian(root, debian.Mirror, deb)
		b, err := d.JSON()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	b := build()
	if string(b) != string(build()) {
		t.Error("two documents of one input differ")
	}
	var doc Document
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.DataLicense != "CC0-1.0" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" {
		t.Errorf("header %+v", doc)
	}
	byName := map[string]Package{}
	valid := regexp.MustCompile(`^SPDXRef-[A-Za-z0-9.-]+$`)
	for _, p := range doc.Packages {
		if !valid.MatchString(p.SPDXID) {
			t.Errorf("bad SPDXID %q", p.SPDXID)
		}
		byName[p.Name] = p
	}
	if p := byName["golang.org/x/sys"]; p.VersionInfo != "v0.49.0" || len(p.Checksums) != 1 || !strings.Contains(p.Comment, "h1:n1uQ") ||
		p.ExternalRefs[0].ReferenceLocator != "pkg:golang/golang.org/x/sys@v0.49.0" {
		t.Errorf("x/sys: %+v", p)
	}
	if p := byName["example.com/new"]; p.VersionInfo != "v1.0.1" || !strings.Contains(p.Comment, "replaces example.com/old") {
		t.Errorf("replacement: %+v", p)
	}
	if p := byName["github.com/plinth-dev/plinth"]; p.VersionInfo != "v0.1.0" {
		t.Errorf("main module: %+v", p)
	}
	if p := byName["stdlib"]; p.VersionInfo != "go1.26.8" {
		t.Errorf("stdlib: %+v", p)
	}
	if p := byName["libc6"]; p.ExternalRefs[0].ReferenceLocator != "pkg:deb/debian/libc6@2.36-9+deb12u14?arch=arm64&distro=debian-12" ||
		p.DownloadLocation != "http://deb.debian.org/debian/pool/main/g/glibc/libc6_2.36-9+deb12u14_arm64.deb" {
		t.Errorf("libc6: %+v", p)
	}
	if len(doc.Relationships) != len(doc.Packages) {
		t.Errorf("%d relationships for %d packages", len(doc.Relationships), len(doc.Packages))
	}
}
