package device

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Node is a device node, named relative to the /dev root ("dri/renderD128").
type Node struct {
	Path        string `json:"path"`
	Permissions string `json:"permissions"` // cgroup permissions: "rw" or "rwm"
}

// Device is one accelerator (or a device matched by a glob).
type Device struct {
	// ID is stable across reboots: the PCI address ("0000:18:00.0"), or for
	// glob matches the node's path with '/' as '_' ("ttyUSB0").
	ID       string `json:"id"`
	Kind     string `json:"kind"` // "pci" or "glob"
	Class    string `json:"class,omitempty"`
	Vendor   string `json:"vendor,omitempty"`
	DeviceID string `json:"deviceID,omitempty"`
	Driver   string `json:"driver,omitempty"`
	// NUMANode is -1 where the platform does not say.
	NUMANode int `json:"numaNode"`
	// PCIePath is the chain of bridges above the device, root port first.
	PCIePath []string `json:"pciePath,omitempty"`
	// PCIeRoot is the PCI host bridge (root complex) the device hangs
	// under, as the kernel names it ("pci0000:15"): the value of
	// Kubernetes' resource.kubernetes.io/pcieRoot attribute.
	PCIeRoot   string `json:"pcieRoot,omitempty"`
	IOMMUGroup string `json:"iommuGroup,omitempty"`
	// Index is the driver's number for the device where it has one (the
	// NVIDIA minor), -1 otherwise.
	Index int `json:"index"`
	// Model and UUID, where the driver says (NVIDIA's
	// /proc/driver/nvidia/gpus/<bdf>/information).
	Model string `json:"model,omitempty"`
	UUID  string `json:"uuid,omitempty"`
	// Nodes belong to this device alone; SharedNodes are needed by every
	// device of its driver (nvidiactl, kfd, vfio/vfio).
	Nodes       []Node `json:"nodes,omitempty"`
	SharedNodes []Node `json:"sharedNodes,omitempty"`
}

// Switch names the PCIe switch (or root port) the device hangs under:
// devices with the same Switch share an upstream link.
func (d Device) Switch() string {
	switch n := len(d.PCIePath); {
	case n >= 2:
		return d.PCIePath[n-2] // the switch's upstream port, above the downstream port
	case n == 1:
		return d.PCIePath[0]
	}
	return ""
}

// Host says where to read a machine: sysfs, /dev and procfs roots.
type Host struct {
	Sysfs string
	Dev   string
	Proc  string
}

var bdfRE = regexp.MustCompile(`^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$`)

// accelerator classes: display (0x03xxxx) and processing accelerators (0x12xxxx).
func isAcceleratorClass(class string) bool {
	return strings.HasPrefix(class, "0x03") || strings.HasPrefix(class, "0x12")
}

