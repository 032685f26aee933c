package device

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Unit is what a resource hands out: a whole device, or one replica of a
// shared device.
type Unit struct {
	ID     string // what the kubelet sees: the device ID, or "<device ID>::<n>"
	Device Device
}

// Units expands devices into the units of a resource with replicas.
func Units(devs []Device, replicas int) []Unit {
	var out []Unit
	for _, d := range devs {
		if replicas <= 1 {
			out = append(out, Unit{ID: d.ID, Device: d})
			continue
		}
		for i := 0; i < replicas; i++ {
			out = append(out, Unit{ID: d.ID + "::" + strconv.Itoa(i), Device: d})
		}
	}
	return out
}

// DeviceOf returns the device ID of a unit ID.
func DeviceOf(unitID string) string {
	id, _, _ := strings.Cut(unitID, "::")
	return id
}

// Prefer chooses size units from available: first every unit in
// mustInclude, then units on one NUMA node, then under one PCIe switch,
// then those that leave the largest groups free (the tightest group that
// fits is used; a request that fits no group takes whole groups, largest
// first, to span as few as it can). With strict, no two units of one device.
func Prefer(all []Unit, available, mustInclude []string, size int, strict bool) ([]string, error) {
	byID := map[string]Unit{}
	for _, u := range all {
		byID[u.ID] = u
	}
	avail := map[string]bool{}
	for _, id := range available {
		if _, ok := byID[id]; !ok {
			return nil, fmt.Errorf("available device %q is not one of this resource's", id)
		}
		avail[id] = true
	}
	chosen := []string{}
	usedDev := map[string]bool{}
	for _, id := range mustInclude {
		if !avail[id] {
			return nil, fmt.Errorf("must-include device %q is not available", id)
		}
		chosen = append(chosen, id)
		usedDev[DeviceOf(id)] = true
	}
	if len(chosen) >= size {
		return chosen, nil
	}
	var cands []Unit
	for _, id := range available {
		if contains(chosen, id) || strict && usedDev[DeviceOf(id)] {
			continue
		}
		cands = append(cands, byID[id])
	}
	sort.Slice(cands, func(i, j int) bool { return cands[i].ID < cands[j].ID })
	// Affinity: the NUMA node and switch of what must be included.
	aff := affinity{}
	if len(mustInclude) > 0 {
		d := byID[mustInclude[0]].Device
		aff = affinity{numa: numaKey(d), sw: d.Switch(), set: true}
	}
	picked := pick(cands, size-len(chosen), 0, aff, strict)
	return append(chosen, picked...), nil
}

type affinity struct {
	numa, sw string
	set      bool
}

func numaKey(d Device) string { return strconv.Itoa(d.NUMANode) }

var levels = []func(Unit) string{
	func(u Unit) string { return numaKey(u.Device) },
	func(u Unit) string { return u.Device.Switch() },
}

// capacity is how many units a group can give: one per device when strict.
func capacity(us []Unit, strict bool) int {
	if !strict {
		return len(us)
	}
	devs := map[string]bool{}
	for _, u := range us {
		devs[u.Device.ID] = true
	}
	return len(devs)
}

func pick(cands []Unit, need, level int, aff affinity, strict bool) []string {
	if need <= 0 || len(cands) == 0 {
		return nil
	}
	if level == len(levels) {
		return pickUnits(cands, need, strict)
	}
	groups := map[string][]Unit{}
	var keys []string
	for _, u := range cands {
		k := levels[level](u)
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], u)
	}
	affKey := ""
	if aff.set {
		affKey = []string{aff.numa, aff.sw}[level]
	}
	var out []string
	for need > 0 && len(keys) > 0 {
		// Groups that fit come first: those where the request fits deeper
		// (in one switch rather than only in one NUMA node), then the
		// affinity group, then the tightest. Where none fits, the affinity
		// group and then the largest, to span as few as possible.
		sort.SliceStable(keys, func(i, j int) bool {
			gi, gj := groups[keys[i]], groups[keys[j]]
			ci, cj := capacity(gi, strict), capacity(gj, strict)
			fi, fj := ci >= need, cj >= need
			if fi != fj {
				return fi
			}
			if fi {
				if di, dj := fitDepth(gi, need, level+1, strict), fitDepth(gj, need, level+1, strict); di != dj {
					return di > dj
				}
			}
			if ai, aj := keys[i] == affKey, keys[j] == affKey; ai != aj {
				return ai
			}
			if ci != cj {
				if fi {
					return ci < cj // tight fit leaves larger groups free
				}
				return ci > cj
			}
			return keys[i] < keys[j]
		})
		k := keys[0]
		keys = keys[1:]
		got := pick(groups[k], need, level+1, aff, strict)
		out = append(out, got...)
		need -= len(got)
	}
	return out
}

// fitDepth is the deepest level below which some single group of us can
// give need units.
func fitDepth(us []Unit, need, level int, strict bool) int {
	depth := level - 1
	for l := level; l < len(levels); l++ {
		groups := map[string][]Unit{}
		for _, u := range us {
			groups[levels[l](u)] = append(groups[levels[l](u)], u)
		}
		fits := false
		for _, g := range groups {
			if capacity(g, strict) >= need {
				fits = true
			}
		}
		if !fits {
			break
		}
		depth = l
	}
	return depth
}

// pickUnits takes units one device at a time: devices with the fewest free
// units first (packing replicas), and never two of a device when strict.
func pickUnits(cands []Unit, need int, strict bool) []string {
	perDev := map[string][]Unit{}
	var devs []string
	for _, u := range cands {
		if _, ok := perDev[u.Device.ID]; !ok {
			devs = append(devs, u.Device.ID)
		}
		perDev[u.Device.ID] = append(perDev[u.Device.ID], u)
	}
	sort.SliceStable(devs, func(i, j int) bool {
		if a, b := len(perDev[devs[i]]), len(perDev[devs[j]]); a != b {
			return a < b
		}
		return devs[i] < devs[j]
	})
	var out []string
	for round := 0; len(out) < need; round++ {
		took := false
		for _, d := range devs {
			if len(out) == need {
				break
			}
			if round < len(perDev[d]) && (!strict || round == 0) {
				out = append(out, perDev[d][round].ID)
				took = true
			}
		}
		if !took {
			break
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
