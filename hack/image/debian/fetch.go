package debian

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Mirror is Debian's own redirector.
const Mirror = "http://deb.debian.org"

// DefaultCache is where fetched packages are kept (~/.cache/plinth/debs).
func DefaultCache() (string, error) {
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(d, "plinth", "debs"), nil
}

// Fetch returns the path of p's .deb in cache, downloading it from mirror
// by its pool path first if the cache does not hold it. Either way its
// SHA-256 must be the lock's.
func Fetch(ctx context.Context, mirror, cache string, p Locked) (string, error) {
	base := path.Base(p.Filename)
	if base == "." || base == "/" || strings.HasPrefix(base, ".") {
		return "", fmt.Errorf("%s: bad pool filename %q", p.Name, p.Filename)
	}
	dst := filepath.Join(cache, base)
	if sum, err := fileSHA256(dst); err == nil && sum == p.SHA256 {
		return dst, nil
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return "", err
	}
	url := p.URL(mirror)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("fetch %s %s: %w", p.Name, p.Version, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return "", fmt.Errorf("fetch %s %s (%s): the mirror no longer has the pinned version (%s); run make image-lock to pin the current ones", p.Name, p.Version, p.Arch, url)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("fetch %s %s: GET %s: %s", p.Name, p.Version, url, resp.Status)
	}
	tmp, err := os.CreateTemp(cache, base+".part-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(tmp, h), resp.Body); err != nil {
		tmp.Close()
		return "", fmt.Errorf("fetch %s: %w", url, err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != p.SHA256 {
		return "", fmt.Errorf("fetch %s %s: %s has SHA-256 %s, the lock pins %s; run make image-lock if Debian replaced the package", p.Name, p.Version, url, got, p.SHA256)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", err
	}
	return dst, nil
}

func fileSHA256(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// Entry is one file, directory or symbolic link of a package's data.
type Entry struct {
	Path    string // absolute, cleaned, as the package has it (/sbin/..., not merged into /usr)
	Mode    int64
	Type    byte // tar.TypeReg, tar.TypeDir, tar.TypeSymlink, tar.TypeLink
	Link    string
	Content []byte
}

// Files reads the files of a .deb (dpkg-deb --fsys-tarfile), in the
// package's order.
func Files(ctx context.Context, deb string) ([]Entry, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	entries, rerr := readTar(out)
	if rerr != nil {
		_, _ = io.Copy(io.Discard, out)
	}
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, stderr.String())
	}
	if rerr != nil {
		return nil, fmt.Errorf("%s: %w", deb, rerr)
	}
	return entries, nil
}

func readTar(r io.Reader) ([]Entry, error) {
	var out []Entry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		e := Entry{Path: path.Clean("/" + h.Name), Mode: h.Mode & 0o7777, Type: h.Typeflag, Link: h.Linkname}
		switch h.Typeflag {
		case tar.TypeReg:
			if e.Content, err = io.ReadAll(tr); err != nil {
				return nil, err
			}
		case tar.TypeLink:
			e.Link = path.Clean("/" + h.Linkname)
		case tar.TypeDir, tar.TypeSymlink:
		default:
			continue
		}
		out = append(out, e)
	}
}
