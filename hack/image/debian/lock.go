package debian

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
)

// Locked is one pinned package for one target architecture.
type Locked struct {
	Arch string // the image's architecture (amd64, arm64)
	Package
}

// URL is where the package lies on mirror (http://deb.debian.org).
func (l Locked) URL(mirror string) string {
	return strings.TrimSuffix(mirror, "/") + "/" + l.Archive + "/" + l.Filename
}

// PURL is the package URL of the package (pkg:deb/debian/...).
func (l Locked) PURL() string {
	return fmt.Sprintf("pkg:deb/debian/%s@%s?arch=%s&distro=debian-12", l.Name, strings.ReplaceAll(l.Version, ":", "%3A"), l.Architecture)
}

// Lock is the lock file: its header comments and pinned packages.
type Lock struct {
	Roots    []string
	Packages []Locked
}

const lockColumns = "# arch package version architecture source archive filename size sha256"

// For returns the packages pinned for one architecture, by name.
func (l *Lock) For(arch string) []Locked {
	var out []Locked
	for _, p := range l.Packages {
		if p.Arch == arch {
			out = append(out, p)
		}
	}
	return out
}

// Write writes the lock: a header, then one line per package, sorted by
// architecture and name.
func (l *Lock) Write(w io.Writer) error {
	pkgs := append([]Locked(nil), l.Packages...)
	sort.Slice(pkgs, func(i, j int) bool {
		if pkgs[i].Arch != pkgs[j].Arch {
			return pkgs[i].Arch < pkgs[j].Arch
		}
		return pkgs[i].Name < pkgs[j].Name
	})
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, "# The Debian 12 packages plinth's image takes its filesystem tools from, pinned.")
	fmt.Fprintln(bw, "# Written by `make image-lock` (hack/image/lock) from deb.debian.org's bookworm,")
	fmt.Fprintln(bw, "# bookworm-updates and bookworm-security; do not edit by hand.")
	fmt.Fprintf(bw, "# roots: %s\n", strings.Join(l.Roots, " "))
	fmt.Fprintln(bw, lockColumns)
	for _, p := range pkgs {
		src := p.Source
		if src == "" {
			src = "-"
		}
		fmt.Fprintf(bw, "%s %s %s %s %s %s %s %d %s\n", p.Arch, p.Name, p.Version, p.Architecture, src, p.Archive, p.Filename, p.Size, p.SHA256)
	}
	return bw.Flush()
}

// ReadLock reads a lock file written by Write.
func ReadLock(path string) (*Lock, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read the Debian lock (make image-lock writes it): %w", err)
	}
	defer f.Close()
	l := &Lock{}
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if r, ok := strings.CutPrefix(line, "# roots:"); ok {
			l.Roots = strings.Fields(r)
			continue
		}
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 9 {
			return nil, fmt.Errorf("%s:%d: %d fields, want 9 (%s)", path, n, len(f), strings.TrimPrefix(lockColumns, "# "))
		}
		size, err := strconv.ParseInt(f[7], 10, 64)
		if err != nil || len(f[8]) != 64 {
			return nil, fmt.Errorf("%s:%d: bad size or sha256", path, n)
		}
		p := Locked{Arch: f[0], Package: Package{Name: f[1], Version: f[2], Architecture: f[3], Source: f[4],
			Archive: f[5], Filename: f[6], Size: size, SHA256: f[8]}}
		if p.Source == "-" {
			p.Source = ""
		}
		if strings.Contains(p.Filename, "..") || strings.HasPrefix(p.Filename, "/") || (p.Archive != "debian" && p.Archive != "debian-security") {
			return nil, fmt.Errorf("%s:%d: bad archive or filename", path, n)
		}
		l.Packages = append(l.Packages, p)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return l, nil
}