// Discover lists the accelerators of the host: PCI devices of display and
// processing-accelerator class, with their device nodes, plus the device
// nodes matching globs (relative to the /dev root). Devices are sorted by ID.
func (h Host) Discover(globs []string) ([]Device, error) {
	devDir := filepath.Join(h.Sysfs, "bus", "pci", "devices")
	entries, err := os.ReadDir(devDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", devDir, err)
	}
	var out []Device
	for _, e := range entries {
		bdf := e.Name()
		if !bdfRE.MatchString(bdf) {
			continue
		}
		dir := filepath.Join(devDir, bdf)
		class := ReadAttr(filepath.Join(dir, "class"))
		if !isAcceleratorClass(class) {
			continue
		}
		d, err := h.pciDevice(bdf, dir, class)
		if err != nil {
			return nil, fmt.Errorf("device %s: %w", bdf, err)
		}
		out = append(out, d)
	}
	gl, err := h.globDevices(globs)
	if err != nil {
		return nil, err
	}
	out = append(out, gl...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// ReadAttr reads a sysfs attribute, trimmed ("" when it cannot be read).
func ReadAttr(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func linkBase(path string) string {
	t, err := os.Readlink(path)
	if err != nil {
		return ""
	}
	return filepath.Base(t)
}

// IsPCIAddress reports whether s is a PCI function's address
// (0000:3b:00.0).
func IsPCIAddress(s string) bool { return bdfRE.MatchString(s) }

// PCIPlacement reads where the PCI function whose sysfs directory is dir
// sits: its NUMA node (-1 where the platform does not say) and the PCIe
// path, the bridges above it, root port first. Accelerators and the disks
// of pkg/disk (an NVMe controller, an HBA) are placed with it alike.
func PCIPlacement(dir string) (numa int, pciePath []string, err error) {
	numa = -1
	if n, err := strconv.Atoi(ReadAttr(filepath.Join(dir, "numa_node"))); err == nil && n >= 0 {
		numa = n
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return -1, nil, fmt.Errorf("resolve %s: %w", dir, err)
	}
	for _, el := range strings.Split(filepath.Dir(real), string(filepath.Separator)) {
		if bdfRE.MatchString(el) {
			pciePath = append(pciePath, el)
		}
	}
	return numa, pciePath, nil
}

var hostBridgeRE = regexp.MustCompile(`^pci[0-9a-f]{4}:[0-9a-f]{2}$`)

// pcieRoot is the host bridge in the resolved sysfs path of the PCI
// function at dir ("" when there is none, as for a virtual function's
// fixture without one).
func pcieRoot(dir string) string {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return ""
	}
	for _, el := range strings.Split(real, string(filepath.Separator)) {
		if hostBridgeRE.MatchString(el) {
			return el
		}
	}
	return ""
}

func (h Host) pciDevice(bdf, dir, class string) (Device, error) {
	d := Device{ID: bdf, Kind: "pci", Class: class, Vendor: ReadAttr(filepath.Join(dir, "vendor")),
		DeviceID: ReadAttr(filepath.Join(dir, "device")), Driver: linkBase(filepath.Join(dir, "driver")),
		IOMMUGroup: linkBase(filepath.Join(dir, "iommu_group")), NUMANode: -1, Index: -1}
	var err error
	if d.NUMANode, d.PCIePath, err = PCIPlacement(dir); err != nil {
		return Device{}, err
	}
	d.PCIeRoot = pcieRoot(dir)
	// DRM (card, render) and accel nodes named by the device's own sysfs.
	for _, sub := range []struct{ dir, dev string }{{"drm", "dri"}, {"accel", "accel"}} {
		names, _ := os.ReadDir(filepath.Join(dir, sub.dir))
		for _, n := range names {
			name := n.Name()
			if sub.dir == "drm" && !strings.HasPrefix(name, "card") && !strings.HasPrefix(name, "renderD") {
				continue
			}
			if sub.dir == "accel" && !strings.HasPrefix(name, "accel") {
				continue
			}
			d.Nodes = h.addNode(d.Nodes, filepath.Join(sub.dev, name))
		}
	}
	switch d.Driver {
	case "nvidia":
		info, err := h.nvidiaInfo(bdf)
		if err != nil {
			return Device{}, err
		}
		minor := info.minor
		d.Index, d.Model, d.UUID = minor, info.model, info.uuid
		d.Nodes = h.addNode(d.Nodes, "nvidia"+strconv.Itoa(minor))
		for _, s := range []string{"nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"} {
			d.SharedNodes = h.addNode(d.SharedNodes, s)
		}
	case "amdgpu":
		d.SharedNodes = h.addNode(d.SharedNodes, "kfd")
	case "vfio-pci":
		if d.IOMMUGroup != "" {
			d.Nodes = h.addNode(d.Nodes, filepath.Join("vfio", d.IOMMUGroup))
		}
		d.SharedNodes = h.addNode(d.SharedNodes, filepath.Join("vfio", "vfio"))
	}
	sort.Slice(d.Nodes, func(i, j int) bool { return d.Nodes[i].Path < d.Nodes[j].Path })
	return d, nil
}

// addNode appends rel when it exists under the /dev root.
func (h Host) addNode(nodes []Node, rel string) []Node {
	if _, err := os.Stat(filepath.Join(h.Dev, rel)); err != nil {
		return nodes
	}
	return append(nodes, Node{Path: rel, Permissions: "rw"})
}

type nvidiaGPU struct {
	minor       int
	model, uuid string
}

// nvidiaInfo reads what the NVIDIA driver says of a GPU in
// /proc/driver/nvidia/gpus/<bdf>/information: its device minor (required),
// model and UUID.
func (h Host) nvidiaInfo(bdf string) (nvidiaGPU, error) {
	path := filepath.Join(h.Proc, "driver", "nvidia", "gpus", bdf, "information")
	f, err := os.Open(path)
	if err != nil {
		return nvidiaGPU{}, fmt.Errorf("nvidia device minor: %w", err)
	}
	defer f.Close()
	g := nvidiaGPU{minor: -1}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch strings.TrimSpace(k) {
		case "Device Minor":
			if g.minor, err = strconv.Atoi(v); err != nil {
				return nvidiaGPU{}, fmt.Errorf("nvidia device minor in %s: %w", path, err)
			}
		case "Model":
			g.model = v
		case "GPU UUID":
			g.uuid = v
		}
	}
	if g.minor < 0 {
		return nvidiaGPU{}, fmt.Errorf("nvidia device minor: no \"Device Minor\" in %s", path)
	}
	return g, nil
}

// globDevices turns every node matching a glob (relative to the /dev root)
// into a device of its own.
func (h Host) globDevices(globs []string) ([]Device, error) {
	var out []Device
	seen := map[string]bool{}
	for _, g := range globs {
		if err := ValidateGlob(g); err != nil {
			return nil, err
		}
		matches, err := filepath.Glob(filepath.Join(h.Dev, g))
		if err != nil {
			return nil, fmt.Errorf("glob %q: %w", g, err)
		}
		for _, m := range matches {
			rel, err := filepath.Rel(h.Dev, m)
			if err != nil || seen[rel] {
				continue
			}
			seen[rel] = true
			out = append(out, Device{ID: strings.ReplaceAll(rel, "/", "_"), Kind: "glob", NUMANode: -1, Index: -1,
				Nodes: []Node{{Path: rel, Permissions: "rw"}}})
		}
	}
	return out, nil
}

// ValidateGlob accepts a glob relative to the /dev root that cannot reach
// outside it.
func ValidateGlob(g string) error {
	if g == "" || filepath.IsAbs(g) || filepath.Clean(g) != g || strings.HasPrefix(g, "..") || strings.ContainsRune(g, 0) {
		return fmt.Errorf("glob %q must be a clean path relative to the /dev root", g)
	}
	if _, err := filepath.Match(g, ""); err != nil {
		return fmt.Errorf("glob %q: %w", g, err)
	}
	return nil
}
