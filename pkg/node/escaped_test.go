package node

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// TestOwnershipSeesEscapedPaths: the mount table writes a space as \040
// and a backslash as \134 in mount points and sources. The checks that a
// mount is the volume's own, where it is published and whether it is
// mounted anywhere else compare the real names, so a volume staged and
// published at such paths is still seen as itself, and a foreign mount
// there is still foreign.
func TestOwnershipSeesEscapedPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real mounts")
	}
	dir := t.TempDir()
	staging, target, foreign := filepath.Join(dir, `stag ing\1`), filepath.Join(dir, `tar get\2`), filepath.Join(dir, `for eign\3`)
	for _, d := range []string{staging, target, foreign} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	// The volume's "device" is a tmpfs: its source names the device node,
	// and the node made here has the tmpfs's number.
	att := pool.Attachment{Device: filepath.Join(dir, `dev ice\0`)}
	if err := unix.Mount(att.Device, staging, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(staging, 0) })
	var st unix.Stat_t
	if err := unix.Stat(staging, &st); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mknod(att.Device, unix.S_IFBLK|0o600, int(st.Dev)); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(staging, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(target, 0) })
	if err := unix.Mount(att.Device+"x", foreign, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(foreign, 0) })

	p := NewMounts(nil, mount.NewHost(mount.Exec{}), "")
	for path, want := range map[string]bool{staging: true, target: true, foreign: false} {
		at, err := p.look(path)
		if err != nil || at.mount == nil {
			t.Fatalf("look(%q) = %+v, %v: no mount seen", path, at, err)
		}
		if own, _, err := p.host.owns(att, true, at.mount, path, false); err != nil || own != want {
			t.Errorf("owns(%q) = %t, %v; want %t", path, own, err, want)
		}
	}
	if got, err := p.host.publishedAt(att, staging, false); err != nil || !slices.Equal(got, []string{target}) {
		t.Errorf("publishedAt = %q, %v; want [%q]", got, err, target)
	}
	if err := p.host.notMountedElsewhere("pv-a", att, true, att, staging); !errors.Is(err, pool.ErrInUse) {
		t.Errorf("notMountedElsewhere with a publish at %q = %v, want ErrInUse", target, err)
	}
	unix.Unmount(target, 0)
	if err := p.host.notMountedElsewhere("pv-a", att, true, att, staging); err != nil {
		t.Errorf("notMountedElsewhere with only the staging mount = %v, want nil", err)
	}
}
