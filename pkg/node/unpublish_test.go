package node

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/plinth-dev/plinth/pkg/mount"
)

// TestUnpublishGoneRemovesOnlyBelowAllowedRoot: the empty target of a
// volume this node does not know is removed only when the caller says it
// lies below an allowed root; either way the answer is OK.
func TestUnpublishGoneRemovesOnlyBelowAllowedRoot(t *testing.T) {
	dir, _, local := filePool(t)
	p := NewMounts(local, mount.NewHost(mount.Exec{}), filepath.Join(dir, "state"))
	for _, under := range []bool{false, true} {
		target := filepath.Join(dir, "target")
		if err := os.Mkdir(target, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := p.Unpublish(context.Background(), "pv-gone", target, under); err != nil {
			t.Fatalf("under an allowed root %v: %v", under, err)
		}
		_, err := os.Lstat(target)
		if gone := errors.Is(err, os.ErrNotExist); gone != under {
			t.Errorf("under an allowed root %v: target removed %v (%v)", under, gone, err)
		}
		os.Remove(target)
	}
}
