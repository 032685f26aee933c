// Command gen writes the device fixture trees in testdata/devices: sysfs,
// /dev and procfs layouts modelled on real machines (PCI addresses, class,
// vendor and device IDs, drivers, NUMA nodes, PCIe switches, IOMMU groups,
// DRM/accel/NVIDIA/VFIO nodes). Run from the repository root:
//
//	go run ./testdata/devices/gen
//
// Device nodes are empty regular files: discovery only checks they exist.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

type pciDev struct {
	bridges []string // root port first; each a BDF
	bdf     string
	class   string
	vendor  string
	device  string
	driver  string
	numa    int
	iommu   int
	drm     []string
	accel   []string
	nvMinor int // -1: not an NVIDIA GPU
}

type fixture struct {
	name  string
	about string
	devs  []pciDev
	nodes []string // device nodes under dev/
}

func gpu(bridges []string, bdf string, numa, iommu, minor int) pciDev {
	return pciDev{bridges: bridges, bdf: bdf, class: "0x030200", vendor: "0x10de", device: "0x2330", driver: "nvidia", numa: numa, iommu: iommu, nvMinor: minor}
}

func other(bridges []string, bdf, class, vendor, device, driver string, numa, iommu int) pciDev {
	return pciDev{bridges: bridges, bdf: bdf, class: class, vendor: vendor, device: device, driver: driver, numa: numa, iommu: iommu, nvMinor: -1}
}

