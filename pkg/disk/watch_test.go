package disk

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A disk that goes while plinth runs is listed missing, with the pool that
// recorded it, at the next rescan (pkg/pool/guard turns that into an
// unhealthy or degraded pool).
func TestWatcherListsAGoneDiskMissing(t *testing.T) {
	h := writeMachine(t, machine(), machineMountinfo, machineSwaps)
	ctx := context.Background()
	disks, err := Scan(ctx, h, machineSignatures())
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Disk{}
	for _, d := range disks {
		byName[d.Name] = d
	}
	w := NewWatcher(h, machineSignatures(), 0, Plan{Decisions: []Decision{{Disk: byName["sdc"], Pool: "mirror"}, {Disk: byName["vda"], Pool: "mirror"}, {Disk: byName["nvme0n1"], Pool: "one"}}})
	if err := w.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"sdc", "vda", "nvme0n1"} {
		if _, ok := w.Find(byName[n].ID); !ok {
			t.Fatalf("%s not found before it goes", n)
		}
	}
	// The SAS disk and the NVMe drive go.
	for _, n := range []string{"sdc", "nvme0n1"} {
		if err := os.Remove(filepath.Join(h.Sysfs, "block", n)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Rescan(ctx); err != nil {
		t.Fatal(err)
	}
	for n, want := range map[string]bool{"sdc": false, "nvme0n1": false, "vda": true} {
		if _, ok := w.Find(byName[n].ID); ok != want {
			t.Errorf("after the rescan, Find(%s) = %v, want %v", n, ok, want)
		}
	}
	var missing []string
	for _, d := range w.Status() {
		if d.State == StateMissing {
			missing = append(missing, d.Name+"/"+d.Pool)
		}
	}
	if strings.Join(missing, ",") != "nvme0n1/one,sdc/mirror" {
		t.Errorf("missing disks %v", missing)
	}
}
