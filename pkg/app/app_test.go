package app

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParsePoolSpec(t *testing.T) {
	p, err := ParsePoolSpec("name=fast,backend=file,dir=/mnt/fast,fstype=xfs")
	if err != nil || p != (PoolSpec{Name: "fast", Backend: "file", Dir: "/mnt/fast", FsType: "xfs"}) {
		t.Fatalf("%+v %v", p, err)
	}
	p, err = ParsePoolSpec("name=snaps,backend=btrfs,dir=/mnt/btrfs,mountpoint=true")
	if err != nil || p != (PoolSpec{Name: "snaps", Backend: "btrfs", Dir: "/mnt/btrfs", MountPoint: true}) {
		t.Fatalf("%+v %v", p, err)
	}
	for _, bad := range []string{
		"name=fast,backend=file",                      // no dir
		"name=../x,backend=file,dir=/mnt",             // name escapes
		"name=fast,backend=lvm,dir=/mnt",              // backend
		"name=fast,backend=file,dir=mnt",              // relative
		"name=fast,backend=file,dir=/mnt/../etc",      // not clean
		"name=fast,backend=file,dir=/mnt,size=1",      // unknown key
		"name=fast,backend=btrfs,dir=/mnt,fstype=xfs", // btrfs volumes are btrfs
		"name=fast,backend=file,dir=/mnt,fstype=ntfs",
		"name=fast,backend=file,dir=/mnt,mountpoint=yes",
		"name=fast,backend=file,dir=/mnt,mountpoint=1",
		"fast",
	} {
		if _, err := ParsePoolSpec(bad); err == nil {
			t.Errorf("ParsePoolSpec(%q) accepted", bad)
		}
	}
}

func parseNode(t *testing.T, args ...string) (NodeConfig, error) {
	t.Helper()
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	var c NodeConfig
	c.Flags(fs)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestNodeConfig(t *testing.T) {
	c, err := parseNode(t, "--root", "/var/lib/plinth", "--health-recover-after", "3s")
	if err != nil {
		t.Fatal(err)
	}
	if c.Endpoint != "unix:///var/lib/kubelet/plugins/plinth.example.com/csi.sock" || c.AllowedPaths[0] != "/var/lib/kubelet" {
		t.Errorf("defaults: endpoint %s allowed %v", c.Endpoint, c.AllowedPaths)
	}
	dc, err := c.deviceConfig()
	if err != nil || dc.Health.RecoverAfter.Duration != 3*time.Second || dc.Health.Interval.Duration != 5*time.Second {
		t.Errorf("flag over defaults: %+v %v", dc.Health, err)
	}
	file := filepath.Join(t.TempDir(), "devices.yaml")
	os.WriteFile(file, []byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nhealth: {interval: 30s}\nresources: [{name: example.com/accel, selector: {classes: ['0x12']}}]\n"), 0o644)
	c, err = parseNode(t, "--device-config", file, "--health-interval", "2s")
	if err != nil {
		t.Fatal(err)
	}
	if dc, _ := c.deviceConfig(); dc.Health.Interval.Duration != 2*time.Second || dc.Resources[0].Name != "example.com/accel" {
		t.Errorf("flag over file: %+v", dc)
	}
	for name, args := range map[string][]string{
		"nothing to serve":      {"--csi=false", "--devices=false"},
		"relative sysfs root":   {"--sysfs-root", "sys"},
		"missing device config": {"--device-config", "/nonexistent.yaml"},
		"bad health flag":       {"--health-interval", "1ms"},
		"relative CDI dir":      {"--cdi-dir", "cdi"},
	} {
		if _, err := parseNode(t, args...); err == nil {
			t.Errorf("%s: accepted %v", name, args)
		}
	}
	// api: dra publishes through the API server and injects through CDI.
	draFile := filepath.Join(t.TempDir(), "dra.yaml")
	os.WriteFile(draFile, []byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, api: dra, selector: {drivers: [nvidia]}}]\n"), 0o644)
	for flags, want := range map[string]string{"--cluster=false": "needs --cluster", "--cdi-dir=": "--cdi-dir must not be empty"} {
		if _, err := parseNode(t, "--device-config", draFile, flags); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("api: dra with %s: %v, want %q", flags, err, want)
		}
	}
	if _, err := parseNode(t, "--device-config", draFile, "--devices=false", "--cluster=false"); err != nil {
		t.Errorf("api: dra with --devices=false (no devices served) refused: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, selector: {vendors: [nvidia]}}]\n"), 0o644)
	if _, err := parseNode(t, "--device-config", bad); err == nil || !strings.Contains(err.Error(), "resources[0].selector.vendors[0]") {
		t.Errorf("invalid file: %v, want the field named", err)
	}
}