var fixtures = []fixture{
	{
		name:  "nvidia-8gpu",
		about: "DGX-H100-like: 8 H100 SXM (10de:2330) behind 4 PCIe switches, 2 per switch, 2 switches per NUMA node; ASPEED BMC VGA; a ConnectX NIC beside GPU 0",
		devs: []pciDev{
			gpu([]string{"0000:15:01.0", "0000:16:00.0", "0000:17:00.0"}, "0000:18:00.0", 0, 20, 0),
			gpu([]string{"0000:15:01.0", "0000:16:00.0", "0000:17:04.0"}, "0000:1a:00.0", 0, 21, 1),
			other([]string{"0000:15:01.0", "0000:16:00.0", "0000:17:08.0"}, "0000:1b:00.0", "0x020700", "0x15b3", "0x1021", "mlx5_core", 0, 22),
			gpu([]string{"0000:38:01.0", "0000:39:00.0", "0000:3a:00.0"}, "0000:3b:00.0", 0, 30, 2),
			gpu([]string{"0000:38:01.0", "0000:39:00.0", "0000:3a:04.0"}, "0000:3d:00.0", 0, 31, 3),
			gpu([]string{"0000:97:01.0", "0000:98:00.0", "0000:99:00.0"}, "0000:9a:00.0", 1, 40, 4),
			gpu([]string{"0000:97:01.0", "0000:98:00.0", "0000:99:04.0"}, "0000:9c:00.0", 1, 41, 5),
			gpu([]string{"0000:b8:01.0", "0000:b9:00.0", "0000:ba:00.0"}, "0000:bb:00.0", 1, 50, 6),
			gpu([]string{"0000:b8:01.0", "0000:b9:00.0", "0000:ba:04.0"}, "0000:bd:00.0", 1, 51, 7),
			func() pciDev {
				d := other([]string{"0000:00:1c.0", "0000:02:00.0"}, "0000:03:00.0", "0x030000", "0x1a03", "0x2000", "ast", 0, 5)
				d.drm = []string{"card0"}
				return d
			}(),
		},
		nodes: []string{"nvidia0", "nvidia1", "nvidia2", "nvidia3", "nvidia4", "nvidia5", "nvidia6", "nvidia7",
			"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "dri/card0"},
	},
	{
		name:  "amd-2gpu",
		about: "2 Instinct MI300X (1002:74a1, amdgpu) on two NUMA nodes, each behind a switch, with DRM card/render nodes and the shared /dev/kfd",
		devs: []pciDev{
			{bridges: []string{"0000:0c:01.1", "0000:0d:00.0", "0000:0e:00.0"}, bdf: "0000:0f:00.0", class: "0x038000", vendor: "0x1002", device: "0x74a1", driver: "amdgpu", numa: 0, iommu: 12, drm: []string{"card1", "renderD128"}, nvMinor: -1},
			{bridges: []string{"0000:8c:01.1", "0000:8d:00.0", "0000:8e:00.0"}, bdf: "0000:8f:00.0", class: "0x038000", vendor: "0x1002", device: "0x74a1", driver: "amdgpu", numa: 1, iommu: 72, drm: []string{"card2", "renderD129"}, nvMinor: -1},
		},
		nodes: []string{"kfd", "dri/card1", "dri/card2", "dri/renderD128", "dri/renderD129"},
	},
	{
		name:  "intel-gpu",
		about: "a workstation: integrated Raptor Lake graphics (8086:a780) on the root bus and an Arc A770 (8086:56a0) behind its own switch, both i915, no NUMA information",
		devs: []pciDev{
			{bdf: "0000:00:02.0", class: "0x030000", vendor: "0x8086", device: "0xa780", driver: "i915", numa: -1, iommu: 0, drm: []string{"card0", "renderD128"}, nvMinor: -1},
			{bridges: []string{"0000:00:01.0", "0000:01:00.0", "0000:02:01.0"}, bdf: "0000:03:00.0", class: "0x030000", vendor: "0x8086", device: "0x56a0", driver: "i915", numa: -1, iommu: 13, drm: []string{"card1", "renderD129"}, nvMinor: -1},
		},
		nodes: []string{"dri/card0", "dri/card1", "dri/renderD128", "dri/renderD129"},
	},
	{
		name:  "accel-4",
		about: "4 Gaudi2 processing accelerators (1da3:1020, class 0x1200, habanalabs) with /dev/accel/accelN, two per NUMA node",
		devs: func() []pciDev {
			var ds []pciDev
			for i, bus := range []string{"33", "34", "b3", "b4"} {
				d := other([]string{fmt.Sprintf("0000:%s:00.0", map[bool]string{true: "30", false: "b0"}[i < 2]), fmt.Sprintf("0000:%s:00.0", map[bool]string{true: "31", false: "b1"}[i < 2]), fmt.Sprintf("0000:%s:%02x.0", map[bool]string{true: "32", false: "b2"}[i < 2], (i%2)*4)},
					"0000:"+bus+":00.0", "0x120000", "0x1da3", "0x1020", "habanalabs", i/2, 60+i)
				d.accel = []string{fmt.Sprintf("accel%d", i)}
				ds = append(ds, d)
			}
			return ds
		}(),
		nodes: []string{"accel/accel0", "accel/accel1", "accel/accel2", "accel/accel3"},
	},
	{
		name:  "vfio",
		about: "2 H100 PCIe: one bound to vfio-pci (IOMMU group 20, /dev/vfio/20) for a VM, one to nvidia",
		devs: []pciDev{
			func() pciDev {
				d := gpu([]string{"0000:15:01.0"}, "0000:18:00.0", 0, 20, -1)
				d.driver = "vfio-pci"
				return d
			}(),
			gpu([]string{"0000:38:01.0"}, "0000:3b:00.0", 0, 30, 0),
		},
		nodes: []string{"vfio/vfio", "vfio/20", "nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"},
	},
	{
		name:  "none",
		about: "no accelerators: an NVMe drive and a NIC behind root ports, and a USB serial adapter for glob discovery",
		devs: []pciDev{
			other([]string{"0000:00:01.1"}, "0000:01:00.0", "0x010802", "0x144d", "0xa80a", "nvme", 0, 10),
			other([]string{"0000:00:03.1"}, "0000:02:00.0", "0x020000", "0x8086", "0x1592", "ice", 0, 11),
		},
		nodes: []string{"ttyUSB0", "nvme0n1"},
	},
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func write(path, content string) {
	must(os.MkdirAll(filepath.Dir(path), 0o755))
	must(os.WriteFile(path, []byte(content), 0o644))
}

func link(target, path string) {
	must(os.MkdirAll(filepath.Dir(path), 0o755))
	rel, err := filepath.Rel(filepath.Dir(path), target)
	must(err)
	os.Remove(path)
	must(os.Symlink(rel, path))
}

func main() {
	base := filepath.Join("testdata", "devices")
	for _, f := range fixtures {
		root := filepath.Join(base, f.name)
		must(os.RemoveAll(root))
		sys, dev, proc := filepath.Join(root, "sys"), filepath.Join(root, "dev"), filepath.Join(root, "proc")
		write(filepath.Join(root, "README"), f.about+"\n")
		must(os.MkdirAll(filepath.Join(sys, "bus", "pci", "devices"), 0o755))
		must(os.MkdirAll(dev, 0o755))
		for _, d := range f.devs {
			chain := append(append([]string{}, d.bridges...), d.bdf)
			rootBus := "pci" + chain[0][:7]
			p := filepath.Join(sys, "devices", rootBus)
			for i, b := range chain {
				p = filepath.Join(p, b)
				class := "0x060400"
				if i == len(chain)-1 {
					class = d.class
				}
				if _, err := os.Stat(filepath.Join(p, "class")); err != nil {
					write(filepath.Join(p, "class"), class+"\n")
					if i < len(chain)-1 {
						write(filepath.Join(p, "vendor"), "0x8086\n")
						write(filepath.Join(p, "numa_node"), fmt.Sprintf("%d\n", d.numa))
						link(p, filepath.Join(sys, "bus", "pci", "devices", b))
					}
				}
			}
			write(filepath.Join(p, "vendor"), d.vendor+"\n")
			write(filepath.Join(p, "device"), d.device+"\n")
			write(filepath.Join(p, "numa_node"), fmt.Sprintf("%d\n", d.numa))
			drv := filepath.Join(sys, "bus", "pci", "drivers", d.driver)
			must(os.MkdirAll(drv, 0o755))
			link(drv, filepath.Join(p, "driver"))
			grp := filepath.Join(sys, "kernel", "iommu_groups", fmt.Sprint(d.iommu))
			must(os.MkdirAll(filepath.Join(grp, "devices"), 0o755))
			link(grp, filepath.Join(p, "iommu_group"))
			link(p, filepath.Join(grp, "devices", d.bdf))
			for _, n := range d.drm {
				must(os.MkdirAll(filepath.Join(p, "drm", n), 0o755))
				write(filepath.Join(p, "drm", n, "dev"), "226:0\n")
			}
			for _, n := range d.accel {
				must(os.MkdirAll(filepath.Join(p, "accel", n), 0o755))
				write(filepath.Join(p, "accel", n, "dev"), "261:0\n")
			}
			link(p, filepath.Join(sys, "bus", "pci", "devices", d.bdf))
			if d.nvMinor >= 0 {
				write(filepath.Join(proc, "driver", "nvidia", "gpus", d.bdf, "information"),
					fmt.Sprintf("Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 0\nGPU UUID: \t GPU-%08x-0000-0000-0000-000000000000\nVideo BIOS: \t 96.00.99.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n", d.nvMinor, d.bdf, d.nvMinor))
			}
		}
		for _, n := range f.nodes {
			write(filepath.Join(dev, n), "")
		}
		fmt.Println("wrote", root, "-", strings.SplitN(f.about, ":", 2)[0])
	}
}
