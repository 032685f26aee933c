package standalone

import (
	"context"
	"os"
	"syscall"
	"testing"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/plinth-dev/plinth/test/testenv"
)

// TestVolumeMountGroup: a volume staged with volume_mount_group is writable
// by that group at its root, and new files inherit the group (setgid).
func TestVolumeMountGroup(t *testing.T) {
	e := newEnv(t)
	c := testenv.Dial(t, testenv.Standalone(t, e.cfg))
	for _, pool := range []string{"fext4", "bt"} {
		t.Run(pool, func(t *testing.T) {
			cap := &csi.VolumeCapability{
				AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{VolumeMountGroup: "4321"}},
				AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
			}
			v := &vol{name: "group-" + pool, pool: pool, cap: cap, size: 64 << 20}
			create(t, c, v)
			target := e.stagePublish(t, c, v)
			fi, err := os.Stat(target)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if st.Gid != 4321 || fi.Mode()&os.ModeSetgid == 0 || fi.Mode().Perm()&0o070 != 0o070 {
				t.Errorf("volume root: gid %d mode %v, want gid 4321, g+rwx, setgid", st.Gid, fi.Mode())
			}
			e.unpublishUnstage(t, c, v)
			if _, err := c.DeleteVolume(context.Background(), &csi.DeleteVolumeRequest{VolumeId: v.id}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
