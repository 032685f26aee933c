package node

import (
	"os"
	"path/filepath"
	"testing"
)

// Records survive a restart (a new value over the same directory), and a
// record never answers for another target or volume.
func TestRecords(t *testing.T) {
	dir := t.TempDir()
	tr := targetRecords{dir: filepath.Join(dir, "targets")}
	if _, had, err := tr.get("/k/a"); err != nil || had {
		t.Fatalf("get before put: %v, %v", had, err)
	}
	if err := tr.put(targetRecord{VolumeID: "pv-a", Target: "/k/a", Created: "dir"}); err != nil {
		t.Fatal(err)
	}
	again := targetRecords{dir: tr.dir}
	r, had, err := again.get("/k/a")
	if err != nil || !had || r.VolumeID != "pv-a" || r.Created != "dir" {
		t.Fatalf("get after restart: %+v, %v, %v", r, had, err)
	}
	if _, had, _ := again.get("/k/b"); had {
		t.Fatal("a record answered for another target")
	}
	if err := again.drop("/k/a"); err != nil {
		t.Fatal(err)
	}
	if _, had, _ := again.get("/k/a"); had {
		t.Fatal("record still there after drop")
	}
	entries, _ := os.ReadDir(tr.dir)
	if len(entries) != 0 {
		t.Fatalf("left in the records dir: %v", entries)
	}

	st := stagedRecords{dir: filepath.Join(dir, "staged")}
	if p, err := st.stagedAt("pv-a"); err != nil || p != "" {
		t.Fatalf("stagedAt before put: %q, %v", p, err)
	}
	if err := st.drop("pv-a"); err != nil {
		t.Fatalf("drop of nothing: %v", err)
	}
	if err := st.put("pv-a", "/k/staging"); err != nil {
		t.Fatal(err)
	}
	if p, err := (stagedRecords{dir: st.dir}).stagedAt("pv-a"); err != nil || p != "/k/staging" {
		t.Fatalf("stagedAt after restart: %q, %v", p, err)
	}
	if p, _ := st.stagedAt("pv-b"); p != "" {
		t.Fatalf("another volume's staging path: %q", p)
	}

	// With no state directory nothing is recorded and nothing is removed.
	none := targetRecords{}
	if err := none.put(targetRecord{VolumeID: "pv-a", Target: "/k/a", Created: "dir"}); err != nil {
		t.Fatal(err)
	}
	if _, had, _ := none.get("/k/a"); had {
		t.Fatal("a record without a state directory")
	}
}

func TestRemoveCreated(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, created string
		make          func(p string)
		gone          bool
	}{
		{"empty dir plinth made", "dir", func(p string) { os.Mkdir(p, 0o750) }, true},
		{"dir plinth made, now holding data", "dir", func(p string) { os.Mkdir(p, 0o750); os.WriteFile(filepath.Join(p, "x"), nil, 0o600) }, false},
		{"empty dir plinth did not make", "", func(p string) { os.Mkdir(p, 0o750) }, false},
		{"empty file plinth made", "file", func(p string) { os.WriteFile(p, nil, 0o600) }, true},
		{"file plinth made, now holding data", "file", func(p string) { os.WriteFile(p, []byte("data"), 0o600) }, false},
		{"a directory where plinth made a file", "file", func(p string) { os.Mkdir(p, 0o750) }, false},
		{"a symlink where plinth made a dir", "dir", func(p string) { os.Symlink(dir, p) }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, filepath.Base(t.Name()))
			tc.make(p)
			if err := removeCreated(p, tc.created); err != nil {
				t.Fatal(err)
			}
			_, err := os.Lstat(p)
			if gone := os.IsNotExist(err); gone != tc.gone {
				t.Errorf("removed = %t, want %t", gone, tc.gone)
			}
		})
	}
}
