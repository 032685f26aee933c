package disk

import (
	"fmt"
	"slices"
	"strings"
)

// Action is what Plan decided for one disk.
type Action string

const (
	ActionUse   Action = "use"   // already one of plinth's pools' disks
	ActionClaim Action = "claim" // free: will be claimed (and formatted)
	ActionWipe  Action = "wipe"  // named by a rule that wipes: signatures erased, then claimed
	ActionSkip  Action = "skip"  // left alone
)

// Decision is what Plan decided for one disk, and why.
type Decision struct {
	Disk   Disk   `json:"disk"`
	Pool   string `json:"pool,omitempty"`
	Action Action `json:"action"`
	Why    string `json:"why"`
}

// PoolPlan is one pool made of disks: from a claim record, a rule, or
// both.
type PoolPlan struct {
	Name   string `json:"name"`
	Layout Layout `json:"layout"`
	Raid   string `json:"raid,omitempty"`
	FsType string `json:"fsType,omitempty"`
	// Claim is the pool's record (nil: a new pool).
	Claim *Claim `json:"claim,omitempty"`
	// Present are the recorded disks found now; New the disks to claim
	// now (a new pool's, or free disks joining a disk pool); Wipe those
	// of New whose signatures are erased first.
	Present []Disk   `json:"present,omitempty"`
	New     []Disk   `json:"new,omitempty"`
	Wipe    []Disk   `json:"wipe,omitempty"`
	Missing []Member `json:"missing,omitempty"`
	// Problem says why the pool cannot be made or started ("": it can).
	Problem string `json:"problem,omitempty"`
}

// Plan is what plinth would do with the node's disks.
type Plan struct {
	Pools     []PoolPlan `json:"pools"`
	Decisions []Decision `json:"disks"`
}

