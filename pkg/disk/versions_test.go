package disk_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/durable"
)

// v010 holds the records plinth v0.1.0 wrote (testdata/records/v0.1.0,
// its README says how they were made): the claims of a btrfs pool and of
// a disk pool, each on a loop disk.
const v010 = "../../testdata/records/v0.1.0"

func copyClaims(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "claims")
	if err := os.CopyFS(dir, os.DirFS(filepath.Join(v010, "disks", "claims"))); err != nil {
		t.Fatal(err)
	}
	return dir
}

// The claim records v0.1.0 wrote are read as they were written, and this
// plinth writes the version they carry.
func TestV010ClaimRecords(t *testing.T) {
	claims, err := disk.Records{Dir: copyClaims(t)}.Load()
	if err != nil {
		t.Fatal(err)
	}
	want := []disk.Claim{
		{Schema: 1, Pool: "bt", Layout: disk.LayoutBtrfs, Raid: "single", State: disk.ClaimReady, UUID: "650d41b2-e327-403e-a84f-685d8c762802",
			Disks: []disk.Member{{ID: "file:/tmp/rec/btrfs-disk.img", Name: "loop0", SizeBytes: 200 << 20}}},
		{Schema: 1, Pool: "whole", Layout: disk.LayoutDisk, FsType: "ext4", State: disk.ClaimReady,
			Disks: []disk.Member{{ID: "file:/tmp/rec/whole-disk.img", Name: "loop1", SizeBytes: 64 << 20}}},
	}
	if d := cmp.Diff(want, claims, cmpopts.IgnoreFields(disk.Claim{}, "CreatedAt")); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	for _, c := range claims {
		if c.Schema != disk.ClaimRecords.Version() {
			t.Errorf("v0.1.0 wrote claim version %d, this plinth writes %d", c.Schema, disk.ClaimRecords.Version())
		}
	}
}

// A claim record of a newer version: the pool stands unhealthy with the
// reason (the file, its version, the newest this plinth reads), no disk is
// claimed for any pool while it stays, and the record is neither replaced
// nor removed.
func TestNewerClaimRecord(t *testing.T) {
	dir := copyClaims(t)
	rec := filepath.Join(dir, "bt.json")
	b, _ := os.ReadFile(rec)
	b = []byte(strings.Replace(string(b), `"schema": 1`, `"schema": 99`, 1))
	os.WriteFile(rec, b, 0o600)
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	os.Chtimes(rec, old, old)

	r := disk.Records{Dir: dir}
	claims, err := r.Load()
	if err != nil || len(claims) != 2 {
		t.Fatalf("Load = %+v, %v", claims, err)
	}
	says := []string{"claim record " + rec, "version 99", "up to 1"}
	for _, s := range says {
		if !strings.Contains(claims[0].Unreadable, s) {
			t.Errorf("bt: unreadable %q does not say %q", claims[0].Unreadable, s)
		}
	}
	cfg := disk.Config{Rules: []disk.Rule{
		{Pool: "bt", Layout: disk.LayoutBtrfs, Select: disk.Selector{Transports: []disk.Transport{disk.TransportLoop}}},
		{Pool: "other", Layout: disk.LayoutDisk, Select: disk.Selector{Transports: []disk.Transport{disk.TransportLoop}}},
	}}
	free := disk.Disk{Name: "loop7", ID: "file:/var/free.img", Device: "/dev/loop7", Transport: disk.TransportLoop, SizeBytes: 1 << 30, State: disk.StateFree}
	plan := disk.MakePlan(cfg, []disk.Disk{free}, claims)
	for _, pp := range plan.Pools {
		if len(pp.New) > 0 {
			t.Errorf("pool %s claims %v while a record cannot be read", pp.Name, pp.New)
		}
		if pp.Name == "bt" && !strings.Contains(pp.Problem, "version 99") {
			t.Errorf("bt: problem %q", pp.Problem)
		}
	}
	ready := disk.Claimer{Records: r, MountDir: t.TempDir()}.Apply(context.Background(), plan)
	for _, rd := range ready {
		if rd.Name == "bt" && (rd.Err == nil || !strings.Contains(rd.Err.Error(), "version 99")) {
			t.Errorf("bt: ready %+v", rd)
		}
	}
	if err := r.Put(disk.Claim{Pool: "bt", Layout: disk.LayoutBtrfs, State: disk.ClaimReady}); !errors.Is(err, durable.ErrNewer) {
		t.Errorf("Put over a newer record: %v", err)
	}
	if err := r.Drop("bt"); !errors.Is(err, durable.ErrNewer) {
		t.Errorf("Drop of a newer record: %v", err)
	}
	got, err := os.ReadFile(rec)
	fi, _ := os.Stat(rec)
	if err != nil || string(got) != string(b) || !fi.ModTime().Equal(old) {
		t.Errorf("%s changed: %q, %v, %v", rec, got, err, fi.ModTime())
	}
}
