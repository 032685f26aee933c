package debian

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestCompare(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want int
	}{
		{"1.0", "1.0", 0},
		{"1.0", "1.1", -1},
		{"1.10", "1.9", 1},
		{"1.0~rc1", "1.0", -1},
		{"1.0", "1.0+b1", -1},
		{"2.36-9+deb12u10", "2.36-9+deb12u9", 1},
		{"252.39-1~deb12u2", "252.39-1", -1},
		{"1:1.0", "2.0", 1},
		{"1.47.0-2+b2", "1.47.0-2", 1},
		{"1.0-1", "1.0-1a", -1},
		{"1.0a", "1.0+", -1},
	} {
		got := Compare(c.a, c.b)
		if (got < 0) != (c.want < 0) || (got > 0) != (c.want > 0) {
			t.Errorf("Compare(%s, %s) = %d, want sign of %d", c.a, c.b, got, c.want)
		}
	}
	if !Satisfies("2.36-9", ">=", "2.34") || Satisfies("2.36", "<<", "2.36") || !Satisfies("1", "", "") {
		t.Error("Satisfies")
	}
}

const index = `Package: tool
Version: 1.0-1
Architecture: amd64
Pre-Depends: libc6 (>= 2.34), liba1
Depends: debconf (>= 0.5) | debconf-2.0, awk, python3:any
Filename: pool/main/t/tool/tool_1.0-1_amd64.deb
Size: 10
SHA256: 1111111111111111111111111111111111111111111111111111111111111111
Description: a tool
 with a long description

Package: libc6
Version: 2.36-9
Architecture: amd64
Source: glibc
Filename: pool/main/g/glibc/libc6_2.36-9_amd64.deb
Size: 20
SHA256: 2222222222222222222222222222222222222222222222222222222222222222

Package: liba1
Version: 3
Architecture: amd64
Filename: pool/main/a/a/liba1_3_amd64.deb
Size: 5
SHA256: 3333333333333333333333333333333333333333333333333333333333333333

Package: mawk
Version: 1.3
Architecture: amd64
Provides: awk
Filename: pool/main/m/mawk/mawk_1.3_amd64.deb
Size: 5
SHA256: 4444444444444444444444444444444444444444444444444444444444444444
`

// The closure follows Pre-Depends and Depends, takes the newest version
// across suites, meets a virtual package by its provider, skips excluded
// ones, and fails on a dependency no version meets.
func TestResolve(t *testing.T) {
	main, err := ParsePackages(strings.NewReader(index), "debian")
	if err != nil {
		t.Fatal(err)
	}
	security, err := ParsePackages(strings.NewReader(strings.ReplaceAll(index[strings.Index(index, "Package: libc6"):strings.Index(index, "Package: liba1")], "2.36-9", "2.36-9+deb12u1")), "debian-security")
	if err != nil {
		t.Fatal(err)
	}
	ix := NewIndex(main, security)
	got, err := Resolve(ix, []string{"tool"}, []string{"debconf", "python3"})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range got {
		names = append(names, p.Name+"="+p.Version+"@"+p.Archive)
	}
	want := []string{"liba1=3@debian", "libc6=2.36-9+deb12u1@debian-security", "mawk=1.3@debian", "tool=1.0-1@debian"}
	if d := cmp.Diff(want, names); d != "" {
		t.Errorf("closure (-want +got):\n%s", d)
	}
	if _, err := Resolve(ix, []string{"tool"}, []string{"debconf"}); err == nil || !strings.Contains(err.Error(), "python3") {
		t.Errorf("python3 missing: %v", err)
	}
	bad, _ := ParsePackages(strings.NewReader(strings.Replace(index, "libc6 (>= 2.34)", "libc6 (>= 2.40)", 1)), "debian")
	if _, err := Resolve(NewIndex(bad), []string{"tool"}, []string{"debconf", "python3"}); err == nil || !strings.Contains(err.Error(), "libc6 >= 2.40") {
		t.Errorf("unmet version: %v", err)
	}
}

func TestLockRoundTrip(t *testing.T) {
	pkgs, err := ParsePackages(strings.NewReader(index), "debian")
	if err != nil {
		t.Fatal(err)
	}
	l := &Lock{Roots: []string{"tool"}}
	for _, a := range []string{"arm64", "amd64"} {
		for _, p := range pkgs {
			p.Depends, p.PreDepends, p.Provides = "", "", ""
			l.Packages = append(l.Packages, Locked{Arch: a, Package: p})
		}
	}
	var buf bytes.Buffer
	if err := l.Write(&buf); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "debian.lock")
	if err := os.WriteFile(f, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	back, err := ReadLock(f)
	if err != nil {
		t.Fatal(err)
	}
	want := l.For("amd64")
	sort.Slice(want, func(i, j int) bool { return want[i].Name < want[j].Name })
	if d := cmp.Diff(want, back.For("amd64")); d != "" || len(back.For("arm64")) != 4 || back.Roots[0] != "tool" {
		t.Errorf("round trip (-want +got):\n%s", d)
	}
	if !strings.HasPrefix(back.Packages[0].Arch, "amd64") {
		t.Error("not sorted by architecture")
	}
}

// A pinned version that left the mirror, or a package whose bytes are not
// the lock's, is refused with the way out; a cached one is not fetched
// again.
func TestFetch(t *testing.T) {
	body := []byte("a package")
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits++
		if r.URL.Path == "/debian/pool/main/t/tool/tool_1_amd64.deb" {
			w.Write(body)
			return
		}
		http.NotFound(w, r)
	}))
	defer srv.Close()
	cache := t.TempDir()
	p := Locked{Arch: "amd64", Package: Package{Name: "tool", Version: "1", Archive: "debian", Filename: "pool/main/t/tool/tool_1_amd64.deb",
		SHA256: "5d8b53b2b3f7dbb9d4a4a83c40a5ad7e07b1e8a1d4c5e9be2b2f0d0bd0e8d3c1"}}
	if _, err := Fetch(context.Background(), srv.URL, cache, p); err == nil || !strings.Contains(err.Error(), "make image-lock") {
		t.Errorf("wrong sum: %v", err)
	}
	sum, _ := fileSHA256(writeTemp(t, body))
	p.SHA256 = sum
	got, err := Fetch(context.Background(), srv.URL, cache, p)
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(got); !bytes.Equal(b, body) {
		t.Error("cached content")
	}
	before := hits
	if _, err := Fetch(context.Background(), srv.URL, cache, p); err != nil || hits != before {
		t.Errorf("second fetch: %v, %d requests", err, hits-before)
	}
	p.Filename = "pool/main/t/tool/tool_0_amd64.deb"
	if _, err := Fetch(context.Background(), srv.URL, cache, p); err == nil || !strings.Contains(err.Error(), "no longer has") || !strings.Contains(err.Error(), "make image-lock") {
		t.Errorf("gone: %v", err)
	}
}

func writeTemp(t *testing.T, b []byte) string {
	f := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}
