package device

import (
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// On the 8-GPU fixture: GPUs g0..g7 are 0000:18, 1a | 3b, 3d (NUMA 0) and
// 9a, 9c | bb, bd (NUMA 1); '|' separates PCIe switches.
var gpus = map[string]string{
	"g0": "0000:18:00.0", "g1": "0000:1a:00.0", "g2": "0000:3b:00.0", "g3": "0000:3d:00.0",
	"g4": "0000:9a:00.0", "g5": "0000:9c:00.0", "g6": "0000:bb:00.0", "g7": "0000:bd:00.0",
}

func ids(names string) []string {
	var out []string
	for _, n := range strings.Fields(names) {
		dev, replica, ok := strings.Cut(n, "::")
		id := gpus[dev]
		if ok {
			id += "::" + replica
		}
		out = append(out, id)
	}
	return out
}

func TestPreferOn8GPUs(t *testing.T) {
	gpuDevs := served(t, fixtureHost("nvidia-8gpu"), DefaultConfig(), "example.com/gpu")
	all := "g0 g1 g2 g3 g4 g5 g6 g7"
	tests := map[string]struct {
		available, must string
		size            int
		want            string
	}{
		"one GPU, all free: the first":                       {all, "", 1, "g0"},
		"two: under one switch":                              {all, "", 2, "g0 g1"},
		"four: one NUMA node":                                {all, "", 4, "g0 g1 g2 g3"},
		"eight: all":                                         {all, "", 8, all},
		"six: a NUMA node and one switch of the other":       {all, "", 6, "g0 g1 g2 g3 g4 g5"},
		"one with g0 taken: g0's sibling (pack)":             {"g1 g2 g3 g4 g5 g6 g7", "", 1, "g1"},
		"two with g0 taken: a whole switch, not g1 + other":  {"g1 g2 g3 g4 g5 g6 g7", "", 2, "g2 g3"},
		"four with g0 taken: the untouched NUMA node":        {"g1 g2 g3 g4 g5 g6 g7", "", 4, "g4 g5 g6 g7"},
		"must-include g5: its switch sibling":                {all, "g5", 2, "g5 g4"},
		"must-include g5, four: its NUMA node":               {all, "g5", 4, "g5 g4 g6 g7"},
		"must-include g0 and g7 across NUMA, three":          {all, "g0 g7", 3, "g0 g7 g1"},
		"scattered free: the switch with both free":          {"g1 g3 g4 g6 g7", "", 2, "g6 g7"},
		"scattered, three on NUMA 1 (tight) over spanning 0": {"g1 g3 g4 g6 g7", "", 3, "g4 g6 g7"},
	}
	units := Units(gpuDevs, 1)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := Prefer(units, ids(tc.available), ids(tc.must), tc.size, false)
			if err != nil {
				t.Fatal(err)
			}
			want := ids(tc.want)
			sort.Strings(got[len(ids(tc.must)):])
			sort.Strings(want[len(ids(tc.must)):])
			if d := cmp.Diff(want, got); d != "" {
				t.Errorf("Prefer (-want +got):\n%s", d)
			}
		})
	}
}

func TestPreferReplicas(t *testing.T) {
	gpuDevs := served(t, fixtureHost("nvidia-8gpu"), DefaultConfig(), "example.com/gpu")
	units := Units(gpuDevs, 2)
	if len(units) != 16 || units[0].ID != "0000:18:00.0::0" {
		t.Fatalf("units %d, first %s", len(units), units[0].ID)
	}
	var avail []string
	for _, u := range units {
		avail = append(avail, u.ID)
	}
	// Strict: two replicas come from two devices, under one switch.
	got, err := Prefer(units, avail, nil, 2, true)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(ids("g0::0 g1::0"), got); d != "" {
		t.Errorf("strict (-want +got):\n%s", d)
	}
	// A device with one replica left is filled before a fresh one (packing).
	got, _ = Prefer(units, without(avail, gpus["g0"]+"::0"), nil, 1, false)
	if d := cmp.Diff(ids("g0::1"), got); d != "" {
		t.Errorf("packing (-want +got):\n%s", d)
	}
	// Strict with must-include g0::0 never adds g0::1.
	got, _ = Prefer(units, avail, ids("g0::0"), 2, true)
	if DeviceOf(got[1]) == gpus["g0"] {
		t.Errorf("strict gave two replicas of g0: %v", got)
	}
	if _, err := Prefer(units, avail, []string{"nope"}, 1, false); err == nil {
		t.Error("unknown must-include accepted")
	}
}

func without(list []string, drop string) []string {
	var out []string
	for _, x := range list {
		if x != drop {
			out = append(out, x)
		}
	}
	return out
}
