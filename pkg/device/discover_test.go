package device

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/devices")

const fixtures = "../../testdata/devices"

func fixtureHost(name string) Host {
	root := filepath.Join(fixtures, name)
	return Host{Sysfs: filepath.Join(root, "sys"), Dev: filepath.Join(root, "dev"), Proc: filepath.Join(root, "proc")}
}

// TestDiscoverGolden checks what discovery reports on each fixture tree
// against testdata/devices/<fixture>/discovery.golden.json.
func TestDiscoverGolden(t *testing.T) {
	for _, name := range []string{"nvidia-8gpu", "amd-2gpu", "intel-gpu", "accel-4", "vfio", "none"} {
		t.Run(name, func(t *testing.T) {
			var globs []string
			if name == "none" {
				globs = []string{"ttyUSB*"}
			}
			devs, err := fixtureHost(name).Discover(globs)
			if err != nil {
				t.Fatal(err)
			}
			got, _ := json.MarshalIndent(devs, "", "  ")
			golden := filepath.Join(fixtures, name, "discovery.golden.json")
			if *update {
				os.WriteFile(golden, append(got, '\n'), 0o644)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create)", err)
			}
			var w, g []Device
			json.Unmarshal(want, &w)
			json.Unmarshal(got, &g)
			if d := cmp.Diff(w, g); d != "" {
				t.Errorf("discovery on %s (-golden +got):\n%s", name, d)
			}
		})
	}
}

func TestDiscoverFacts(t *testing.T) {
	devs, err := fixtureHost("nvidia-8gpu").Discover(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 9 { // 8 GPUs and the BMC's VGA; not the NIC or bridges
		t.Fatalf("found %d devices, want 9", len(devs))
	}
	byID := map[string]Device{}
	for _, d := range devs {
		byID[d.ID] = d
	}
	gpu0, gpu1, gpu2 := byID["0000:18:00.0"], byID["0000:1a:00.0"], byID["0000:3b:00.0"]
	if vga := byID["0000:03:00.0"]; vga.Driver != "ast" || len(vga.Nodes) != 1 {
		t.Errorf("BMC VGA = %+v", vga)
	}
	if gpu0.ID != "0000:18:00.0" || gpu0.Index != 0 || gpu0.NUMANode != 0 || gpu0.Driver != "nvidia" || gpu0.IOMMUGroup != "20" {
		t.Errorf("GPU 0 = %+v", gpu0)
	}
	if d := cmp.Diff([]string{"0000:15:01.0", "0000:16:00.0", "0000:17:00.0"}, gpu0.PCIePath); d != "" {
		t.Errorf("PCIe path (-want +got):\n%s", d)
	}
	if gpu0.Switch() != gpu1.Switch() || gpu0.Switch() == gpu2.Switch() {
		t.Errorf("switches: %s %s %s; GPUs 0 and 1 share one, 2 does not", gpu0.Switch(), gpu1.Switch(), gpu2.Switch())
	}
	if d := cmp.Diff([]Node{{"nvidia0", "rw"}}, gpu0.Nodes); d != "" {
		t.Errorf("nodes (-want +got):\n%s", d)
	}
	if len(gpu0.SharedNodes) != 3 {
		t.Errorf("shared nodes %v, want nvidiactl, nvidia-uvm, nvidia-uvm-tools", gpu0.SharedNodes)
	}
}

func TestDiscoverMissingNodesAreNotInvented(t *testing.T) {
	// A copy of the AMD fixture without /dev/kfd and one render node.
	src := filepath.Join(fixtures, "amd-2gpu")
	dst := t.TempDir()
	if err := os.CopyFS(dst, os.DirFS(src)); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dst, "dev", "kfd"))
	os.Remove(filepath.Join(dst, "dev", "dri", "renderD129"))
	devs, err := Host{Sysfs: filepath.Join(dst, "sys"), Dev: filepath.Join(dst, "dev"), Proc: filepath.Join(dst, "proc")}.Discover(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs[0].SharedNodes) != 0 {
		t.Errorf("kfd reported though missing: %v", devs[0].SharedNodes)
	}
	if d := cmp.Diff([]Node{{"dri/card2", "rw"}}, devs[1].Nodes); d != "" {
		t.Errorf("GPU 1 nodes (-want +got):\n%s", d)
	}
}

func TestValidateGlob(t *testing.T) {
	for _, g := range []string{"ttyUSB*", "fpga/*", "xdma[0-9]_user"} {
		if err := ValidateGlob(g); err != nil {
			t.Errorf("%q: %v", g, err)
		}
	}
	for _, g := range []string{"", "/dev/tty*", "../etc/*", "a/../../b", "[", "x\x00"} {
		if err := ValidateGlob(g); err == nil {
			t.Errorf("%q accepted", g)
		}
	}
}
