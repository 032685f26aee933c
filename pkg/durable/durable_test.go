package durable

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	type record struct {
		Schema int    `json:"schema"`
		Name   string `json:"name"`
	}
	f := Format{Kind: "test record", Field: "schema"}
	dir := t.TempDir()
	path := filepath.Join(dir, "a.json")
	if err := f.Write(path, record{Schema: 1, Name: "x"}); err != nil {
		t.Fatal(err)
	}
	var got record
	if err := f.Read(path, &got); err != nil || got.Name != "x" {
		t.Errorf("Read = %+v, %v", got, err)
	}
	if err := f.Read(filepath.Join(dir, "missing.json"), &got); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing record: %v, want fs.ErrNotExist", err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("record mode %v, want 0600", fi.Mode().Perm())
	}
	// Temp files, directories and names valid refuses are not records.
	os.WriteFile(filepath.Join(dir, ".b.json.tmp-1"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "Bad.json"), nil, 0o600)
	os.Mkdir(filepath.Join(dir, "d.json"), 0o700)
	ids, err := RecordIDs(dir, func(id string) error {
		if id == "Bad" {
			return errors.New("bad")
		}
		return nil
	})
	if err != nil || !slices.Equal(ids, []string{"a"}) {
		t.Errorf("RecordIDs = %v, %v, want [a]", ids, err)
	}
	if err := CleanTemp(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".b.json.tmp-1")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("temp file left: %v", err)
	}
}

// TestNewBoot: boot records of an earlier boot are forgotten before the
// running boot is recorded; those of this boot, or of a root that never
// recorded a boot (records fsynced by an older plinth), are kept.
func TestNewBoot(t *testing.T) {
	cur, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Skip("no boot ID here:", err)
	}
	dir := t.TempDir()
	forgot := 0
	forget := func() error { forgot++; return nil }
	for _, c := range []struct {
		name   string
		before []byte // nil: no boot_id file
		forget int
	}{{"no boot recorded", nil, 0}, {"this boot", cur, 0}, {"an earlier boot", []byte("0f0e0d0c-0000-4000-8000-000000000000\n"), 1}} {
		forgot = 0
		os.Remove(filepath.Join(dir, "boot_id"))
		if c.before != nil {
			os.WriteFile(filepath.Join(dir, "boot_id"), c.before, 0o600)
		}
		if err := NewBoot(dir, forget); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if forgot != c.forget {
			t.Errorf("%s: forgot %d times, want %d", c.name, forgot, c.forget)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "boot_id")); string(b) != string(cur) {
			t.Errorf("%s: boot_id %q after, want %q", c.name, b, cur)
		}
	}
	// A forget that fails leaves the earlier boot recorded: the next start
	// tries again.
	old := []byte("0f0e0d0c-0000-4000-8000-000000000000\n")
	os.WriteFile(filepath.Join(dir, "boot_id"), old, 0o600)
	if err := NewBoot(dir, func() error { return os.ErrPermission }); err == nil {
		t.Error("a failed forget was not an error")
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "boot_id")); string(b) != string(old) {
		t.Errorf("boot_id %q after a failed forget", b)
	}
}
