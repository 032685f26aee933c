package durable

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// A format as it will be once a record kind has had two new versions:
// version 1 named the size "bytes", version 2 "sizeBytes", version 3 adds
// "unit".
var threeVersions = Format{Kind: "test record", Field: "schema", Steps: []func(map[string]any) error{
	func(r map[string]any) error { r["sizeBytes"] = r["bytes"]; delete(r, "bytes"); return nil },
	func(r map[string]any) error { r["unit"] = "B"; return nil },
}}

type v3 struct {
	Schema    int    `json:"schema"`
	Name      string `json:"name"`
	SizeBytes int64  `json:"sizeBytes"`
	Unit      string `json:"unit"`
}

// Older versions are converted forward step by step; a record without
// the version field is version 1; sizes past 2^53 stay exact.
func TestFormatConvertsForward(t *testing.T) {
	if threeVersions.Version() != 3 {
		t.Fatalf("Version = %d, want 3", threeVersions.Version())
	}
	big := int64(1)<<62 + 1
	want := v3{Schema: 3, Name: "a", SizeBytes: big, Unit: "B"}
	for name, data := range map[string]string{
		"version 1":          fmt.Sprintf(`{"schema":1,"name":"a","bytes":%d}`, big),
		"no version field":   fmt.Sprintf(`{"name":"a","bytes":%d}`, big),
		"version 2":          fmt.Sprintf(`{"schema":2,"name":"a","sizeBytes":%d}`, big),
		"version 3 (itself)": fmt.Sprintf(`{"schema":3,"name":"a","sizeBytes":%d,"unit":"B"}`, big),
	} {
		var got v3
		if err := threeVersions.Decode("/r.json", []byte(data), &got); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("%s: (-want +got)\n%s", name, d)
		}
	}
	failing := Format{Kind: "test record", Field: "schema", Steps: []func(map[string]any) error{
		func(map[string]any) error { return errors.New("no size") },
	}}
	var got v3
	if err := failing.Decode("/r.json", []byte(`{"schema":1}`), &got); err == nil || !strings.Contains(err.Error(), "convert version 1 to 2: no size") {
		t.Errorf("a failing step: %v", err)
	}
}

// A newer version is refused with an error that names the file, its
// version and the newest this plinth reads; version 0 and garbage are
// refused too.
func TestFormatRefusesNewer(t *testing.T) {
	f := Format{Kind: "test record", Field: "version"}
	var v struct{}
	err := f.Decode("/state/r.json", []byte(`{"version":99,"claims":{}}`), &v)
	var ne *NewerError
	if !errors.Is(err, ErrNewer) || !errors.As(err, &ne) || ne.Version != 99 || ne.Newest != 1 || ne.Path != "/state/r.json" {
		t.Fatalf("err = %#v", err)
	}
	for _, s := range []string{"test record /state/r.json", "version 99", "versions up to 1", "left untouched"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("%q does not say %q", err, s)
		}
	}
	// A version field that is no whole number from 1 up may be a newer
	// plinth's: refused and left as it is, as a newer one.
	for _, data := range []string{`{"version":0}`, `{"version":"2"}`, `{"version":-1}`, `{"version":2.0}`, `{"version":1e0}`} {
		err := f.Decode("/r", []byte(data), &v)
		if !errors.As(err, &ne) || !ne.Bad || !strings.Contains(err.Error(), "no version this plinth reads") {
			t.Errorf("%s: %v, want a NewerError that says the version cannot be read", data, err)
		}
	}
	for _, data := range []string{`[1]`, `{`} {
		if err := f.Decode("/r", []byte(data), &v); err == nil || errors.Is(err, ErrNewer) {
			t.Errorf("%s: %v, want an error other than ErrNewer", data, err)
		}
	}
}

type rec struct {
	Schema int    `json:"schema"`
	Name   string `json:"name"`
}

// Write never replaces a newer record: the file keeps its bytes and its
// modification time. Guard passes a missing file, an older or current
// record, and what is no regular file (without blocking on a FIFO).
func TestFormatWriteRefusesNewer(t *testing.T) {
	f := Format{Kind: "test record", Field: "schema"}
	dir := t.TempDir()
	path := filepath.Join(dir, "r.json")
	newer := []byte(`{"schema":99,"name":"from a newer plinth","more":{"x":1}}` + "\n")
	if err := os.WriteFile(path, newer, 0o600); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(path, old, old)
	var got rec
	if err := f.Read(path, &got); !errors.Is(err, ErrNewer) {
		t.Errorf("Read: %v", err)
	}
	for name, write := range map[string]func() error{
		"Write":     func() error { return f.Write(path, rec{Schema: 1, Name: "over"}) },
		"WriteBoot": func() error { return f.WriteBoot(path, rec{Schema: 1, Name: "over"}) },
		"Guard":     func() error { return f.Guard(path) },
	} {
		if err := write(); !errors.Is(err, ErrNewer) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s over a newer record: %v", name, err)
		}
	}
	unchanged(t, path, newer, old)

	// What may be replaced.
	other := filepath.Join(dir, "o.json")
	if err := f.Guard(other); err != nil {
		t.Errorf("Guard of a missing file: %v", err)
	}
	os.WriteFile(other, []byte(`{"schema":1}`), 0o600)
	if err := f.Write(other, rec{Schema: 1, Name: "x"}); err != nil {
		t.Errorf("Write over version 1: %v", err)
	}
	os.WriteFile(other, []byte(`not json`), 0o600)
	if err := f.Guard(other); err != nil {
		t.Errorf("Guard of a torn record: %v", err)
	}
	fifo := filepath.Join(dir, "fifo.json")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.Guard(fifo) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Guard of a FIFO: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Guard blocked on a FIFO")
	}
	os.Symlink(path, filepath.Join(dir, "link.json"))
	if err := f.Guard(filepath.Join(dir, "link.json")); err != nil {
		t.Errorf("Guard of a symlink (replaced by the rename, its target untouched): %v", err)
	}
}

// Write writes what the format declares: a record of another version,
// or without the version field, is not written.
func TestFormatWriteChecksVersion(t *testing.T) {
	f := Format{Kind: "test record", Field: "schema"}
	path := filepath.Join(t.TempDir(), "r.json")
	for _, v := range []any{rec{Schema: 0}, rec{Schema: 2}, struct{ Name string }{"x"}} {
		if err := f.Write(path, v); err == nil {
			t.Errorf("%+v written", v)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a refused write left %s: %v", path, err)
	}
	if err := f.Write(path, rec{Schema: 1, Name: "x"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	var m map[string]any
	if json.Unmarshal(b, &m); m["schema"] != float64(1) || !strings.HasSuffix(string(b), "}\n") {
		t.Errorf("written %q", b)
	}
}

// unchanged checks that path still holds want, modified at mtime.
func unchanged(t *testing.T, path string, want []byte, mtime time.Time) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || string(b) != string(want) {
		t.Errorf("%s changed: %q, %v", path, b, err)
	}
	if fi, err := os.Stat(path); err != nil || !fi.ModTime().Equal(mtime) {
		t.Errorf("%s modified: %v, %v", path, fi.ModTime(), err)
	}
}
