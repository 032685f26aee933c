// Package archive writes release archives that are the same bytes on
// every build of one commit: .tar.gz files whose entries are in the order
// given, dated one fixed time, owned by root with no user or group names,
// in a gzip stream with no name and no timestamp; and SHA256SUMS files.
package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// File is one entry of an archive.
type File struct {
	Name    string // relative
	Mode    int64
	Content []byte
}

// TarGz writes files as a gzipped tar stream, every entry dated mtime.
func TarGz(w io.Writer, files []File, mtime time.Time) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestCompression)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(zw)
	for _, f := range files {
		h := &tar.Header{Typeflag: tar.TypeReg, Name: f.Name, Mode: f.Mode, Size: int64(len(f.Content)),
			ModTime: mtime.UTC().Truncate(time.Second), Format: tar.FormatUSTAR}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("%s: %w", f.Name, err)
		}
		if _, err := tw.Write(f.Content); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

// SHA256Sums is the sha256sum(1) listing of the named files of dir, sorted
// by name ("<hex>  <name>" lines), which `sha256sum -c` checks.
func SHA256Sums(dir string, names []string) ([]byte, error) {
	names = append([]string(nil), names...)
	sort.Strings(names)
	var b bytes.Buffer
	for _, n := range names {
		if strings.ContainsAny(n, "/\n") {
			return nil, fmt.Errorf("%q: not a plain file name", n)
		}
		f, err := os.Open(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return nil, err
		}
		fmt.Fprintf(&b, "%x  %s\n", h.Sum(nil), n)
	}
	return b.Bytes(), nil
}

// Repack rewrites the .tar.gz at path (helm package's chart, whose entries
// are dated when it ran) as TarGz does: its regular files in their order,
// dated mtime.
func Repack(path string, mtime time.Time) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	var files []File
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return err
		}
		files = append(files, File{Name: h.Name, Mode: h.Mode, Content: b})
	}
	var buf bytes.Buffer
	if err := TarGz(&buf, files, mtime); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}