// Pools whose directories overlap (one equal to or below another) would
// read and clean each other's records: refused.
func TestOverlappingPools(t *testing.T) {
	for name, tc := range map[string]struct {
		dirs []string
		ok   bool
	}{
		"apart":          {[]string{"/mnt/a", "/mnt/b"}, true},
		"common prefix":  {[]string{"/mnt/a", "/mnt/ab"}, true},
		"same":           {[]string{"/mnt/a", "/mnt/a"}, false},
		"below":          {[]string{"/mnt/a", "/mnt/a/b"}, false},
		"above":          {[]string{"/mnt/a/b/c", "/mnt/a"}, false},
		"root and below": {[]string{"/", "/mnt"}, false},
	} {
		c := CSIConfig{Root: "/var/lib/plinth", NodeID: "n"}
		for i, d := range tc.dirs {
			c.Pools = append(c.Pools, PoolSpec{Name: fmt.Sprintf("p%d", i), Backend: "file", Dir: d})
		}
		err := c.Validate()
		if tc.ok != (err == nil) {
			t.Errorf("%s %v: %v", name, tc.dirs, err)
		} else if err != nil && !strings.Contains(err.Error(), "overlap") {
			t.Errorf("%s: %v, want it to say the pools overlap", name, err)
		}
	}
}

// A missing pool directory is refused and nothing is created, except below
// the root (plinth's own); a file is not a directory; mountpoint=true
// refuses a plain directory.
func TestCheckPoolDirs(t *testing.T) {
	tmp := t.TempDir()
	root := filepath.Join(tmp, "root")
	plain := filepath.Join(tmp, "plain")
	file := filepath.Join(tmp, "file")
	os.Mkdir(plain, 0o700)
	os.WriteFile(file, nil, 0o600)
	for name, tc := range map[string]struct {
		spec PoolSpec
		want string // "" for OK
	}{
		"exists":              {PoolSpec{Name: "a", Dir: plain}, ""},
		"missing":             {PoolSpec{Name: "a", Dir: filepath.Join(tmp, "mnt", "x")}, "pool a: directory " + filepath.Join(tmp, "mnt", "x") + " does not exist; create it or mount the disk there"},
		"missing below root":  {PoolSpec{Name: "a", Dir: filepath.Join(root, "pools", "a")}, ""},
		"below root, mounted": {PoolSpec{Name: "a", Dir: filepath.Join(root, "pools", "a"), MountPoint: true}, "does not exist"},
		"a file":              {PoolSpec{Name: "a", Dir: file}, "is not a directory"},
		"plain, mountpoint":   {PoolSpec{Name: "a", Dir: plain, MountPoint: true}, "is not a mount point"},
	} {
		err := CheckPoolDirs(root, []PoolSpec{tc.spec})
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", name, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(tmp); len(ents) != 2 {
		t.Errorf("CheckPoolDirs changed %s: %v", tmp, ents)
	}
}

// A second LockRoot on a held root fails at once, naming the root and the
// holder's pid; once released, the root can be locked again.
func TestLockRoot(t *testing.T) {
	root := filepath.Join(t.TempDir(), "root")
	l, err := LockRoot(root)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(root, LockFileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file: %v %v, want mode 0600", fi, err)
	}
	_, err = LockRoot(root)
	if err == nil || !strings.Contains(err.Error(), root) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Errorf("second lock: %v, want an error naming %s and pid %d", err, root, os.Getpid())
	}
	l.Unlock()
	l, err = LockRoot(root)
	if err != nil {
		t.Fatalf("after unlock: %v", err)
	}
	l.Unlock()
}