// MakePlan decides, without touching anything, which disks each pool has
// and which free disks the rules claim. Recorded pools keep their disks,
// found by identity (ID, or the pool filesystem's UUID); a disk is claimed
// by the first rule that selects it; a disk with anything on it is never
// claimed unless a rule with wipe names it and it is not in use.
func MakePlan(cfg Config, disks []Disk, claims []Claim) Plan {
	var plan Plan
	owner := map[string]string{} // disk ID -> pool
	byPool := map[string]int{}
	// A disk some record names by identity is that record's, never
	// another pool's by filesystem UUID: a tenant of a whole-disk volume
	// can write any UUID on its disk.
	recorded := map[string]bool{}
	for _, c := range claims {
		for _, m := range c.Disks {
			recorded[m.ID] = true
		}
	}
	// Disks a rule with wipe names now: an owed wipe goes on only for
	// those (a rule taken out of the configuration wipes nothing more).
	wipeNamed := map[string]bool{}
	for _, r := range cfg.Rules {
		for _, d := range disks {
			if r.Wipe && r.Select.names(d) && r.Select.mismatch(d) == "" {
				wipeNamed[d.ID] = true
			}
		}
	}
	// A record that cannot be read may name any disk: while one is, no
	// disk is claimed for any pool.
	unreadable := ""
	for _, c := range claims {
		if c.Unreadable != "" {
			byPool[c.Pool] = len(plan.Pools)
			plan.Pools = append(plan.Pools, PoolPlan{Name: c.Pool, Claim: &c, Problem: c.Unreadable})
			if unreadable == "" {
				unreadable = c.Pool
			}
			continue
		}
		pp := PoolPlan{Name: c.Pool, Layout: c.Layout, Raid: c.Raid, FsType: c.FsType, Claim: &c}
		for _, m := range c.Disks {
			i := slices.IndexFunc(disks, func(d Disk) bool {
				return owner[d.ID] == "" && (d.ID == m.ID || !recorded[d.ID]) && ours(c, m, d)
			})
			if i < 0 {
				pp.Missing = append(pp.Missing, m)
				continue
			}
			owner[disks[i].ID] = c.Pool
			pp.Present = append(pp.Present, disks[i])
			// A disk pool's wipe owed since a start that stopped before it
			// (the pool has not served the disk: it was never free).
			if c.Layout == LayoutDisk && m.Wipe && wipeNamed[disks[i].ID] && disks[i].State != StateFree && wipeable(disks[i]) {
				pp.Wipe = append(pp.Wipe, disks[i])
			}
		}
		if c.State == ClaimFormatting {
			// Formatting was interrupted: the recorded disks are formatted
			// again (they were free or named for wiping when recorded) if
			// they hold nothing, or only what plinth's mkfs began. One that
			// holds anything else now is another disk in its place: the
			// pool stops there.
			for _, d := range pp.Present {
				if d.State != StateFree && (!wipeable(d) || len(d.Partitions) > 0 || !plinthLabel(d.Signature.Label, c.Pool)) {
					pp.Problem = fmt.Sprintf("formatting was interrupted, and disk %s (%s) now holds what plinth did not write (%s); it is left alone",
						d.ID, d.Name, strings.Join(d.Reasons, "; "))
				}
			}
			pp.New, pp.Present = pp.Present, nil
		}
		byPool[c.Pool] = len(plan.Pools)
		plan.Pools = append(plan.Pools, pp)
	}
	why := map[string][]string{} // disk ID -> why each rule passed it by
	for _, r := range cfg.Rules {
		i, recorded := byPool[r.Pool]
		if !recorded {
			i = len(plan.Pools)
			plan.Pools = append(plan.Pools, PoolPlan{Name: r.Pool, Layout: r.Layout, Raid: r.Raid, FsType: r.FsType})
		}
		pp := &plan.Pools[i]
		if recorded && pp.Claim.Unreadable != "" {
			pp.Layout, pp.Raid, pp.FsType = r.Layout, r.Raid, r.FsType // how it is listed; its record decides nothing
			continue
		}
		if recorded && (pp.Layout != r.Layout || r.Layout == LayoutBtrfs && pp.Raid != r.Raid) {
			pp.Problem = fmt.Sprintf("the rule says layout %s %s but the pool was made as %s %s; plinth does not convert pools", r.Layout, r.Raid, pp.Layout, pp.Raid)
			continue
		}
		if recorded && r.Layout != LayoutDisk {
			continue // a filesystem pool keeps the disks it was made with
		}
		taken := len(pp.Present) + len(pp.New)
		blocked := false
		for _, d := range disks {
			if owner[d.ID] != "" {
				continue
			}
			if m := r.Select.mismatch(d); m != "" {
				why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: %s", r.Pool, m))
				continue
			}
			if r.Layout == LayoutDisk && strings.HasPrefix(d.ID, "path:") {
				why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: no WWN or serial to find the disk by after a reboot", r.Pool))
				continue
			}
			wipe := false
			if d.State != StateFree {
				if !r.Wipe || !r.Select.names(d) || !wipeable(d) {
					why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: not free: %s", r.Pool, strings.Join(d.Reasons, "; ")))
					continue
				}
				wipe = true
			}
			if m := tooSmall(r.Layout, d.SizeBytes); m != "" {
				why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: %s", r.Pool, m))
				continue
			}
			if r.Select.Count > 0 && taken >= r.Select.Count {
				why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: has its %d disks", r.Pool, r.Select.Count))
				continue
			}
			if unreadable != "" {
				why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: no disk is claimed while the claim record of pool %s cannot be read", r.Pool, unreadable))
				blocked = true
				continue
			}
			owner[d.ID] = r.Pool
			pp.New = append(pp.New, d)
			if wipe {
				pp.Wipe = append(pp.Wipe, d)
			}
			taken++
		}
		if !recorded {
			switch {
			case len(pp.New) == 0 && blocked:
				pp.Problem = fmt.Sprintf("not made while the claim record of pool %s cannot be read", unreadable)
			case len(pp.New) == 0:
				pp.Problem = "no disk matches the rule"
			case r.Layout == LayoutBtrfs && r.Raid != "single" && len(pp.New) < 2:
				pp.Problem = fmt.Sprintf("%s needs 2 disks, %d match", r.Raid, len(pp.New))
				for _, d := range pp.New {
					delete(owner, d.ID)
					why[d.ID] = append(why[d.ID], fmt.Sprintf("pool %s: %s", r.Pool, pp.Problem))
				}
				pp.New, pp.Wipe = nil, nil
			}
		}
	}
	for i := range plan.Pools {
		pp := &plan.Pools[i]
		if pp.Problem == "" && len(pp.Missing) > 0 {
			pp.Problem = missingProblem(*pp)
		}
	}
	for _, d := range disks {
		dec := Decision{Disk: d, Pool: owner[d.ID], Action: ActionSkip}
		switch {
		case dec.Pool != "" && slices.ContainsFunc(plan.poolOf(dec.Pool).Wipe, func(x Disk) bool { return x.ID == d.ID }):
			dec.Action, dec.Why = ActionWipe, "named by the rule, which wipes: "+strings.Join(d.Reasons, "; ")
		case dec.Pool != "" && slices.ContainsFunc(plan.poolOf(dec.Pool).New, func(x Disk) bool { return x.ID == d.ID }):
			dec.Action, dec.Why = ActionClaim, "free and selected"
		case dec.Pool != "":
			dec.Action, dec.Why = ActionUse, "recorded as the pool's disk"
			dec.Disk.State, dec.Disk.Pool = StatePlinth, dec.Pool
		case len(why[d.ID]) > 0:
			dec.Why = strings.Join(why[d.ID], "; ")
		case d.State != StateFree:
			dec.Why = "not free: " + strings.Join(d.Reasons, "; ")
		default:
			dec.Why = "no rule selects it"
		}
		plan.Decisions = append(plan.Decisions, dec)
	}
	return plan
}

