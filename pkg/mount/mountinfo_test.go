package mount

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

// A mount table as the kernel writes it: optional fields, a bind of a
// subdirectory, escaped paths and source.
func TestReadMounts(t *testing.T) {
	table := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(table, []byte(
		"22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"+
			`98 22 7:3 /sub\040dir /k/tar\040get\134x rw,nosuid,nodev,relatime shared:40 master:3 - ext4 /dev/loop3 rw`+"\n"+
			`99 98 0:55 / /k/a\011b ro,relatime - tmpfs my\040src rw,size=1024k`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMounts(table)
	if err != nil {
		t.Fatal(err)
	}
	want := []Info{
		{ID: 22, Parent: 1, Major: 0, Minor: 21, Root: "/", Mountpoint: "/proc", Options: "rw,nosuid,nodev,noexec,relatime", FSType: "proc", Source: "proc"},
		{ID: 98, Parent: 22, Major: 7, Minor: 3, Root: "/sub dir", Mountpoint: `/k/tar get\x`, Options: "rw,nosuid,nodev,relatime", FSType: "ext4", Source: "/dev/loop3"},
		{ID: 99, Parent: 98, Major: 0, Minor: 55, Root: "/", Mountpoint: "/k/a\tb", Options: "ro,relatime", FSType: "tmpfs", Source: "my src"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ReadMounts (-want +got):\n%s", d)
	}
	for dir, under := range map[string]bool{"/k": true, "/k/a\tb": true, "/k/a": false, "/": true, "/proc/x": false} {
		if got[2].Under(dir) != under {
			t.Errorf("%q under %q = %t, want %t", got[2].Mountpoint, dir, !under, under)
		}
	}
}

// What the kernel writes but does not escape must not split a field: a
// mount with an empty source ("tmpfs  rw"), and a bind whose root (a
// tenant's subPath) holds a carriage return, a no-break space or an
// ideographic space, even one that spells out a whole forged entry.
func TestReadMountsFieldsAreSplitAtSpacesOnly(t *testing.T) {
	nb := "\u00a0"
	forged := "/loop250" + nb + "/x" + nb + "rw" + nb + "-" + nb + "devtmpfs" + nb + "udev" + nb + "rw"
	table := filepath.Join(t.TempDir(), "mountinfo")
	if err := os.WriteFile(table, []byte(
		"45 27 0:40 / /tmp/x rw,relatime - tmpfs  rw\n"+
			"46 27 0:41 /x\r/k/victim /k/sub1 rw,relatime - tmpfs tmpfs rw\n"+
			"47 27 0:41 /x\u3000/k/victim /k/sub2 rw,relatime - tmpfs tmpfs rw\n"+
			"48 27 0:41 "+forged+" /k/sub3 rw,relatime shared:1 - tmpfs tmpfs rw\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := ReadMounts(table)
	if err != nil {
		t.Fatal(err)
	}
	want := []Info{
		{ID: 45, Parent: 27, Major: 0, Minor: 40, Root: "/", Mountpoint: "/tmp/x", Options: "rw,relatime", FSType: "tmpfs", Source: ""},
		{ID: 46, Parent: 27, Major: 0, Minor: 41, Root: "/x\r/k/victim", Mountpoint: "/k/sub1", Options: "rw,relatime", FSType: "tmpfs", Source: "tmpfs"},
		{ID: 47, Parent: 27, Major: 0, Minor: 41, Root: "/x\u3000/k/victim", Mountpoint: "/k/sub2", Options: "rw,relatime", FSType: "tmpfs", Source: "tmpfs"},
		{ID: 48, Parent: 27, Major: 0, Minor: 41, Root: forged, Mountpoint: "/k/sub3", Options: "rw,relatime", FSType: "tmpfs", Source: "tmpfs"},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("ReadMounts (-want +got):\n%s", d)
	}
	for _, m := range got {
		if m.BindsDevice("/dev/loop250") {
			t.Errorf("%+v reads as a bind of /dev/loop250", m)
		}
	}
}

// A mount of an empty source, which mount(2) allows, is read like any
// other: the table stays readable and the mount is found.
func TestMountOfAnEmptySource(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real mounts")
	}
	dir := t.TempDir()
	if err := unix.Mount("", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, 0) })
	m, ok, err := NewHost(nil).MountOf(dir)
	if err != nil || !ok || m.FSType != "tmpfs" || m.Source != "" {
		t.Errorf("MountOf(%s) = %+v, %t, %v; want the tmpfs of an empty source", dir, m, ok, err)
	}
	if _, err := Mounts(); err != nil {
		t.Errorf("Mounts with an empty source in the table: %v", err)
	}
}

// The kernel escapes a space, a tab and a backslash in mountinfo's paths
// and sources (\040, \011, \134), and Mounts undoes them: a mount at such a path, of such a source, is found
// by its real names.
func TestMountsAtEscapedPaths(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: real mounts")
	}
	dir := filepath.Join(t.TempDir(), "a b\\c\td")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	const source = `plinth test\src`
	if err := unix.Mount(source, dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, 0) })
	sub, bind := filepath.Join(dir, "sub dir"), filepath.Join(filepath.Dir(dir), "bind\\ed here")
	for _, d := range []string{sub, bind} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(sub, bind, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(bind, 0) })

	m, ok, err := NewHost(Exec{}).MountOf(dir)
	if err != nil || !ok {
		t.Fatalf("MountOf(%q) = %v, %v", dir, ok, err)
	}
	if m.Mountpoint != dir || m.Source != source || m.FSType != "tmpfs" || m.Root != "/" {
		t.Errorf("mount at %q read as %+v", dir, m)
	}
	at, err := MountsAt(bind)
	if err != nil || len(at) != 1 {
		t.Fatalf("MountsAt(%q) = %+v, %v", bind, at, err)
	}
	if at[0].Root != "/sub dir" || at[0].Source != source || at[0].Major != m.Major || at[0].Minor != m.Minor {
		t.Errorf("bind at %q read as %+v", bind, at[0])
	}
	if src, err := IsMountSource(sub); err != nil || !src {
		t.Errorf("IsMountSource(%q) = %v, %v; want true", sub, src, err)
	}
}

// Top is the mount a path shows: the one none of the others at the path is
// stacked on, wherever the table lists it.
func TestTop(t *testing.T) {
	own := Info{ID: 40, Parent: 20, FSType: "ext4", Mountpoint: "/k/staging"}
	over := Info{ID: 41, Parent: 40, FSType: "tmpfs", Mountpoint: "/k/staging"}
	overOver := Info{ID: 42, Parent: 41, FSType: "tmpfs", Mountpoint: "/k/staging"}
	for name, tc := range map[string]struct {
		mounts []Info
		want   int // ID; 0 for none
	}{
		"none":                         {nil, 0},
		"one":                          {[]Info{own}, 40},
		"a tmpfs on the volume's":      {[]Info{own, over}, 41},
		"three stacked":                {[]Info{own, over, overOver}, 42},
		"listed out of order":          {[]Info{overOver, own, over}, 42},
		"the cover listed before it":   {[]Info{over, own}, 41},
		"stacked twice on its own one": {[]Info{own, {ID: 43, Parent: 40, FSType: "ext4"}}, 43},
	} {
		t.Run(name, func(t *testing.T) {
			got := Top(tc.mounts)
			switch {
			case tc.want == 0 && got != nil:
				t.Errorf("Top = %+v, want none", got)
			case tc.want != 0 && (got == nil || got.ID != tc.want):
				t.Errorf("Top = %+v, want ID %d", got, tc.want)
			}
		})
	}
}
