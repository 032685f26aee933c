package file

import (
	"os"
	"path/filepath"
	"testing"
)

// The reflink probe leaves nothing in the pool directory, removes what an
// interrupted probe left, and answers as cloneFile finds.
func TestReflinkProbeLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, probePrefix+"stale"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	ok, err := reflinkSupported(dir)
	if err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 0 {
		t.Errorf("left in the pool directory: %v", entries)
	}
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	reflinked, err := cloneFile(filepath.Join(dir, "dst"), src)
	if err != nil {
		t.Fatal(err)
	}
	if ok != reflinked {
		t.Errorf("probe says reflink %v, a clone in the same directory says %v", ok, reflinked)
	}
}
