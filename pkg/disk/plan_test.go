package disk

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/resource"
)

func qty(s string) *resource.Quantity { q := resource.MustParse(s); return &q }
func ptr[T any](v T) *T               { return &v }

// outcome is a plan in short: per disk "action pool" and per pool its problem.
func outcome(p Plan) (map[string]string, map[string]string) {
	disks, pools := map[string]string{}, map[string]string{}
	for _, d := range p.Decisions {
		disks[d.Disk.Name] = strings.TrimSpace(string(d.Action) + " " + d.Pool)
	}
	for _, pp := range p.Pools {
		pools[pp.Name] = pp.Problem
	}
	return disks, pools
}

func TestMakePlanRules(t *testing.T) {
	disks := scanMachine(t)
	cases := map[string]struct {
		rules []Rule
		disks map[string]string // only the disks named are checked
		pools map[string]string
		why   map[string]string // disk -> a part of its Why
	}{
		"nvme to a file pool, never the swap nvme": {
			rules: []Rule{{Pool: "fast", Layout: LayoutFile, Select: Selector{Transports: []Transport{TransportNVMe}, Count: 1}}},
			disks: map[string]string{"nvme0n1": "claim fast", "nvme1n1": "skip", "sda": "skip"},
			pools: map[string]string{"fast": ""},
			why:   map[string]string{"nvme1n1": "used as swap", "sda": "transport sata is not one of [nvme]"},
		},
		"rotational disks by size: the free SAS disk only": {
			rules: []Rule{{Pool: "bulk", Layout: LayoutDisk, Select: Selector{Rotational: ptr(true), MinSize: qty("1Ti")}}},
			disks: map[string]string{"sda": "skip", "sdb": "skip", "sdc": "claim bulk", "vda": "skip"},
			pools: map[string]string{"bulk": ""},
			why: map[string]string{"sda": "has partitions sda1, sda2; has partition table gpt; mounted at /boot",
				"sdb": "held by dm-0", "vda": "too small"},
		},
		"too large, removable and loop devices need saying": {
			rules: []Rule{{Pool: "small", Layout: LayoutDisk, Select: Selector{MaxSize: qty("50Gi")}}},
			disks: map[string]string{"sdd": "skip", "loop0": "skip", "vda": "skip"},
			pools: map[string]string{"small": "no disk matches the rule"},
			why: map[string]string{"sdd": "removable", "loop0": "a loop device is taken only by a rule that names transport loop",
				"vda": "too large"},
		},
		"raid1 needs two disks": {
			rules: []Rule{{Pool: "mirror", Layout: LayoutBtrfs, Raid: "raid1", Select: Selector{Transports: []Transport{TransportNVMe}}}},
			disks: map[string]string{"nvme0n1": "skip"},
			pools: map[string]string{"mirror": "raid1 needs 2 disks, 1 match"},
			why:   map[string]string{"nvme0n1": "raid1 needs 2 disks"},
		},
		"first rule wins; count caps": {
			rules: []Rule{
				{Pool: "one", Layout: LayoutDisk, Select: Selector{Transports: []Transport{TransportSAS, TransportVirtio, TransportNVMe}, Count: 1}},
				{Pool: "rest", Layout: LayoutBtrfs, Raid: "raid1", Select: Selector{Transports: []Transport{TransportSAS, TransportVirtio, TransportNVMe}}},
			},
			// Disks are taken in the order of their IDs.
			disks: map[string]string{"vda": "claim one", "nvme0n1": "claim rest", "sdc": "claim rest"},
			pools: map[string]string{"one": "", "rest": ""},
		},
		"a signature is wiped only for a disk named exactly, and never in use": {
			rules: []Rule{{Pool: "reuse", Layout: LayoutDisk, Wipe: true,
				Select: Selector{WWNs: []string{"5000c500a1b2c3d4", "50014ee2b5c6d7e8"}, IDs: nil}}},
			disks: map[string]string{"sda": "skip", "sdb": "skip"},
			why:   map[string]string{"sda": "mounted at /boot", "sdb": "held by dm-0"},
		},
		"models and serials by pattern": {
			rules: []Rule{{Pool: "samsung", Layout: LayoutFile, Select: Selector{Models: []string{"Samsung*"}, Count: 1}}},
			disks: map[string]string{"nvme0n1": "claim samsung", "sdc": "skip"},
			why:   map[string]string{"sdc": `model "ST12000NM0027" matches none of [Samsung*]`},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			cfg := Config{Rules: tc.rules}
			cfg.Defaults()
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			plan := MakePlan(cfg, disks, nil)
			gotDisks, gotPools := outcome(plan)
			for d, want := range tc.disks {
				if gotDisks[d] != want {
					t.Errorf("disk %s: %q, want %q", d, gotDisks[d], want)
				}
			}
			for p, want := range tc.pools {
				if gotPools[p] != want {
					t.Errorf("pool %s: problem %q, want %q", p, gotPools[p], want)
				}
			}
			for _, dec := range plan.Decisions {
				if part, ok := tc.why[dec.Disk.Name]; ok && !strings.Contains(dec.Why, part) {
					t.Errorf("disk %s: why %q does not say %q", dec.Disk.Name, dec.Why, part)
				}
			}
		})
	}
}

