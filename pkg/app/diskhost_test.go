package app

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/plinth-dev/plinth/pkg/disk"
	"github.com/plinth-dev/plinth/pkg/mount"
)

// A file pool's directory given as a symlink: the kernel shows the loop
// devices of its images by the resolved path, and they are plinth's
// volumes, never disks a rule could claim and wipe.
func TestOwnLoopDevicesBehindSymlinkAreNotDisks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices")
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		t.Skip("no losetup")
	}
	tmp := t.TempDir()
	real := filepath.Join(tmp, "real-pool")
	link := filepath.Join(tmp, "pool")
	rootReal := filepath.Join(tmp, "real-root")
	rootLink := filepath.Join(tmp, "root")
	for _, d := range []string{real, rootReal} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(rootReal, rootLink); err != nil {
		t.Fatal(err)
	}
	var imgs []string
	for _, dir := range []string{filepath.Join(link, "volumes"), filepath.Join(rootLink, "pools", "default", "volumes")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		img := filepath.Join(dir, "pv-1.img")
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 16<<20); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
		if err != nil {
			t.Fatalf("losetup: %v: %s", err, out)
		}
		dev := strings.TrimSpace(string(out))
		t.Cleanup(func() { _ = exec.Command("losetup", "-d", dev).Run() })
		imgs = append(imgs, filepath.Base(filepath.Dir(filepath.Dir(img))))
	}
	c := CSIConfig{Root: rootLink, SysfsRoot: "/sys", DevRoot: "/dev", Pools: []PoolSpec{{Name: "fast", Backend: "file", Dir: link}}}
	disks, err := disk.Scan(context.Background(), c.diskHost(), disk.Wipefs{Run: mount.Exec{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if strings.HasPrefix(d.BackingFile, real) || strings.HasPrefix(d.BackingFile, rootReal) {
			t.Errorf("plinth's own volume image %s is listed as disk %s (%s)", d.BackingFile, d.Name, d.ID)
		}
	}
}
