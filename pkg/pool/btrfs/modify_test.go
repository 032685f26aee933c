package btrfs_test

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// A btrfs volume (a subvolume) takes IO limits, kept in the record a
// restarted pool reads; a change of provisioning is ErrInvalid, and the
// limits asked with it are not recorded either.
func TestModifyVolume(t *testing.T) {
	p, dir := newPool(t, "")
	ctx := context.Background()
	if _, err := p.CreateVolume(ctx, pool.Volume{ID: "v", Name: "v", CapacityBytes: limit, Mode: pool.ModeFilesystem, FsType: "btrfs"}); err != nil {
		t.Fatal(err)
	}
	l := &pool.IOLimits{ReadIOPS: 10, WriteBytesPerSecond: 1 << 20}
	if _, err := p.ModifyVolume(ctx, "v", pool.Mutable{Thick: true, IOLimits: l}); !errors.Is(err, pool.ErrInvalid) {
		t.Errorf("thick: %v, want ErrInvalid", err)
	}
	if v, _ := openPool(t, dir).GetVolume(ctx, "v"); v.Thick || v.IOLimits != nil {
		t.Errorf("refused change recorded: thick %v, limits %+v", v.Thick, v.IOLimits)
	}
	if _, err := p.ModifyVolume(ctx, "v", pool.Mutable{IOLimits: l}); err != nil {
		t.Fatal(err)
	}
	v, err := openPool(t, dir).GetVolume(ctx, "v")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(l, v.IOLimits); d != "" {
		t.Errorf("limits after a restart (-want +got):\n%s", d)
	}
	if err := p.DeleteVolume(ctx, "v"); err != nil {
		t.Fatal(err)
	}
}