func TestMakePlanWipesNamedDisk(t *testing.T) {
	disks := scanMachine(t)
	// An old filesystem on the SAS disk, not in use.
	for i := range disks {
		if disks[i].Name == "sdc" {
			disks[i].Signature = Signature{Type: "xfs", UUID: "old"}
			disks[i].judge()
		}
	}
	rule := Rule{Pool: "reuse", Layout: LayoutFile, Select: Selector{WWNs: []string{"5000c500b0c0d0e0"}}}
	cfg := Config{Rules: []Rule{rule}}
	cfg.Defaults()
	if _, pools := outcome(MakePlan(cfg, disks, nil)); pools["reuse"] != "no disk matches the rule" {
		t.Errorf("without wipe the disk with a filesystem must not be claimed: %v", pools)
	}
	cfg.Rules[0].Wipe = true
	plan := MakePlan(cfg, disks, nil)
	if got, _ := outcome(plan); got["sdc"] != "wipe reuse" {
		t.Errorf("sdc: %q, want wipe reuse", got["sdc"])
	}
	if len(plan.Pools[0].Wipe) != 1 {
		t.Errorf("pool plan %+v: want sdc to be wiped", plan.Pools[0])
	}
}

func TestMakePlanFindsRecordedDisks(t *testing.T) {
	disks := scanMachine(t)
	for i := range disks {
		if disks[i].Name == "vda" {
			disks[i].Signature = Signature{Type: "xfs", UUID: "u-1", Label: "plinth"}
			disks[i].judge()
			// After a reboot the disk has another kernel name.
			disks[i].Name, disks[i].Device = "vdc", "/dev/vdc"
		}
	}
	claims := []Claim{
		{Schema: ClaimRecords.Version(), Pool: "fast", Layout: LayoutFile, State: ClaimReady, UUID: "u-1",
			Disks: []Member{{ID: "serial:VIRTIO-DATA-1", Name: "vda", SizeBytes: 209715200 * 512}}},
		{Schema: ClaimRecords.Version(), Pool: "mirror", Layout: LayoutBtrfs, Raid: "raid1", State: ClaimReady, UUID: "u-2",
			Disks: []Member{{ID: "wwn:5000c500b0c0d0e0"}, {ID: "wwn:gone", Name: "sdx"}}},
		{Schema: ClaimRecords.Version(), Pool: "lost", Layout: LayoutFile, State: ClaimReady, UUID: "u-3",
			Disks: []Member{{ID: "wwn:also-gone", Name: "sdy"}}},
	}
	cfg := Config{Rules: []Rule{{Pool: "fast", Layout: LayoutBtrfs, Select: Selector{Transports: []Transport{TransportVirtio}}}}}
	cfg.Defaults()
	plan := MakePlan(cfg, disks, claims)
	gotDisks, gotPools := outcome(plan)
	want := map[string]string{"fast": "the rule says layout btrfs single but the pool was made as file ; plinth does not convert pools",
		"mirror": "", "lost": "disk wwn:also-gone (was sdy) is missing"}
	if d := cmp.Diff(want, gotPools); d != "" {
		t.Errorf("pools (-want +got):\n%s", d)
	}
	if gotDisks["vdc"] != "use fast" || gotDisks["sdc"] != "use mirror" {
		t.Errorf("disks %v: the renamed disk is found by its filesystem UUID, the SAS disk by WWN", gotDisks)
	}
	for _, pp := range plan.Pools {
		if pp.Name == "mirror" && pp.Degraded() != "disk wwn:gone (was sdx) is missing" {
			t.Errorf("mirror: degraded %q", pp.Degraded())
		}
	}
}

