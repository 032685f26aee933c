package disk

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestScanFixtureMachine(t *testing.T) {
	disks := scanMachine(t)
	type seen struct {
		ID, Transport, Model, Serial, WWN, PCI string
		NUMA                                   int
		Size                                   int64
		Rotational, Removable                  bool
		State                                  State
		Reasons                                string
	}
	got := map[string]seen{}
	for _, d := range disks {
		got[d.Name] = seen{ID: d.ID, Transport: string(d.Transport), Model: d.Model, Serial: d.Serial, WWN: d.WWN, PCI: d.PCIAddress,
			NUMA: d.NUMANode, Size: d.SizeBytes, Rotational: d.Rotational, Removable: d.Removable, State: d.State, Reasons: strings.Join(d.Reasons, "; ")}
	}
	want := map[string]seen{
		"nvme0n1": {ID: "wwn:0025385b71b0a0a1", Transport: "nvme", Model: "Samsung SSD 980 PRO 1TB", Serial: "S5GXNF0R123456", WWN: "0025385b71b0a0a1",
			PCI: "0000:3b:00.0", NUMA: 1, Size: 1953525168 * 512, State: StateFree},
		"nvme1n1": {ID: "serial:BTNH93710SWAP", Transport: "nvme", Model: "INTEL SSDPEKNW512G8", Serial: "BTNH93710SWAP", PCI: "0000:02:00.0", NUMA: 0,
			Size: 500118192 * 512, State: StateForeign, Reasons: "has signature swap (UUID 5b1f); used as swap"},
		"sda": {ID: "wwn:5000c500a1b2c3d4", Transport: "sata", Model: "ST4000NM0035-1V4", WWN: "5000c500a1b2c3d4", PCI: "0000:00:17.0", NUMA: 0,
			Size: 7814037168 * 512, Rotational: true, State: StateForeign, Reasons: "has partitions sda1, sda2; has partition table gpt; mounted at /boot"},
		"sdb": {ID: "wwn:50014ee2b5c6d7e8", Transport: "sata", Model: "WDC WD20EFRX-68E", WWN: "50014ee2b5c6d7e8", PCI: "0000:00:17.0", NUMA: 0,
			Size: 3907029168 * 512, Rotational: true, State: StateForeign, Reasons: "has signature LVM2_member (UUID Zq3c-lvm); held by dm-0"},
		"sdc": {ID: "wwn:5000c500b0c0d0e0", Transport: "sas", Model: "ST12000NM0027", WWN: "5000c500b0c0d0e0", PCI: "0000:01:00.0", NUMA: -1,
			Size: 23437770752 * 512, Rotational: true, State: StateFree},
		"sdd": {ID: "serial:4C530001", Transport: "usb", Model: "Ultra Fit", Serial: "4C530001", PCI: "0000:00:14.0", NUMA: -1,
			Size: 60437492 * 512, Removable: true, State: StateFree},
		"vda":   {ID: "serial:VIRTIO-DATA-1", Transport: "virtio", Serial: "VIRTIO-DATA-1", PCI: "0000:00:05.0", NUMA: -1, Size: 209715200 * 512, Rotational: true, State: StateFree},
		"loop0": {ID: "file:/srv/disks/d0.img", Transport: "loop", NUMA: -1, Size: 2097152 * 512, State: StateFree},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("disks (-want +got):\n%s", d)
	}
	for _, d := range disks {
		if d.Name == "nvme0n1" && (d.LogicalBlockBytes != 512 || d.PhysicalBlockBytes != 4096 || len(d.PCIPath) != 1 || d.PCIPath[0] != "0000:3a:00.0") {
			t.Errorf("nvme0n1: block sizes %d/%d, PCI path %v", d.LogicalBlockBytes, d.PhysicalBlockBytes, d.PCIPath)
		}
	}
}

func TestNormaliseWWN(t *testing.T) {
	for in, want := range map[string]string{
		"naa.5000C500A1B2C3D4": "5000c500a1b2c3d4",
		"eui.0025385b71b0a0a1": "0025385b71b0a0a1",
		"0x5000c500a1b2c3d4":   "5000c500a1b2c3d4",
		"t10.ATA     WDC":      "",
		"":                     "",
	} {
		if got := normaliseWWN(in); got != want {
			t.Errorf("normaliseWWN(%q) = %q, want %q", in, got, want)
		}
	}
}

type failing struct{ table }

func (f failing) Probe(ctx context.Context, dev string) (Signature, error) {
	if dev == "/dev/sdc" {
		return Signature{}, errors.New("no medium")
	}
	return f.table.Probe(ctx, dev)
}

// A disk that cannot be probed is never free, and the others are still read.
func TestScanProbeFailure(t *testing.T) {
	h := writeMachine(t, machine(), machineMountinfo, machineSwaps)
	disks, err := Scan(context.Background(), h, failing{machineSignatures()})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.Name == "sdc" && (d.State != StateForeign || !strings.Contains(strings.Join(d.Reasons, ";"), "cannot be probed: no medium")) {
			t.Errorf("sdc: %s %v", d.State, d.Reasons)
		}
		if d.Name == "nvme0n1" && d.State != StateFree {
			t.Errorf("nvme0n1: %s", d.State)
		}
	}
}

// The kernel escapes a space and a tab in mountinfo's paths (\040,
// \011); a disk mounted at such a path is mounted there, by its real name,
// and once per path (a bind of a directory of it shows the device number
// again).
func TestScanEscapedMountPoint(t *testing.T) {
	h := writeMachine(t, machine(), strings.TrimSuffix(machineMountinfo, "\n")+`
41 22 8:32 / /srv/my\040data rw,relatime shared:3 - xfs /dev/sdc rw,attr2,inode64
42 22 8:32 /sub /srv/my\040data rw,relatime shared:3 - xfs /dev/sdc rw,attr2,inode64
43 22 8:32 /sub /var/lib/a\011b rw,relatime shared:3 - xfs /dev/sdc rw,attr2,inode64
`, machineSwaps)
	disks, err := Scan(context.Background(), h, machineSignatures())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range disks {
		if d.Name == "sdc" {
			if want := []string{"/srv/my data", "/var/lib/a\tb"}; !slices.Equal(d.MountPoints, want) || d.State != StateForeign {
				t.Errorf("sdc: %s, mounted at %q; want foreign, mounted at %q", d.State, d.MountPoints, want)
			}
		}
	}
}

// counting counts exclusive opens.
type counting struct {
	table
	n int
}

func (c *counting) Exclusive(string) error { c.n++; return nil }

// The kernel's exclusive hold is asked at planning only of disks that look
// unused, and never by the watcher's rescans: the open itself makes another
// program's mount of the disk fail in that instant.
func TestExclusiveOpensOnlyWhereTheyDecide(t *testing.T) {
	h := writeMachine(t, machine(), machineMountinfo, machineSwaps)
	c := &counting{table: machineSignatures()}
	disks, err := Scan(context.Background(), h, c)
	if err != nil {
		t.Fatal(err)
	}
	unused := 0
	for _, d := range disks {
		if len(d.MountPoints) == 0 && len(d.Holders) == 0 && !d.Swap {
			unused++
		}
	}
	if c.n != unused {
		t.Errorf("%d exclusive opens for %d disks that look unused", c.n, unused)
	}
	c.n = 0
	w := NewWatcher(h, c, time.Hour, Plan{})
	if err := w.Rescan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c.n != 0 {
		t.Errorf("a rescan opened %d disks exclusively", c.n)
	}
}
