package node

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/plinth-dev/plinth/pkg/iolimit"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// A btrfs subvolume's IO goes to every device of its filesystem, read
// from the sysfs the node was told of (--sysfs-root), not the host's.
func TestFilesystemDevicesFromSysfsRoot(t *testing.T) {
	root := t.TempDir()
	sysfs := filepath.Join(root, "sys")
	dev := filepath.Join(root, "dev")
	for _, fs := range []struct {
		uuid string
		devs map[string]string
	}{
		{"1111-other", map[string]string{"loop9": "7:9"}},
		{"2222-pool", map[string]string{"loop5": "7:5", "loop6": "7:6"}},
	} {
		for name, num := range fs.devs {
			d := filepath.Join(sysfs, "fs", "btrfs", fs.uuid, "devices", name)
			if err := os.MkdirAll(d, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, "dev"), []byte(num+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.MkdirAll(dev, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dev, "loop5"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	m := &mount.Info{FSType: "btrfs", Source: filepath.Join(dev, "loop5"), Mountpoint: "/pool"}
	got, err := filesystemDevices(sysfs, m)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b iolimit.Device) int { return int(a.Minor) - int(b.Minor) })
	if want := []iolimit.Device{{Major: 7, Minor: 5}, {Major: 7, Minor: 6}}; !slices.Equal(got, want) {
		t.Errorf("devices %v, want %v (both of the pool's filesystem, not the other's)", got, want)
	}
	if _, err := filesystemDevices(filepath.Join(root, "elsewhere"), m); err == nil {
		t.Error("devices found without a sysfs tree")
	}
}