func TestConfigValidate(t *testing.T) {
	for name, tc := range map[string]struct {
		yaml, want string
	}{
		"empty selector":   {"rules: [{pool: a, layout: disk, select: {}}]", "an empty selector would take every free disk"},
		"bad layout":       {"rules: [{pool: a, layout: lvm, select: {transports: [nvme]}}]", `rules[0].layout: "lvm"`},
		"bad raid":         {"rules: [{pool: a, layout: btrfs, raid: raid5, select: {transports: [nvme]}}]", `rules[0].raid: "raid5"`},
		"wipe by pattern":  {"rules: [{pool: a, layout: disk, wipe: true, select: {models: ['S*']}}]", "rules[0].wipe"},
		"unknown field":    {"rules: [{pool: a, layout: disk, selct: {}}]", "unknown field"},
		"file of two":      {"rules: [{pool: a, layout: file, select: {transports: [nvme], count: 2}}]", "a file pool is one disk"},
		"bad transport":    {"rules: [{pool: a, layout: disk, select: {transports: [scsi2]}}]", `"scsi2"`},
		"same pool twice":  {"rules: [{pool: a, layout: disk, select: {transports: [nvme]}}, {pool: a, layout: disk, select: {transports: [sata]}}]", "already made"},
		"bad pool name":    {"rules: [{pool: A_b, layout: disk, select: {transports: [nvme]}}]", "rules[0].pool"},
		"sizes reversed":   {"rules: [{pool: a, layout: disk, select: {minSize: 2Ti, maxSize: 1Ti}}]", "above maxSize"},
		"short interval":   {"scanInterval: 10ms\nrules: []", "under 1s"},
		"btrfs of ext4":    {"rules: [{pool: a, layout: btrfs, fsType: ext4, select: {transports: [nvme]}}]", "rules[0].fsType"},
		"bad size":         {"rules: [{pool: a, layout: disk, select: {minSize: lots}}]", "disk config"},
		"raid1 of one":     {"rules: [{pool: a, layout: btrfs, raid: raid1, select: {transports: [nvme], count: 1}}]", "needs at least 2"},
		"wipe by exact ok": {"rules: [{pool: a, layout: disk, wipe: true, select: {wwns: ['5000c500b0c0d0e0']}}]", ""},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("error %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

// scanInterval 0 is the default, as documented (like every duration the
// configuration leaves at zero); under 1s otherwise is refused.
func TestScanIntervalZeroIsTheDefault(t *testing.T) {
	for _, y := range []string{"rules: []", "scanInterval: 0s\nrules: []", "scanInterval: \"0\"\nrules: []"} {
		c, err := ParseConfig([]byte(y))
		if err != nil || c.ScanInterval.Duration != 10*time.Second {
			t.Errorf("%q: %v, %v; want 10s", y, c.ScanInterval, err)
		}
	}
}

// The example the docs point to parses and, on the fixture machine, claims
// the SAS disk whole and nothing of the NVMe drive in use as swap.
func TestExampleConfig(t *testing.T) {
	cfg, err := LoadConfig("../../deploy/examples/disk-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	got, pools := outcome(MakePlan(cfg, scanMachine(t), nil))
	if got["sdc"] != "claim hdd" || got["nvme1n1"] != "skip" || got["sda"] != "skip" {
		t.Errorf("disks %v", got)
	}
	if pools["nvme"] != "raid1 needs 2 disks, 1 match" {
		t.Errorf("pools %v", pools)
	}
}

// After a crash while formatting, the recorded disk is formatted again
// only if it holds nothing or what plinth's mkfs began.
func TestMakePlanInterruptedFormat(t *testing.T) {
	base := scanMachine(t)
	claim := Claim{Schema: ClaimRecords.Version(), Pool: "fast", Layout: LayoutFile, State: ClaimFormatting,
		Disks: []Member{{ID: "wwn:5000c500b0c0d0e0", SizeBytes: 23437770752 * 512}}}
	for name, tc := range map[string]struct {
		sig     Signature
		problem bool
	}{
		"nothing written yet":     {Signature{}, false},
		"plinth's mkfs began":     {Signature{Type: "xfs", UUID: "half", Label: "plinth"}, false},
		"another disk in its bay": {Signature{Type: "ext4", UUID: "x", Label: "data"}, true},
	} {
		t.Run(name, func(t *testing.T) {
			disks := append([]Disk(nil), base...)
			for i := range disks {
				if disks[i].Name == "sdc" {
					disks[i].Signature = tc.sig
					disks[i].judge()
				}
			}
			plan := MakePlan(Config{}, disks, []Claim{claim})
			pp := plan.Pools[0]
			if (pp.Problem != "") != tc.problem {
				t.Errorf("problem %q, want one: %t", pp.Problem, tc.problem)
			}
			if len(pp.New) != 1 {
				t.Errorf("new %v", pp.New)
			}
		})
	}
}

// A tenant of a whole-disk volume writes a filesystem with the UUID of a
// filesystem pool whose own disk is gone (the UUID is in no secret place:
// `kubectl plinth` lists pools). The tenant's disk stays the disk pool's;
// the filesystem pool stays missing its disk.
func TestTenantDiskIsNotAdoptedByUUID(t *testing.T) {
	disks := scanMachine(t)
	var tenant Disk
	for i := range disks {
		if disks[i].Name == "nvme0n1" {
			disks[i].Signature = Signature{Type: "xfs", UUID: "u-1", Label: "plinth", Found: []string{"xfs at offset 0x0"}}
			disks[i].judge()
			tenant = disks[i]
		}
	}
	claims := []Claim{
		{Schema: ClaimRecords.Version(), Pool: "fast", Layout: LayoutFile, State: ClaimReady, UUID: "u-1",
			Disks: []Member{{ID: "path:/devices/gone", Name: "vdz"}}},
		{Schema: ClaimRecords.Version(), Pool: "whole", Layout: LayoutDisk, State: ClaimReady,
			Disks: []Member{{ID: tenant.ID, Name: tenant.Name, SizeBytes: tenant.SizeBytes}}},
	}
	plan := MakePlan(Config{}, disks, claims)
	for _, pp := range plan.Pools {
		var present []string
		for _, d := range pp.Present {
			present = append(present, d.Name)
		}
		switch pp.Name {
		case "fast":
			if len(present) != 0 || len(pp.Missing) != 1 {
				t.Errorf("pool fast: present %v, missing %v; want its disk missing, nothing adopted", present, pp.Missing)
			}
		case "whole":
			if len(present) != 1 || present[0] != "nvme0n1" {
				t.Errorf("pool whole: present %v, want nvme0n1", present)
			}
		}
	}
}

// A claim record that cannot be read (trial finding 7: a FIFO) makes its
// pool unhealthy with the reason; no disk is claimed meanwhile (the
// unreadable record may name any of them), and the rule for that pool
// does not make it again.
func TestMakePlanUnreadableClaim(t *testing.T) {
	disks := scanMachine(t)
	claims := []Claim{{Pool: "whole", Unreadable: "claim record /x/whole.json: not a regular file (a FIFO)"}}
	cfg := Config{Rules: []Rule{
		{Pool: "whole", Layout: LayoutDisk, Select: Selector{Transports: []Transport{TransportSAS}}},
		{Pool: "fresh", Layout: LayoutDisk, Select: Selector{Transports: []Transport{TransportVirtio}}},
	}}
	cfg.Defaults()
	plan := MakePlan(cfg, disks, claims)
	gotDisks, gotPools := outcome(plan)
	if !strings.Contains(gotPools["whole"], "not a regular file") {
		t.Errorf("pool whole: problem %q, want the record's", gotPools["whole"])
	}
	if gotDisks["sdc"] != "skip" || gotDisks["vda"] != "skip" {
		t.Errorf("disks %v: want nothing claimed while a record is unreadable", gotDisks)
	}
	for _, dec := range plan.Decisions {
		if dec.Disk.Name == "vda" && !strings.Contains(dec.Why, "whole") {
			t.Errorf("vda: why %q, want it to name the unreadable record", dec.Why)
		}
	}
	for _, pp := range plan.Pools {
		if pp.Name == "whole" && (pp.Claim == nil || pp.Layout != LayoutDisk) {
			t.Errorf("pool whole: %+v, want its claim kept and the rule's layout", pp)
		}
	}
}

// Trial finding 12: a disk under mkfs's minimum is passed over with the
// reason, not claimed and left formatting for ever.
func TestMakePlanTooSmallForTheFilesystem(t *testing.T) {
	for name, tc := range map[string]struct {
		rule Rule
		size int64
		want string // "" claimed
	}{
		"xfs under 300 MiB":  {Rule{Pool: "f", Layout: LayoutFile}, 200 << 20, "pool f: too small for an xfs file pool (200MiB, at least 300MiB)"},
		"xfs at 300 MiB":     {Rule{Pool: "f", Layout: LayoutFile}, 300 << 20, ""},
		"btrfs under 125MiB": {Rule{Pool: "b", Layout: LayoutBtrfs}, 100 << 20, "pool b: too small for a btrfs pool (100MiB, at least 125MiB a disk)"},
		"btrfs at 125 MiB":   {Rule{Pool: "b", Layout: LayoutBtrfs}, 125 << 20, ""},
		"a small whole disk": {Rule{Pool: "d", Layout: LayoutDisk}, 1 << 20, ""},
	} {
		t.Run(name, func(t *testing.T) {
			disks := scanMachine(t)
			for i := range disks {
				if disks[i].Name == "vda" {
					disks[i].SizeBytes = tc.size
				}
			}
			tc.rule.Select = Selector{Transports: []Transport{TransportVirtio}}
			cfg := Config{Rules: []Rule{tc.rule}}
			cfg.Defaults()
			plan := MakePlan(cfg, disks, nil)
			got, pools := outcome(plan)
			if tc.want == "" {
				if got["vda"] != "claim "+tc.rule.Pool {
					t.Errorf("vda: %q, want it claimed", got["vda"])
				}
				return
			}
			if got["vda"] != "skip" || pools[tc.rule.Pool] != "no disk matches the rule" {
				t.Errorf("vda: %q, pool: %q; want skipped, no pool", got["vda"], pools[tc.rule.Pool])
			}
			for _, dec := range plan.Decisions {
				if dec.Disk.Name == "vda" && !strings.Contains(dec.Why, tc.want) {
					t.Errorf("why %q, want %q", dec.Why, tc.want)
				}
			}
		})
	}
}
