// Records and versions, from an outside review: records whose version field a
// careless or newer writer made odd must be refused and left as they are.
package node

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// A publish record whose version this plinth cannot read as a number it
// knows (an integer too big for an int, a string, a float) is skipped by
// the scans as if it were not there: the in-use check before a delete
// (targets.of) passes and the loop allocator (deviceBound) hands out the
// device it binds. A newer record is refused there ("a newer record it
// cannot read may be of any volume or device"); one whose version cannot
// be read at all is no safer to ignore.
func TestAttackScansSkipUnreadableVersion(t *testing.T) {
	for name, ver := range map[string]string{
		"huge int": `99999999999999999999`,
		"string":   `"2"`,
		"float":    `2.0`,
	} {
		t.Run(name, func(t *testing.T) {
			state := t.TempDir()
			tr := targetRecords{dir: filepath.Join(state, "targets")}
			const target = "/k/pods/x/volumeDevices/pv-a"
			os.MkdirAll(tr.dir, 0o700)
			rec := `{"schema": ` + ver + `, "volumeID": "pv-a", "target": "` + target + `", "created": "file", "bound": "/dev/loop3"}`
			if err := os.WriteFile(tr.path(target), []byte(rec), 0o600); err != nil {
				t.Fatal(err)
			}
			if of, err := tr.of("pv-a"); err == nil && len(of) == 0 {
				t.Errorf("targets.of(pv-a) = %v, nil: the delete's in-use check passes over a publish record of version %s", of, ver)
			}
			noMounts := func() ([]mount.Info, error) { return nil, nil }
			if deviceBound(state, "/dev/loop3", noMounts) {
				return
			}
			t.Errorf("deviceBound(/dev/loop3) = false: the loop allocator may give the device of a publish record of version %s to another volume", ver)
		})
	}
}

// The same record is removed by targets.drop (Guard passes it).
func TestAttackDropRemovesUnreadableVersion(t *testing.T) {
	state := t.TempDir()
	tr := targetRecords{dir: filepath.Join(state, "targets")}
	const target = "/k/pods/x/volumes/pv-a"
	os.MkdirAll(tr.dir, 0o700)
	rec := `{"schema": 99999999999999999999, "volumeID": "pv-a", "target": "` + target + `"}`
	os.WriteFile(tr.path(target), []byte(rec), 0o600)
	err := tr.drop(target)
	if _, serr := os.Stat(tr.path(target)); serr != nil {
		t.Errorf("targets.drop = %v: a publish record of version 99999999999999999999 was removed", err)
	}
	st := stagedRecords{dir: filepath.Join(state, "staged")}
	os.MkdirAll(st.dir, 0o700)
	os.WriteFile(st.path("pv-a"), []byte(`{"schema": "2", "volumeID": "pv-a", "path": "/k/s"}`), 0o600)
	err = st.drop("pv-a")
	if _, serr := os.Stat(st.path("pv-a")); serr != nil {
		t.Errorf("staged.drop = %v: a stage record of version \"2\" was removed", err)
	}
}

// A FIFO in place of a stage record hangs stagedRecords.all (every stage
// and publish calls it through insideVolume): Format.Read opens it
// blocking.
func TestAttackStagedAllFIFO(t *testing.T) {
	st := stagedRecords{dir: filepath.Join(t.TempDir(), "staged")}
	os.MkdirAll(st.dir, 0o700)
	if err := syscall.Mkfifo(st.path("pv-a"), 0o600); err != nil {
		t.Skip(err)
	}
	done := make(chan error, 1)
	go func() { _, err := st.all(); done <- err }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		if f, err := os.OpenFile(st.path("pv-a"), os.O_WRONLY, 0); err == nil {
			f.Close()
		}
		t.Error("stagedRecords.all blocked 3s on a FIFO named pv-a.json")
	}
}
