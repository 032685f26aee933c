package standalone

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/test/testenv"
)

// TestSameVolumeInParallel fires many concurrent calls at one name and one
// volume ID. Each call succeeds or is told to retry (ABORTED); after the CO
// retries, the volume ends in one consistent state. The whole test runs
// under a deadline, so a deadlock fails it instead of hanging.
func TestSameVolumeInParallel(t *testing.T) {
	e := newEnv(t)
	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	v := &vol{name: "contended", pool: "fext4", cap: testenv.MountCap(""), size: 32 << 20}
	req := &csi.CreateVolumeRequest{Name: v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: v.size},
		VolumeCapabilities: []*csi.VolumeCapability{v.cap}, Parameters: map[string]string{"pool": v.pool}}
	staging, target := e.paths(v)

	// retry calls f until it is not ABORTED, as a CO does.
	retry := func(f func() error) error {
		for {
			err := f()
			if status.Code(err) != codes.Aborted || ctx.Err() != nil {
				return err
			}
			time.Sleep(time.Millisecond)
		}
	}
	parallel := func(n int, f func() error) (codesSeen map[codes.Code]int) {
		var mu sync.Mutex
		codesSeen = map[codes.Code]int{}
		var wg sync.WaitGroup
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := retry(f)
				mu.Lock()
				codesSeen[status.Code(err)]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		return codesSeen
	}

	ids := make(chan string, 16)
	seen := parallel(16, func() error {
		r, err := c.CreateVolume(ctx, req)
		if err == nil {
			ids <- r.GetVolume().GetVolumeId()
		}
		return err
	})
	close(ids)
	if seen[codes.OK] != 16 {
		t.Fatalf("parallel creates: %v", seen)
	}
	for id := range ids {
		if v.id == "" {
			v.id = id
		} else if id != v.id {
			t.Fatalf("parallel creates returned %s and %s", v.id, id)
		}
	}
	if seen := parallel(8, func() error {
		_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, VolumeCapability: v.cap})
		return err
	}); seen[codes.OK] != 8 {
		t.Fatalf("parallel stages: %v", seen)
	}
	if seen := parallel(8, func() error {
		_, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: v.id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: v.cap})
		return err
	}); seen[codes.OK] != 8 {
		t.Fatalf("parallel publishes: %v", seen)
	}
	if seen := parallel(8, func() error {
		_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: v.id, CapacityRange: &csi.CapacityRange{RequiredBytes: 2 * v.size}})
		return err
	}); seen[codes.OK] != 8 {
		t.Fatalf("parallel expands: %v", seen)
	}
	// One mount at staging, one at the target, one loop device: not a
	// stack of mounts or a second attachment.
	kinds := map[string]int{}
	for _, l := range leaksUnder(t, e) {
		kinds[strings.Fields(l)[0]]++
	}
	if kinds["mount"] != 2 || kinds["loop"] != 1 || kinds["file"] != 2 {
		t.Fatalf("after parallel stage/publish: %v", leaksUnder(t, e))
	}
	// Delete races with the teardown: it fails (in use) until unstaged.
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		parallel(8, func() error {
			_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: target})
			return err
		})
		parallel(8, func() error {
			_, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: staging})
			return err
		})
	}()
	for ctx.Err() == nil {
		_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
		if err == nil {
			break
		}
		if c := status.Code(err); c != codes.FailedPrecondition && c != codes.Aborted {
			t.Fatalf("delete: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	wg.Wait()
	if ctx.Err() != nil {
		t.Fatal("deadline passed: a call never finished")
	}
	if l := leaksUnder(t, e); len(l) != 0 {
		t.Fatalf("left behind: %v", l)
	}
}
