package node

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// v010 holds the records plinth v0.1.0 wrote (testdata/records/v0.1.0,
// its README says how they were made): three volumes staged and
// published, a filesystem, a raw block and a whole-disk one.
const v010 = "../../testdata/records/v0.1.0"

const (
	v010Fs    = "pv-dee66db740340d89c2c93141cdd51960d3033113"
	v010Block = "pv-575f96dfe7187981b3c363803174d623e396d785"
	v010Disk  = "pv-c762016223ee26b320b2538f0997bdf332f0d9eb"
)

// copyState copies v0.1.0's staged and targets directories into a new
// state directory.
func copyState(t *testing.T) string {
	t.Helper()
	state := t.TempDir()
	for _, d := range []string{"staged", "targets"} {
		if err := os.CopyFS(filepath.Join(state, d), os.DirFS(filepath.Join(v010, d))); err != nil {
			t.Fatal(err)
		}
	}
	return state
}

// The stage and publish records v0.1.0 wrote are read as they were
// written.
func TestV010StageAndPublishRecords(t *testing.T) {
	state := copyState(t)
	st := stagedRecords{dir: filepath.Join(state, "staged")}
	all, err := st.all()
	want := map[string]string{v010Fs: "/tmp/rec/k8s/stage-fs", v010Block: "/tmp/rec/k8s/stage-blk", v010Disk: "/tmp/rec/k8s/stage-disk"}
	if d := cmp.Diff(want, all); err != nil || d != "" {
		t.Errorf("staged: %v (-want +got)\n%s", err, d)
	}
	if at, err := st.stagedAt(v010Fs); err != nil || at != "/tmp/rec/k8s/stage-fs" {
		t.Errorf("stagedAt = %q, %v", at, err)
	}
	tr := targetRecords{dir: filepath.Join(state, "targets")}
	for _, w := range []targetRecord{
		{Schema: 1, VolumeID: v010Fs, Target: "/tmp/rec/k8s/pods/fs-target", Created: "dir"},
		{Schema: 1, VolumeID: v010Block, Target: "/tmp/rec/k8s/pods/blk-target", Created: "file", Bound: "/dev/loop3"},
		{Schema: 1, VolumeID: v010Disk, Target: "/tmp/rec/k8s/pods/disk-target", Created: "dir"},
	} {
		r, had, err := tr.get(w.Target)
		if d := cmp.Diff(w, r); err != nil || !had || d != "" {
			t.Errorf("target %s: %v, %v (-want +got)\n%s", w.Target, had, err, d)
		}
		if of, err := tr.of(w.VolumeID); err != nil || !slices.Equal(of, []string{w.Target}) {
			t.Errorf("targets of %s: %v, %v", w.VolumeID, of, err)
		}
	}
	noMounts := func() ([]mount.Info, error) { return nil, nil }
	if !deviceBound(state, "/dev/loop3", noMounts) || deviceBound(state, "/dev/loop4", noMounts) {
		t.Error("the block publish's device, and only it, is bound")
	}
}

// This plinth writes the versions v0.1.0 reads: the version of each
// format is the one in every stage and publish record v0.1.0 wrote.
func TestWritesV010Versions(t *testing.T) {
	for _, c := range []struct {
		f    durable.Format
		glob string
	}{{stageRecords, "staged/*.json"}, {publishRecords, "targets/*.json"}} {
		files, _ := filepath.Glob(filepath.Join(v010, c.glob))
		if len(files) == 0 {
			t.Fatalf("no %s", c.glob)
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			var head map[string]json.RawMessage
			json.Unmarshal(b, &head)
			if string(head[c.f.Field]) != "1" || c.f.Version() != 1 {
				t.Errorf("%s: v0.1.0 wrote %s %s, this plinth writes %d", f, c.f.Field, head[c.f.Field], c.f.Version())
			}
		}
	}
	// And what it writes carries that version.
	dir := t.TempDir()
	st, tr := stagedRecords{dir: filepath.Join(dir, "staged")}, targetRecords{dir: filepath.Join(dir, "targets")}
	if err := st.put("pv-a", "/k/s"); err != nil {
		t.Fatal(err)
	}
	if err := tr.put(targetRecord{VolumeID: "pv-a", Target: "/k/t"}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{st.path("pv-a"), tr.path("/k/t")} {
		if b, _ := os.ReadFile(f); !strings.Contains(string(b), `"schema": 1,`) {
			t.Errorf("%s: %s", f, b)
		}
	}
}

// A stage or publish record of a newer version is refused wherever it is
// read, and neither replaced nor removed: the error names the file, its
// version and the newest this plinth reads.
func TestNewerStageAndPublishRecordsRefused(t *testing.T) {
	state := copyState(t)
	stagedFile := filepath.Join(state, "staged", v010Fs+".json")
	st := stagedRecords{dir: filepath.Join(state, "staged")}
	tr := targetRecords{dir: filepath.Join(state, "targets")}
	const target = "/tmp/rec/k8s/pods/blk-target"
	pubFile := tr.path(target)
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	files := map[string][]byte{}
	for _, f := range []string{stagedFile, pubFile} {
		b, _ := os.ReadFile(f)
		b = []byte(strings.Replace(string(b), `"schema": 1`, `"schema": 99`, 1))
		os.WriteFile(f, b, 0o600)
		os.Chtimes(f, old, old)
		files[f] = b
	}
	newer := func(what string, err error, path string) {
		t.Helper()
		var ne *durable.NewerError
		if !errors.As(err, &ne) || ne.Path != path || ne.Version != 99 || ne.Newest != 1 {
			t.Errorf("%s: %v, want a NewerError for %s", what, err, path)
		}
	}
	_, err := st.stagedAt(v010Fs)
	newer("stagedAt", err, stagedFile)
	_, err = st.all()
	newer("all staged", err, stagedFile)
	newer("stage again", st.put(v010Fs, "/elsewhere"), stagedFile)
	newer("unstage", st.drop(v010Fs), stagedFile)
	_, _, err = tr.get(target)
	newer("get", err, pubFile)
	_, err = tr.of(v010Fs) // another volume's: the newer record may be of any
	newer("targets of a volume", err, pubFile)
	newer("publish again", tr.put(targetRecord{VolumeID: v010Block, Target: target}), pubFile)
	newer("unpublish", tr.drop(target), pubFile)
	if !deviceBound(state, "/dev/loop9", func() ([]mount.Info, error) { return nil, nil }) {
		t.Error("a device was taken for free while a newer publish record may name it")
	}
	for f, b := range files {
		got, err := os.ReadFile(f)
		fi, _ := os.Stat(f)
		if err != nil || string(got) != string(b) || !fi.ModTime().Equal(old) {
			t.Errorf("%s changed: %q, %v, %v", f, got, err, fi.ModTime())
		}
	}
}
