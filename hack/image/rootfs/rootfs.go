package rootfs

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"path"
	"sort"
	"strings"
	"sync"

	"github.com/plinth-dev/plinth/hack/image/debian"
	"github.com/plinth-dev/plinth/hack/image/oci"
)

// Arch is a target architecture as Debian and ELF name it.
type Arch struct {
	Triplet string      // the multiarch directory: x86_64-linux-gnu
	Machine elf.Machine // EM_X86_64
}

// Arches are the architectures plinth's image is built for, by GOARCH.
var Arches = map[string]Arch{
	"amd64": {Triplet: "x86_64-linux-gnu", Machine: elf.EM_X86_64},
	"arm64": {Triplet: "aarch64-linux-gnu", Machine: elf.EM_AARCH64},
}

// LibDirs are where the image's dynamic linker looks for a library, in
// the image's (merged-/usr) paths.
func (a Arch) LibDirs() []string {
	return []string{"/usr/lib/" + a.Triplet, "/usr/lib"}
}

// Config says what to build.
type Config struct {
	Arch     string          // GOARCH
	Packages []debian.Locked // the lock's packages for Arch
	Tools    []string        // programs to take (looked up in /usr/sbin, /usr/bin)
	Mirror   string          // debian.Mirror
	Cache    string          // where .debs are kept
	// Fetch returns a package's .deb; debian.Fetch from Mirror into Cache
	// when nil.
	Fetch func(ctx context.Context, p debian.Locked) (string, error)
}

// Configs are files the tools read, taken when a package has them.
var Configs = []string{"/etc/mke2fs.conf"}

// Build returns the image's files for cfg.Arch.
func Build(ctx context.Context, cfg Config) ([]oci.File, error) {
	arch, ok := Arches[cfg.Arch]
	if !ok {
		return nil, fmt.Errorf("architecture %q: not one of amd64, arm64", cfg.Arch)
	}
	if len(cfg.Packages) == 0 {
		return nil, fmt.Errorf("the lock pins no packages for %s: run make image-lock", cfg.Arch)
	}
	fetch := cfg.Fetch
	if fetch == nil {
		fetch = func(ctx context.Context, p debian.Locked) (string, error) {
			return debian.Fetch(ctx, cfg.Mirror, cfg.Cache, p)
		}
	}
	pkgs := append([]debian.Locked(nil), cfg.Packages...)
	sort.Slice(pkgs, func(i, j int) bool { return pkgs[i].Name < pkgs[j].Name })
	entries := make([][]debian.Entry, len(pkgs))
	errs := make([]error, len(pkgs))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, p := range pkgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			deb, err := fetch(ctx, p)
			if err == nil {
				entries[i], err = debian.Files(ctx, deb)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	t := newTree()
	for i, p := range pkgs {
		if errs[i] != nil {
			return nil, errs[i]
		}
		if err := t.add(p.Name, entries[i]); err != nil {
			return nil, err
		}
	}
	return t.selectFiles(arch, cfg.Tools, pkgs)
}

// node is one file of the merged packages.
type node struct {
	pkg     string
	typ     byte // tar.TypeReg or tar.TypeSymlink
	mode    int64
	link    string // a symlink's target, relative to its directory
	content []byte
}

type tree struct{ files map[string]*node }

func newTree() *tree { return &tree{files: map[string]*node{}} }

// merged is p in a merged-/usr system: /bin, /sbin, /lib* under /usr.
func merged(p string) string {
	for _, top := range []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"} {
		if p == top || strings.HasPrefix(p, top+"/") {
			return "/usr" + p
		}
	}
	return p
}

// relLink is the target of a link at p (in merged paths) to the absolute,
// merged path abs, relative to p's directory.
func relLink(p, abs string) string {
	from := strings.Split(strings.TrimPrefix(path.Dir(p), "/"), "/")
	to := strings.Split(strings.TrimPrefix(abs, "/"), "/")
	if path.Dir(p) == "/" {
		from = nil
	}
	i := 0
	for i < len(from) && i < len(to)-1 && from[i] == to[i] {
		i++
	}
	var parts []string
	for range from[i:] {
		parts = append(parts, "..")
	}
	return strings.Join(append(parts, to[i:]...), "/")
}

func (t *tree) add(pkg string, entries []debian.Entry) error {
	byPath := map[string]debian.Entry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	for _, e := range entries {
		p := merged(e.Path)
		var n *node
		switch e.Type {
		case tar.TypeDir:
			continue
		case tar.TypeReg:
			n = &node{pkg: pkg, typ: tar.TypeReg, mode: e.Mode, content: e.Content}
		case tar.TypeSymlink:
			abs := e.Link
			if !path.IsAbs(abs) {
				abs = path.Join(path.Dir(e.Path), abs)
			}
			n = &node{pkg: pkg, typ: tar.TypeSymlink, mode: 0o777, link: relLink(p, merged(path.Clean(abs)))}
		case tar.TypeLink:
			// A hard link becomes a symbolic one: the programs that have
			// several names (mke2fs as mkfs.ext4) tell them by argv[0].
			if _, ok := byPath[e.Link]; !ok {
				return fmt.Errorf("%s: %s links to %s, which the package lacks", pkg, e.Path, e.Link)
			}
			n = &node{pkg: pkg, typ: tar.TypeSymlink, mode: 0o777, link: relLink(p, merged(e.Link))}
		default:
			continue
		}
		if old, ok := t.files[p]; ok && old.pkg != pkg {
			if old.typ != n.typ || old.link != n.link || !bytes.Equal(old.content, n.content) {
				return fmt.Errorf("%s is in both %s and %s, and they differ", p, old.pkg, pkg)
			}
			continue
		}
		t.files[p] = n
	}
	return nil
}

