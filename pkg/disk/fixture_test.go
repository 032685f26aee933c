package disk

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtureDisk is one block device of a fixture machine: its sysfs device
// path and attribute files (relative to the block device's directory).
type fixtureDisk struct {
	name  string
	path  string // under /sys, the device's real directory
	attrs map[string]string
	// partitions: name -> major:minor
	partitions map[string]string
	holders    []string
}

// machine is a fixture modelled on a two-socket server: an NVMe drive on
// socket 1's root complex, SATA disks on the chipset's AHCI controller (one
// with /boot, one held by device-mapper), a SAS disk behind an HBA, a
// virtio disk, a USB stick, a swap NVMe, loop devices, and the devices that
// are never disks (dm, optical, zram).
func machine() []fixtureDisk {
	return []fixtureDisk{
		{name: "nvme0n1", path: "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/nvme/nvme0/nvme0n1", attrs: map[string]string{
			"dev": "259:0", "size": "1953525168", "queue/rotational": "0", "queue/logical_block_size": "512", "queue/physical_block_size": "4096",
			"wwid": "eui.0025385b71b0a0a1", "device/model": "Samsung SSD 980 PRO 1TB", "device/serial": "S5GXNF0R123456",
		}},
		{name: "nvme1n1", path: "devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme1/nvme1n1", attrs: map[string]string{
			"dev": "259:1", "size": "500118192", "queue/rotational": "0", "device/model": "INTEL SSDPEKNW512G8", "device/serial": "BTNH93710SWAP",
		}},
		{name: "sda", path: "devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", attrs: map[string]string{
			"dev": "8:0", "size": "7814037168", "queue/rotational": "1", "device/vendor": "ATA", "device/model": "ST4000NM0035-1V4", "device/wwid": "naa.5000c500a1b2c3d4",
		}, partitions: map[string]string{"sda1": "8:1", "sda2": "8:2"}},
		{name: "sdb", path: "devices/pci0000:00/0000:00:17.0/ata2/host1/target1:0:0/1:0:0:0/block/sdb", attrs: map[string]string{
			"dev": "8:16", "size": "3907029168", "queue/rotational": "1", "device/vendor": "ATA", "device/model": "WDC WD20EFRX-68E", "device/wwid": "naa.50014ee2b5c6d7e8",
		}, holders: []string{"dm-0"}},
		{name: "sdc", path: "devices/pci0000:00/0000:00:01.0/0000:01:00.0/host2/port-2:0/end_device-2:0/target2:0:0/2:0:0:0/block/sdc", attrs: map[string]string{
			"dev": "8:32", "size": "23437770752", "queue/rotational": "1", "device/vendor": "SEAGATE", "device/model": "ST12000NM0027", "device/wwid": "naa.5000c500b0c0d0e0",
		}},
		{name: "sdd", path: "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host3/target3:0:0/3:0:0:0/block/sdd", attrs: map[string]string{
			"dev": "8:48", "size": "60437492", "removable": "1", "queue/rotational": "0", "device/vendor": "SanDisk", "device/model": "Ultra Fit", "device/serial": "4C530001",
		}},
		{name: "vda", path: "devices/pci0000:00/0000:00:05.0/virtio2/block/vda", attrs: map[string]string{
			"dev": "254:0", "size": "209715200", "queue/rotational": "1", "serial": "VIRTIO-DATA-1",
		}},
		{name: "loop0", path: "devices/virtual/block/loop0", attrs: map[string]string{
			"dev": "7:0", "size": "2097152", "queue/rotational": "0", "loop/backing_file": "/srv/disks/d0.img",
		}},
		{name: "loop1", path: "devices/virtual/block/loop1", attrs: map[string]string{"dev": "7:1", "size": "0"}},
		{name: "loop2", path: "devices/virtual/block/loop2", attrs: map[string]string{
			"dev": "7:2", "size": "2097152", "loop/backing_file": "/var/lib/plinth/pools/default/volumes/pv-1.img",
		}},
		{name: "dm-0", path: "devices/virtual/block/dm-0", attrs: map[string]string{"dev": "253:0", "size": "3907029168"}},
		{name: "sr0", path: "devices/pci0000:00/0000:00:17.0/ata3/host4/target4:0:0/4:0:0:0/block/sr0", attrs: map[string]string{"dev": "11:0", "size": "0"}},
		{name: "zram0", path: "devices/virtual/block/zram0", attrs: map[string]string{"dev": "252:0", "size": "8388608"}},
	}
}

// writeMachine writes the fixture tree: sysfs (with /sys/block links),
// procfs' mountinfo and swaps; it returns the host.
func writeMachine(t *testing.T, disks []fixtureDisk, mountinfo, swaps string) Host {
	t.Helper()
	root := t.TempDir()
	sys := filepath.Join(root, "sys")
	write := func(p, v string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(v+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// NUMA nodes of the PCI functions.
	write(filepath.Join(sys, "devices/pci0000:3a/0000:3a:00.0/numa_node"), "1")
	write(filepath.Join(sys, "devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/numa_node"), "1")
	write(filepath.Join(sys, "devices/pci0000:00/0000:00:1c.0/0000:02:00.0/numa_node"), "0")
	write(filepath.Join(sys, "devices/pci0000:00/0000:00:17.0/numa_node"), "0")
	write(filepath.Join(sys, "devices/pci0000:00/0000:00:01.0/0000:01:00.0/numa_node"), "-1")
	for _, d := range disks {
		dir := filepath.Join(sys, d.path)
		for k, v := range d.attrs {
			write(filepath.Join(dir, k), v)
		}
		for p, mm := range d.partitions {
			write(filepath.Join(dir, p, "partition"), "1")
			write(filepath.Join(dir, p, "dev"), mm)
		}
		if err := os.MkdirAll(filepath.Join(dir, "holders"), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, h := range d.holders {
			write(filepath.Join(dir, "holders", h), "")
		}
		if err := os.MkdirAll(filepath.Join(sys, "block"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(filepath.Join("..", d.path), filepath.Join(sys, "block", d.name)); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "proc/self/mountinfo"), strings.TrimSpace(mountinfo))
	write(filepath.Join(root, "proc/swaps"), strings.TrimSpace(swaps))
	return Host{Sysfs: sys, Dev: "/dev", Proc: filepath.Join(root, "proc"), OwnDirs: []string{"/var/lib/plinth"}}
}

const machineMountinfo = `
22 1 254:1 / / rw,relatime - ext4 /dev/vdb1 rw
30 22 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
`

const machineSwaps = `
Filename				Type		Size		Used		Priority
/dev/nvme1n1                            partition	250059092	0		-2
`

// table is a Prober for fixture trees: what blkid would find per device.
type table map[string]Signature

func (tb table) Probe(_ context.Context, dev string) (Signature, error) { return tb[dev], nil }

// Exclusive: nothing holds a fixture's devices.
func (tb table) Exclusive(string) error { return nil }

func machineSignatures() table {
	return table{
		"/dev/sda":     {PTType: "gpt"},
		"/dev/sdb":     {Type: "LVM2_member", UUID: "Zq3c-lvm"},
		"/dev/nvme1n1": {Type: "swap", UUID: "5b1f"},
	}
}

func scanMachine(t *testing.T) []Disk {
	t.Helper()
	h := writeMachine(t, machine(), machineMountinfo, machineSwaps)
	disks, err := Scan(context.Background(), h, machineSignatures())
	if err != nil {
		t.Fatal(err)
	}
	return disks
}
