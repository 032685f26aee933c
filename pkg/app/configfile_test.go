package app

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "plinth.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The file sets what the command line did not; the command line wins.
func TestConfigFile(t *testing.T) {
	path := writeConfig(t, `apiVersion: plinth.example.com/v1alpha1
kind: NodeConfiguration
kubeletDir: /srv/kubelet
root: /srv/plinth
maxVolumes: 64
devices: false
pools:
  - {name: fast, backend: file, dir: /mnt/nvme, fsType: xfs}
  - {name: snaps, backend: btrfs, dir: /mnt/btrfs, mountPoint: true}
allowedPaths: [/srv/kubelet]
deviceConfig:
  apiVersion: plinth.example.com/v1alpha1
  kind: DeviceConfig
  resources:
    - name: example.com/gpu
      selector: {classes: ["0x03"]}
`)
	var cfg NodeConfig
	fs := flag.NewFlagSet("node", flag.ContinueOnError)
	cfg.Flags(fs)
	if err := fs.Parse([]string{"--root=/cmdline/root"}); err != nil {
		t.Fatal(err)
	}
	in, err := ApplyConfigFile(fs, path, NodeConfigKind)
	if err != nil {
		t.Fatal(err)
	}
	cfg.DeviceConfigData = in.DeviceConfig
	if cfg.KubeletDir != "/srv/kubelet" || cfg.Root != "/cmdline/root" || cfg.MaxVolumes != 64 || cfg.Devices {
		t.Errorf("config %+v: want kubelet dir and max volumes from the file, root from the command line, devices off", cfg)
	}
	if len(cfg.Pools) != 2 || cfg.Pools[0] != (PoolSpec{Name: "fast", Backend: "file", Dir: "/mnt/nvme", FsType: "xfs"}) || cfg.Pools[1] != (PoolSpec{Name: "snaps", Backend: "btrfs", Dir: "/mnt/btrfs", MountPoint: true}) {
		t.Errorf("pools %+v", cfg.Pools)
	}
	if len(cfg.AllowedPaths) != 1 || cfg.AllowedPaths[0] != "/srv/kubelet" {
		t.Errorf("allowed paths %v", cfg.AllowedPaths)
	}
	dcfg, err := cfg.deviceConfig()
	if err != nil || len(dcfg.Resources) != 1 || dcfg.Resources[0].Name != "example.com/gpu" {
		t.Errorf("inline device config: %+v, %v", dcfg, err)
	}
}

// Bad files are refused with the file and the field named.
func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct{ body, kind, want string }{
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\nkubeletDirr: /x\n", NodeConfigKind, `field "kubeletDirr": unknown field`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\npools: [{name: a, backend: lvm, dir: /x}]\n", NodeConfigKind, `field "pools[0]"`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\npools: [{name: a, backend: file, dir: /x, size: 1}]\n", NodeConfigKind, `field "pools"`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\nmaxVolumes: many\n", NodeConfigKind, `field "maxVolumes"`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\ndevices: [true]\n", NodeConfigKind, `field "devices"`},
		{"apiVersion: plinth.example.com/v1beta9\nkind: NodeConfiguration\n", NodeConfigKind, `field "apiVersion"`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: ControllerConfiguration\n", NodeConfigKind, `field "kind"`},
		{"apiVersion: plinth.example.com/v1alpha1\nkind: NodeConfiguration\nconfig: /etc/other.yaml\n", NodeConfigKind, `field "config": unknown field`},
	} {
		var cfg NodeConfig
		fs := flag.NewFlagSet("node", flag.ContinueOnError)
		cfg.Flags(fs)
		fs.String("config", "", "")
		_, err := ApplyConfigFile(fs, writeConfig(t, tc.body), tc.kind)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "plinth.yaml") {
			t.Errorf("%q: got %v, want an error naming the file and %s", tc.body, err, tc.want)
		}
	}
}
