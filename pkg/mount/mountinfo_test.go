package mount

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestUnescape(t *testing.T) {
	for name, tc := range map[string]struct {
		in, want string
		bad      bool
	}{
		"nothing escaped":       {in: "/var/lib/kubelet", want: "/var/lib/kubelet"},
		"space":                 {in: `/a\040b`, want: "/a b"},
		"tab, newline":          {in: `/a\011b\012c`, want: "/a\tb\nc"},
		"backslash":             {in: `/a\134b`, want: `/a\b`},
		"escaped backslash 040": {in: `/a\134040`, want: `/a\040`},
		"hash":                  {in: `/a\043b`, want: "/a#b"},
		"at the end":            {in: `/a\040`, want: "/a "},
		"too short":             {in: `/a\04`, bad: true},
		"not octal":             {in: `/a\089`, bad: true},
		"over a byte":           {in: `/a\777`, bad: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := unescape(tc.in)
			if (err != nil) != tc.bad || got != tc.want {
				t.Errorf("unescape(%q) = %q, %v; want %q (error %t)", tc.in, got, err, tc.want, tc.bad)
			}
		})
	}
}

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

// The kernel escapes a space, a tab and a backslash in mountinfo's paths
// and sources (\040, \011, \134); mount-utils leaves them escaped, and
// Mounts undoes them: a mount at such a path, of such a source, is found
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