func (p Plan) poolOf(name string) PoolPlan {
	for _, pp := range p.Pools {
		if pp.Name == name {
			return pp
		}
	}
	return PoolPlan{}
}

// ours reports whether disk d is the recorded member m of claim c: by ID,
// or, for a filesystem pool, by the filesystem UUID plinth made on it
// (a disk that has no WWN or serial is known by its UUID after a reboot).
func ours(c Claim, m Member, d Disk) bool {
	if d.ID == m.ID && (m.SizeBytes == 0 || d.SizeBytes == m.SizeBytes) {
		return true
	}
	return c.Layout != LayoutDisk && c.UUID != "" && d.Signature.UUID == c.UUID &&
		(m.SizeBytes == 0 || d.SizeBytes == m.SizeBytes) &&
		(m.WWN == "" || m.WWN == d.WWN) && (m.Serial == "" || m.Serial == d.Serial)
}

// The smallest disks mkfs makes a pool's filesystem on (mkfs.xfs 6.1:
// "Filesystem must be larger than 300MB", 300 MiB exactly passes;
// mkfs.btrfs 6.2: 109 MiB for one disk, "minimum size for each btrfs
// device is 131072000" with two: the larger is asked of every disk).
// A disk under them is passed over, never claimed and failed at mkfs.
const (
	xfsMinBytes         = 300 << 20
	btrfsMinDeviceBytes = 125 << 20
)

// tooSmall says why a disk of size bytes cannot hold layout's filesystem
// ("" when it can).
func tooSmall(layout Layout, size int64) string {
	switch {
	case layout == LayoutFile && size < xfsMinBytes:
		return fmt.Sprintf("too small for an xfs file pool (%s, at least %s)", FormatBytes(size), FormatBytes(xfsMinBytes))
	case layout == LayoutBtrfs && size < btrfsMinDeviceBytes:
		return fmt.Sprintf("too small for a btrfs pool (%s, at least %s a disk)", FormatBytes(size), FormatBytes(btrfsMinDeviceBytes))
	}
	return ""
}

// wipeable: nothing uses the disk now (only signatures are on it).
func wipeable(d Disk) bool {
	return len(d.MountPoints) == 0 && len(d.btrfs) == 0 && d.Held == "" && len(d.Holders) == 0 && !d.Swap && !d.ReadOnly && d.SizeBytes > 0
}

func missingProblem(pp PoolPlan) string {
	var names []string
	for _, m := range pp.Missing {
		names = append(names, m.String())
	}
	what := fmt.Sprintf("disk %s is missing", strings.Join(names, ", "))
	if len(pp.Missing) > 1 {
		what = fmt.Sprintf("disks %s are missing", strings.Join(names, ", "))
	}
	switch {
	case pp.Layout == LayoutDisk:
		return "" // the other disks serve; the missing disk's volume is unhealthy
	case pp.Layout == LayoutBtrfs && pp.Raid == "raid1" && len(pp.Present) >= 1 && len(pp.Missing) == 1:
		return "" // raid1 runs degraded (Degraded says so)
	}
	return what
}

// Degraded says why a pool runs with less redundancy than it was made
// with ("" when it does not).
func (pp PoolPlan) Degraded() string {
	if len(pp.Missing) == 0 || pp.Problem != "" {
		return ""
	}
	var names []string
	for _, m := range pp.Missing {
		names = append(names, m.String())
	}
	return fmt.Sprintf("disk %s is missing", strings.Join(names, ", "))
}

// plinthLabel: the filesystem label plinth gives a pool's filesystem.
func plinthLabel(label, poolName string) bool {
	return label == "plinth" || label == "plinth-"+poolName
}
