package app

import (
	"flag"
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
	for _, bad := range []string{
		"name=fast,backend=file",                      // no dir
		"name=../x,backend=file,dir=/mnt",             // name escapes
		"name=fast,backend=lvm,dir=/mnt",              // backend
		"name=fast,backend=file,dir=mnt",              // relative
		"name=fast,backend=file,dir=/mnt/../etc",      // not clean
		"name=fast,backend=file,dir=/mnt,size=1",      // unknown key
		"name=fast,backend=btrfs,dir=/mnt,fstype=xfs", // btrfs volumes are btrfs
		"name=fast,backend=file,dir=/mnt,fstype=ntfs",
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
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, selector: {vendors: [nvidia]}}]\n"), 0o644)
	if _, err := parseNode(t, "--device-config", bad); err == nil || !strings.Contains(err.Error(), "resources[0].selector.vendors[0]") {
		t.Errorf("invalid file: %v, want the field named", err)
	}
}