// resolve follows symbolic links in every component of p; it returns the
// path of a regular file.
func (t *tree) resolve(p string) (string, error) {
	return Resolve(func(q string) (string, bool, bool) {
		n, ok := t.files[q]
		if !ok {
			return "", false, false
		}
		return n.link, n.typ == tar.TypeSymlink, true
	}, p)
}

// Resolve follows symbolic links in each component of p through lookup,
// which says of a path its link target (relative or absolute), whether it
// is a link, and whether it exists at all (a path that is neither is taken
// as a directory when something lies below it). It returns the resolved
// path, which exists.
func Resolve(lookup func(p string) (target string, isLink, exists bool), p string) (string, error) {
	orig := p
	for hops := 0; hops < 40; hops++ {
		parts := strings.Split(strings.TrimPrefix(path.Clean(p), "/"), "/")
		cur := "/"
		changed := false
		for i, part := range parts {
			next := path.Join(cur, part)
			target, isLink, _ := lookup(next)
			if isLink {
				if !path.IsAbs(target) {
					target = path.Join(cur, target)
				}
				p = path.Join(append([]string{target}, parts[i+1:]...)...)
				changed = true
				break
			}
			cur = next
		}
		if !changed {
			if _, _, ok := lookup(cur); !ok {
				return "", fmt.Errorf("%s: no such file", orig)
			}
			return cur, nil
		}
	}
	return "", fmt.Errorf("%s: too many levels of symbolic links", orig)
}

func (t *tree) selectFiles(arch Arch, tools []string, pkgs []debian.Locked) ([]oci.File, error) {
	sel := map[string]bool{}
	var take func(p, why string) error
	take = func(p, why string) error {
		p = merged(path.Clean(p))
		if sel[p] {
			return nil
		}
		// Keep each link on the way.
		for hops := 0; ; hops++ {
			n, ok := t.files[p]
			if !ok || n.typ != tar.TypeSymlink || hops > 40 {
				break
			}
			sel[p] = true
			p = path.Join(path.Dir(p), n.link)
		}
		real, err := t.resolve(p)
		if err != nil {
			return fmt.Errorf("%s (for %s): %w", p, why, err)
		}
		if sel[real] {
			return nil
		}
		sel[real] = true
		n := t.files[real]
		if !bytes.HasPrefix(n.content, []byte(elf.ELFMAG)) {
			return nil
		}
		f, err := elf.NewFile(bytes.NewReader(n.content))
		if err != nil {
			return fmt.Errorf("%s (%s): %w", real, n.pkg, err)
		}
		defer f.Close()
		if f.Machine != arch.Machine {
			return fmt.Errorf("%s (%s) is for %s, not %s", real, n.pkg, f.Machine, arch.Machine)
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_INTERP {
				b := make([]byte, prog.Filesz)
				if _, err := prog.ReadAt(b, 0); err != nil {
					return err
				}
				if err := take(strings.TrimRight(string(b), "\x00"), real); err != nil {
					return err
				}
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", real, err)
		}
		for _, lib := range needed {
			found := false
			for _, d := range arch.LibDirs() {
				if _, err := t.resolve(path.Join(d, lib)); err == nil {
					if err := take(path.Join(d, lib), real); err != nil {
						return err
					}
					found = true
					break
				}
			}
			if !found {
				return fmt.Errorf("%s (%s) needs %s, which no pinned package has", real, n.pkg, lib)
			}
		}
		return nil
	}
	for _, name := range tools {
		found := false
		for _, d := range []string{"/usr/sbin", "/usr/bin"} {
			if _, ok := t.files[path.Join(d, name)]; ok {
				if err := take(path.Join(d, name), "the tools"); err != nil {
					return nil, err
				}
				found = true
				break
			}
		}
		if !found {
			return nil, fmt.Errorf("no pinned package has %s (add its package to the roots of hack/image/lock, then make image-lock)", name)
		}
	}
	for _, c := range Configs {
		if _, ok := t.files[c]; ok {
			if err := take(c, "configuration"); err != nil {
				return nil, err
			}
		}
	}
	files := []oci.File{
		{Path: "/bin", Link: "usr/bin"}, {Path: "/sbin", Link: "usr/sbin"}, {Path: "/lib", Link: "usr/lib"},
		{Path: "/etc/fstab", Mode: 0o644},
		{Path: "/etc/passwd", Mode: 0o644, Content: []byte("root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532::/nonexistent:/sbin/nologin\n")},
		{Path: "/etc/group", Mode: 0o644, Content: []byte("root:x:0:\nnonroot:x:65532:\n")},
	}
	lib64 := false
	for p := range sel {
		n := t.files[p]
		if n.typ == tar.TypeSymlink {
			files = append(files, oci.File{Path: p, Link: n.link})
		} else {
			files = append(files, oci.File{Path: p, Mode: n.mode, Content: n.content})
		}
		lib64 = lib64 || strings.HasPrefix(p, "/usr/lib64/")
	}
	if lib64 {
		files = append(files, oci.File{Path: "/lib64", Link: "usr/lib64"})
	}
	for _, p := range pkgs {
		c := "/usr/share/doc/" + p.Name + "/copyright"
		real, err := t.resolve(c)
		if err != nil {
			return nil, fmt.Errorf("%s %s has no copyright file: %w", p.Name, p.Version, err)
		}
		files = append(files, oci.File{Path: c, Mode: 0o644, Content: t.files[real].content})
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}
