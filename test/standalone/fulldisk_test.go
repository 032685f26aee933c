package standalone

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

// fill writes a file on fs until less than leave bytes are free.
func fill(t *testing.T, path string, leave int64) {
	t.Helper()
	var st unix.Statfs_t
	unix.Statfs(filepath.Dir(path), &st)
	free := int64(st.Bavail) * st.Bsize
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := free - leave; n > 0 {
		fi, _ := f.Stat()
		if err := unix.Fallocate(int(f.Fd()), 0, fi.Size(), n); err != nil {
			t.Fatalf("fill: %v", err)
		}
	}
}

// TestFullDisk fills the pool's filesystem from outside plinth: creates and
// expansions that do not fit fail with RESOURCE_EXHAUSTED and leave nothing
// behind, also when the filesystem fills up while they run; once space is
// freed, plinth serves on.
func TestFullDisk(t *testing.T) {
	testenv.RequireHost(t)
	backing := testenv.Filesystem(t, "xfs", 1<<30)
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	os.MkdirAll(kubelet, 0o750)
	poolDir := filepath.Join(backing, "pool")
	os.MkdirAll(poolDir, 0o700) // plinth refuses a missing pool directory
	e := &env{root: kubelet, poolDirs: []string{poolDir}}
	sock := testenv.Standalone(t, app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(root, "csi.sock"), Root: filepath.Join(root, "state"),
		Pools: []app.PoolSpec{{Name: "small", Backend: "file", Dir: poolDir}}, AllowedPaths: []string{kubelet},
	}})
	c := testenv.Dial(t, sock)
	ctx := context.Background()
	filler := filepath.Join(backing, "filler")
	mk := func(name string, size int64, thick bool) error {
		params := map[string]string{"pool": "small"}
		if thick {
			params["provisioning"] = "thick"
		}
		_, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
			VolumeCapabilities: []*csi.VolumeCapability{testenv.BlockCap()}, Parameters: params})
		return err
	}
	exhausted := func(what string, err error) {
		t.Helper()
		if status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("%s: %v, want RESOURCE_EXHAUSTED", what, err)
		}
	}

	// 100 MiB left: 200 MiB fits neither thick nor thin (a thin volume's
	// capacity is promised too).
	fill(t, filler, 100<<20)
	before := leaksUnder(t, e)
	exhausted("thick 200Mi", mk("thick-big", 200<<20, true))
	exhausted("thin 200Mi", mk("thin-big", 200<<20, false))
	if err := mk("fits", 64<<20, true); err != nil {
		t.Fatalf("64Mi thick with 100Mi free: %v", err)
	}
	_, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: volumeIDOf("fits"), CapacityRange: &csi.CapacityRange{RequiredBytes: 300 << 20}})
	exhausted("expand to 300Mi", err)
	if v, _ := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: volumeIDOf("fits")}); v.GetVolume().GetCapacityBytes() != 64<<20 {
		t.Fatalf("failed expansion changed the capacity to %d", v.GetVolume().GetCapacityBytes())
	}
	if after := leaksUnder(t, e); len(after) != len(before)+2 { // the one volume's image and record
		t.Fatalf("refused requests left files: %v", after)
	}

	// The filesystem fills while creates and expansions run.
	os.Remove(filler)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f, err := os.Create(filler)
		if err != nil {
			return
		}
		defer f.Close()
		chunk := make([]byte, 1<<20)
		for {
			if _, err := f.Write(chunk); err != nil {
				return // ENOSPC
			}
		}
	}()
	var mu sync.Mutex
	created := map[string]bool{}
	var bad []string
	for i := 0; i < 12; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := fmt.Sprintf("race-%d", i)
			err := mk(name, 48<<20, true)
			if err == nil {
				_, err = c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: volumeIDOf(name), CapacityRange: &csi.CapacityRange{RequiredBytes: 96 << 20}})
				mu.Lock()
				created[name] = true
				mu.Unlock()
			}
			if err != nil && status.Code(err) != codes.ResourceExhausted {
				mu.Lock()
				bad = append(bad, fmt.Sprintf("%s: %v", name, err))
				mu.Unlock()
			}
		}(i)
	}
	wg.Wait()
	if len(bad) > 0 {
		t.Fatalf("errors other than RESOURCE_EXHAUSTED on a filling disk: %v", bad)
	}
	// Nothing half-made: every record is ready, its image exactly its
	// capacity, no temp files; only the volumes whose create succeeded.
	list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(list.GetEntries()) != len(created)+1 {
		t.Fatalf("%d volumes listed, %d creates succeeded (+1)", len(list.GetEntries()), len(created))
	}
	for _, en := range list.GetEntries() {
		v := en.GetVolume()
		fi, err := os.Stat(filepath.Join(poolDir, "volumes", v.GetVolumeId()+".img"))
		if err != nil || fi.Size() != v.GetCapacityBytes() {
			t.Errorf("volume %s: image %v (%v), record says %d bytes", v.GetVolumeId(), fi, err, v.GetCapacityBytes())
		}
	}
	for _, l := range leaksUnder(t, e) {
		if strings.Contains(l, ".tmp") {
			t.Errorf("half-made: %s", l)
		}
	}
	t.Logf("on a filling disk: %d of 12 creates succeeded, the rest RESOURCE_EXHAUSTED, nothing half-made", len(created))

	// Space is freed (the filler, and the volumes that won the race, which
	// may hold most of the pool): plinth serves on.
	os.Remove(filler)
	for name := range created {
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: volumeIDOf(name)}); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}
	// xfs gives a removed file's blocks back in the background: wait for
	// the space to show, as a CO's retries would.
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		err := mk("after", 128<<20, true)
		if status.Code(err) == codes.ResourceExhausted {
			return false, nil
		}
		return true, err
	}); err != nil {
		t.Fatalf("create after freeing space: %v", err)
	}
	v := &vol{name: "after", pool: "small", cap: testenv.BlockCap(), size: 128 << 20, id: volumeIDOf("after")}
	writeData(t, v, e.stagePublish(t, c, v), []byte("still serving"))
	e.unpublishUnstage(t, c, v)
	for _, en := range list.GetEntries() {
		c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: en.GetVolume().GetVolumeId()})
	}
	c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.id})
	if l := leaksUnder(t, e); len(l) != 0 {
		t.Errorf("left behind: %v", l)
	}
}
