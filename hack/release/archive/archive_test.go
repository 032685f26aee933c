package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Two archives of the same files are the same bytes: no gzip timestamp or
// name, entries dated the given time and owned by root.
func TestTarGzDeterministic(t *testing.T) {
	files := []File{{Name: "kubectl-plinth", Mode: 0o755, Content: []byte("binary")}, {Name: "LICENSE", Mode: 0o644, Content: []byte("Apache")}}
	mtime := time.Unix(1700000000, 0)
	var a, b bytes.Buffer
	if err := TarGz(&a, files, mtime); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	if err := TarGz(&b, files, mtime); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatal("two archives of the same files differ")
	}
	zr, err := gzip.NewReader(bytes.NewReader(a.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	if !zr.ModTime.IsZero() || zr.Name != "" {
		t.Errorf("gzip header: time %v, name %q", zr.ModTime, zr.Name)
	}
	tr := tar.NewReader(zr)
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		if !h.ModTime.Equal(mtime) || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: %+v", h.Name, h)
		}
	}
	if len(names) != 2 || names[0] != "kubectl-plinth" || names[1] != "LICENSE" {
		t.Errorf("entries %v", names)
	}
}

func TestSHA256Sums(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "b"), []byte("b"), 0o644)
	os.WriteFile(filepath.Join(dir, "a"), nil, 0o644)
	got, err := SHA256Sums(dir, []string{"b", "a"})
	if err != nil {
		t.Fatal(err)
	}
	want := "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  a\n" +
		"3e23e8160039594a33894f6564e1b1348bbd7a0088d42c4acb73eeaed59c009d  b\n"
	if string(got) != want {
		t.Errorf("got\n%s", got)
	}
}

// Two archives of the same files made at different times are the same
// bytes once repacked.
func TestRepack(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i, when := range []time.Time{time.Unix(1, 0), time.Unix(2000000000, 0)} {
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.ModTime = when
		tw := tar.NewWriter(zw)
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "plinth/Chart.yaml", Mode: 0o644, Size: 4, ModTime: when, Uname: "someone"})
		tw.Write([]byte("name"))
		tw.Close()
		zw.Close()
		p := filepath.Join(dir, string(rune('a'+i))+".tgz")
		os.WriteFile(p, buf.Bytes(), 0o644)
		if err := Repack(p, time.Unix(1700000000, 0)); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	a, _ := os.ReadFile(paths[0])
	b, _ := os.ReadFile(paths[1])
	if !bytes.Equal(a, b) {
		t.Error("repacked archives differ")
	}
}
