package volume

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// NewCreateRequest is the one check both front doors (CSI CreateVolume
// and the provisioner's PVCs) go through.
func TestNewCreateRequest(t *testing.T) {
	ok := Ask{Name: "pvc-1", RequiredBytes: 64 << 20, Parameters: map[string]string{"pool": "fast"}}
	with := func(f func(*Ask)) Ask { a := ok; a.Parameters = map[string]string{"pool": "fast"}; f(&a); return a }
	for name, tc := range map[string]struct {
		ask  Ask
		want CreateRequest
		err  error
	}{
		"filesystem, pool's default fs": {ask: ok, want: CreateRequest{Name: "pvc-1", RequiredBytes: 64 << 20, Mode: pool.ModeFilesystem, Params: Params{Pool: "fast"}}},
		"block drops the fs type": {ask: with(func(a *Ask) { a.Block, a.FsType = true, "xfs" }),
			want: CreateRequest{Name: "pvc-1", RequiredBytes: 64 << 20, Mode: pool.ModeBlock, Params: Params{Pool: "fast"}}},
		"owner from the sidecar's metadata": {ask: with(func(a *Ask) {
			a.Parameters["csi.storage.k8s.io/pvc/name"], a.Parameters["csi.storage.k8s.io/pvc/namespace"] = "data", "ns"
		}), want: CreateRequest{Name: "pvc-1", RequiredBytes: 64 << 20, Mode: pool.ModeFilesystem, Params: Params{Pool: "fast"}, Owner: "ns/data"}},
		"topology deduplicated, order kept": {ask: with(func(a *Ask) { a.Requisite, a.Preferred = []string{"b", "a", "b"}, []string{"a", "a"} }),
			want: CreateRequest{Name: "pvc-1", RequiredBytes: 64 << 20, Mode: pool.ModeFilesystem, Params: Params{Pool: "fast"}, Requisite: []string{"b", "a"}, Preferred: []string{"a"}}},
		"no name":                   {ask: with(func(a *Ask) { a.Name = "" }), err: pool.ErrInvalid},
		"name too long":             {ask: with(func(a *Ask) { a.Name = strings.Repeat("x", 1025) }), err: pool.ErrInvalid},
		"name not UTF-8":            {ask: with(func(a *Ask) { a.Name = "\xff" }), err: pool.ErrInvalid},
		"negative capacity":         {ask: with(func(a *Ask) { a.RequiredBytes = -1 }), err: pool.ErrInvalid},
		"multi-node access":         {ask: with(func(a *Ask) { a.MultiNode = true }), err: pool.ErrInvalid},
		"unknown parameter":         {ask: with(func(a *Ask) { a.Parameters["poool"] = "x" }), err: pool.ErrInvalid},
		"bad backend":               {ask: with(func(a *Ask) { a.Parameters["backend"] = "lvm" }), err: pool.ErrInvalid},
		"fs type plinth can't make": {ask: with(func(a *Ask) { a.FsType = "ntfs" }), err: pool.ErrInvalid},
		"source is both":            {ask: with(func(a *Ask) { a.Source = &pool.Source{SnapshotID: "sn-a", VolumeID: "pv-a"} }), err: pool.ErrInvalid},
		"source is neither":         {ask: with(func(a *Ask) { a.Source = &pool.Source{} }), err: pool.ErrInvalid},
		"source ID no volume has":   {ask: with(func(a *Ask) { a.Source = &pool.Source{VolumeID: "../etc"} }), err: pool.ErrNotFound},
		"empty node in topology":    {ask: with(func(a *Ask) { a.Requisite = []string{""} }), err: pool.ErrInvalid},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := NewCreateRequest(tc.ask)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tc.want, got); d != "" {
				t.Errorf("request (-want +got):\n%s", d)
			}
		})
	}
}
