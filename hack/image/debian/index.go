package debian

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Suite is one Debian suite's main component: the archive it lives in on
// the mirror (debian or debian-security) and its name.
type Suite struct {
	Archive string // debian, debian-security
	Name    string // bookworm, bookworm-updates, bookworm-security
}

// Bookworm is Debian 12 with its point-release updates and its security
// updates.
var Bookworm = []Suite{{"debian", "bookworm"}, {"debian", "bookworm-updates"}, {"debian-security", "bookworm-security"}}

// Keyring is Debian's archive keyring (debian-archive-keyring, which apt
// depends on), that gpgv checks InRelease with.
const Keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// Package is one binary package of a Packages index.
type Package struct {
	Name         string
	Version      string
	Architecture string
	Source       string // the source package, when it differs from Name
	Archive      string // debian or debian-security: where Filename lies
	Filename     string // pool/main/...
	Size         int64
	SHA256       string
	Depends      string
	PreDepends   string
	Provides     string
}

// ParsePackages reads a Packages index (stanzas of "Field: value" lines).
func ParsePackages(r io.Reader, archive string) ([]Package, error) {
	var out []Package
	var p Package
	flush := func() {
		if p.Name != "" {
			p.Archive = archive
			out = append(out, p)
		}
		p = Package{}
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue // a continuation (Description)
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("packages index: bad line %q", line)
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Package":
			p.Name = v
		case "Version":
			p.Version = v
		case "Architecture":
			p.Architecture = v
		case "Source":
			p.Source, _, _ = strings.Cut(v, " ")
		case "Filename":
			p.Filename = v
		case "Size":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("packages index: %s: size %q", p.Name, v)
			}
			p.Size = n
		case "SHA256":
			p.SHA256 = v
		case "Depends":
			p.Depends = v
		case "Pre-Depends":
			p.PreDepends = v
		case "Provides":
			p.Provides = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("packages index: %w", err)
	}
	flush()
	return out, nil
}

// Index is the newest version of each package across suites, and who
// provides each virtual package.
type Index struct {
	pkgs     map[string]Package
	provides map[string][]string
}

// NewIndex merges packages, keeping the highest version of each name.
func NewIndex(lists ...[]Package) *Index {
	ix := &Index{pkgs: map[string]Package{}, provides: map[string][]string{}}
	for _, l := range lists {
		for _, p := range l {
			if old, ok := ix.pkgs[p.Name]; !ok || Compare(p.Version, old.Version) > 0 {
				ix.pkgs[p.Name] = p
			}
		}
	}
	for _, p := range ix.pkgs {
		for _, alt := range parseRelations(p.Provides) {
			for _, r := range alt {
				ix.provides[r.Name] = append(ix.provides[r.Name], p.Name)
			}
		}
	}
	for _, v := range ix.provides {
		sort.Strings(v)
	}
	return ix
}

// Lookup returns the newest version of a package.
func (ix *Index) Lookup(name string) (Package, bool) {
	p, ok := ix.pkgs[name]
	return p, ok
}

// FetchIndex downloads a suite's main Packages index for arch from mirror
// (http://deb.debian.org), checks it against the suite's InRelease (whose
// signature gpgv verifies with keyring; no check when keyring is empty)
// and parses it. Packages.gz is read where the suite has it, else
// Packages.xz (with xz -dc).
func FetchIndex(ctx context.Context, mirror string, s Suite, arch, keyring string) ([]Package, error) {
	base := fmt.Sprintf("%s/%s/dists/%s/", strings.TrimSuffix(mirror, "/"), s.Archive, s.Name)
	release, err := get(ctx, base+"InRelease")
	if err != nil {
		return nil, err
	}
	if keyring != "" {
		if err := verifyRelease(ctx, release, keyring); err != nil {
			return nil, fmt.Errorf("%sInRelease: %w", base, err)
		}
	}
	sums := releaseSums(release)
	for _, name := range []string{"Packages.gz", "Packages.xz"} {
		rel := fmt.Sprintf("main/binary-%s/%s", arch, name)
		want, ok := sums[rel]
		if !ok {
			continue
		}
		b, err := get(ctx, base+rel)
		if err != nil {
			return nil, err
		}
		if got := sha256.Sum256(b); hex.EncodeToString(got[:]) != want {
			return nil, fmt.Errorf("%s%s: SHA-256 %x, InRelease says %s", base, rel, got, want)
		}
		var plain []byte
		if name == "Packages.gz" {
			zr, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				return nil, fmt.Errorf("%s%s: %w", base, rel, err)
			}
			if plain, err = io.ReadAll(zr); err != nil {
				return nil, fmt.Errorf("%s%s: %w", base, rel, err)
			}
		} else {
			cmd := exec.CommandContext(ctx, "xz", "-dc")
			cmd.Stdin = bytes.NewReader(b)
			if plain, err = cmd.Output(); err != nil {
				return nil, fmt.Errorf("%s%s: xz -dc (install xz-utils): %w", base, rel, err)
			}
		}
		return ParsePackages(bytes.NewReader(plain), s.Archive)
	}
	return nil, fmt.Errorf("%sInRelease lists no main/binary-%s/Packages.gz or .xz", base, arch)
}

// releaseSums is the SHA256 section of a Release file: path -> hex digest.
func releaseSums(release []byte) map[string]string {
	sums := map[string]string{}
	in := false
	for _, line := range strings.Split(string(release), "\n") {
		if !strings.HasPrefix(line, " ") {
			in = strings.HasPrefix(line, "SHA256:")
			continue
		}
		if f := strings.Fields(line); in && len(f) == 3 {
			sums[f[2]] = f[0]
		}
	}
	return sums
}

func verifyRelease(ctx context.Context, release []byte, keyring string) error {
	if _, err := os.Stat(keyring); err != nil {
		return fmt.Errorf("Debian's archive keyring (debian-archive-keyring): %w", err)
	}
	dir, err := os.MkdirTemp("", "plinth-inrelease-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f := filepath.Join(dir, "InRelease")
	if err := os.WriteFile(f, release, 0o644); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "gpgv", "--keyring", keyring, f).CombinedOutput()
	if err != nil {
		return fmt.Errorf("gpgv: %w: %s", err, out)
	}
	return nil
}

func get(ctx context.Context, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &HTTPError{URL: url, Status: resp.Status, Code: resp.StatusCode}
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", url, err)
	}
	return b, nil
}

// HTTPError is a mirror's answer other than 200.
type HTTPError struct {
	URL, Status string
	Code        int
}

func (e *HTTPError) Error() string { return fmt.Sprintf("GET %s: %s", e.URL, e.Status) }
