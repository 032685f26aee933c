package standalone

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

// plinth's root and an allowed directory given through symlinks (a hostile
// trial): a stage into the root's real path mounted a tenant's volume over
// plinth's templates directory, and an allowed directory spelled through a
// symlink refused every path.
func TestPlacesGivenThroughSymlinks(t *testing.T) {
	testenv.RequireHost(t)
	tmp := t.TempDir()
	realRoot, realKubelet := filepath.Join(tmp, "state-real"), filepath.Join(tmp, "kubelet-real")
	for _, d := range []string{realRoot, realKubelet} {
		if err := os.Mkdir(d, 0o750); err != nil {
			t.Fatal(err)
		}
	}
	rootLink, kubeletLink := filepath.Join(tmp, "state"), filepath.Join(tmp, "kubelet")
	os.Symlink(realRoot, rootLink)
	os.Symlink(realKubelet, kubeletLink)
	t.Cleanup(func() { testenv.Reboot(t, realKubelet); testenv.Reboot(t, realRoot) })
	cfg := app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(tmp, "csi.sock"), Root: rootLink,
		AllowedPaths: []string{kubeletLink, tmp},
	}}
	c := testenv.Dial(t, testenv.Standalone(t, cfg))
	ctx := context.Background()
	v, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{testenv.MountCap("ext4")}})
	if err != nil {
		t.Fatal(err)
	}
	id := v.GetVolume().GetVolumeId()
	stage := func(path string) error {
		_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: path, VolumeCapability: testenv.MountCap("ext4")})
		return err
	}
	for _, p := range []string{filepath.Join(realRoot, "templates"), filepath.Join(realRoot, "x"), filepath.Join(rootLink, "x")} {
		os.MkdirAll(p, 0o750)
		wantCode(t, "stage into plinth's root at "+p, stage(p), codes.InvalidArgument)
	}
	// The allowed directory through its symlink and by its real path.
	for _, p := range []string{filepath.Join(kubeletLink, "s1"), filepath.Join(realKubelet, "s1")} {
		if err := stage(p); err != nil {
			t.Errorf("stage at %s, below the allowed %s: %v", p, kubeletLink, err)
		}
	}
	if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(kubeletLink, "s1")}); err != nil {
		t.Errorf("unstage: %v", err)
	}
}
