package device

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzParseConfig: any file is parsed or refused, never a panic; an
// accepted config validates and its globs stay inside the /dev root.
func FuzzParseConfig(f *testing.F) {
	b, err := os.ReadFile("../../deploy/examples/device-config.yaml")
	if err == nil {
		f.Add(b)
	}
	f.Add([]byte("apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, selector: {globs: ['../x']}}]"))
	f.Add([]byte("{{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate: %v", err)
		}
		for _, g := range c.Globs() {
			if strings.HasPrefix(g, "..") || filepath.IsAbs(g) {
				t.Fatalf("accepted glob %q", g)
			}
		}
	})
}

// FuzzDiscoverSysfs writes fuzzed contents into one GPU's sysfs and procfs
// files of a fixture copy; discovery must not panic, and whatever it reports
// keeps node paths inside the /dev root.
func FuzzDiscoverSysfs(f *testing.F) {
	f.Add("0x030200", "1", "Device Minor: \t 3\n")
	f.Add("0x12", "-1", "Device Minor: x")
	f.Add("", "99999999999999999999", "")
	// One copy per fuzzing process; each input overwrites the same files.
	dst, err := os.MkdirTemp("", "plinth-fuzz-sysfs-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dst) })
	if err := os.CopyFS(dst, os.DirFS(filepath.Join(fixtures, "nvidia-8gpu"))); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, class, numa, info string) {
		h := Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}
		dev := filepath.Join(h.Sysfs, "bus", "pci", "devices", "0000:18:00.0")
		os.WriteFile(filepath.Join(dev, "class"), []byte(class), 0o644)
		os.WriteFile(filepath.Join(dev, "numa_node"), []byte(numa), 0o644)
		os.WriteFile(filepath.Join(h.Proc, "driver", "nvidia", "gpus", "0000:18:00.0", "information"), []byte(info), 0o644)
		devs, err := h.Discover(nil)
		if err != nil {
			return
		}
		for _, d := range devs {
			for _, n := range append(d.Nodes, d.SharedNodes...) {
				if strings.HasPrefix(n.Path, "..") || filepath.IsAbs(n.Path) {
					t.Fatalf("node %q escapes the /dev root", n.Path)
				}
			}
		}
	})
}
