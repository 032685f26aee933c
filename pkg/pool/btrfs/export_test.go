package btrfs

import (
	"context"
	"sort"
)

// SubvolKey is the record parameter that holds a volume's subvolume id.
const SubvolKey = subvolKey

// Qgroups is what the tests read about a volume's qgroups, from the
// kernel's quota tree.
type Qgroups struct {
	Simple, Inconsistent bool
	Members              []string // of the volume's level-1 group
	Limit, OwnLimit      int64    // of the level-1 group, of the volume's level-0 group
	Referenced           int64    // of the level-1 group
	Parents              map[uint64][]string
}

// ReadQgroups reads the qgroups of the volume on subvolume sub.
func ReadQgroups(dir string, sub uint64) (Qgroups, error) {
	st, err := readState(dir)
	if err != nil {
		return Qgroups{}, err
	}
	q := Qgroups{Simple: st.simple(), Inconsistent: st.inconsistent(), Parents: map[uint64][]string{}}
	if g := st.groups[level1(sub)]; g != nil {
		q.Limit, q.Referenced = g.limit, g.referenced
		for _, c := range g.children {
			q.Members = append(q.Members, qgroupString(c))
		}
		sort.Strings(q.Members)
	}
	if g := st.groups[qgroupID(0, sub)]; g != nil {
		q.OwnLimit = g.limit
	}
	for id, g := range st.groups {
		for _, par := range g.parents {
			q.Parents[id] = append(q.Parents[id], qgroupString(par))
		}
	}
	return q, nil
}

// SubvolID is the id of the subvolume at path.
func SubvolID(path string) (uint64, error) { return subvolID(path) }

// Sweep is the sweep Stats runs, with its error.
func (p *Pool) Sweep(ctx context.Context) error { return p.sweep(ctx) }
