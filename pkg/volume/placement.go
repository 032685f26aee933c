package volume

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// NodePools is what placement knows of one node: its pools, with every
// reservation in flight already taken off their allocatable bytes, or why
// they could not be read.
type NodePools struct {
	Node  string
	Pools []PoolInfo
	Err   error
}

// Choice is one pool a volume fits in and the size it is given there.
type Choice struct {
	Node string
	Pool PoolInfo
	Size int64
}

// Place is plinth's one placement rule. A pool is a candidate when it
// serves the request (mode, fs type, the pool and backend parameters) and
// can hold the whole volume by itself: a volume never spans pools, so a
// node's pools are never summed. Candidates are ranked by
//
//  1. the request's Preferred order (a candidate on a preferred node beats
//     any candidate on a node not preferred; earlier preferred nodes first),
//  2. best fit: the least allocatable bytes that still fit,
//  3. node name, then pool name, so that equal fits always rank the same.
//
// nodes must already be limited to the request's Requisite nodes. The
// ranked list is returned so that a caller that loses a race for the first
// pool (the node refuses with ErrNoSpace) can try the next. When nothing
// fits the error is ErrNoSpace and names, per node, its largest serving
// pool's allocatable bytes against the size that pool would have to give;
// when no pool anywhere serves the request it is ErrUnsupported.
func Place(req CreateRequest, nodes []NodePools) ([]Choice, error) {
	var fits []Choice
	var why []string
	matched := false
	for _, n := range nodes {
		if n.Err != nil {
			why = append(why, fmt.Sprintf("node %s: %v", n.Node, n.Err))
			continue
		}
		var largest *Choice
		for _, pi := range n.Pools {
			if !poolServes(pi, req.Params, req.Mode, req.FsType) {
				continue
			}
			matched = true
			size, err := Size(req.RequiredBytes, req.LimitBytes, req.Mode, mkfsType(pi, req.Mode, req.FsType))
			if err != nil {
				return nil, err
			}
			ch := Choice{Node: n.Node, Pool: pi, Size: size}
			if pi.Stats.MaxVolumeBytes() >= size {
				fits = append(fits, ch)
			}
			if largest == nil || pi.Stats.MaxVolumeBytes() > largest.Pool.Stats.MaxVolumeBytes() {
				largest = &ch
			}
		}
		if largest == nil {
			why = append(why, fmt.Sprintf("node %s: no pool serves the request", n.Node))
		} else {
			why = append(why, fmt.Sprintf("largest pool %s on node %s has %s allocatable, %s requested", largest.Pool.Name, n.Node,
				FormatBytes(largest.Pool.Stats.MaxVolumeBytes()), FormatBytes(largest.Size)))
		}
	}
	if len(fits) > 0 {
		rank := func(node string) int {
			if i := slices.Index(req.Preferred, node); i >= 0 {
				return i
			}
			return len(req.Preferred)
		}
		sort.Slice(fits, func(i, j int) bool {
			a, b := fits[i], fits[j]
			if ra, rb := rank(a.Node), rank(b.Node); ra != rb {
				return ra < rb
			}
			if fa, fb := a.Pool.Stats.MaxVolumeBytes(), b.Pool.Stats.MaxVolumeBytes(); fa != fb {
				return fa < fb
			}
			if a.Node != b.Node {
				return a.Node < b.Node
			}
			return a.Pool.Name < b.Pool.Name
		})
		return fits, nil
	}
	if !matched {
		kind := string(req.Mode)
		if req.Mode == pool.ModeFilesystem && req.FsType != "" {
			kind = req.FsType + " " + kind
		}
		if errs := nodeErrs(nodes); len(errs) > 0 && len(errs) == len(nodes) {
			return nil, fmt.Errorf("no node's pools could be read: %w", errors.Join(errs...))
		}
		return nil, fmt.Errorf("%w: no pool on nodes %v serves %s volumes with %s", pool.ErrUnsupported, nodeNames(nodes), kind, req.Params)
	}
	return nil, fmt.Errorf("%w: no single pool can hold the volume: %s", pool.ErrNoSpace, strings.Join(why, "; "))
}

func nodeErrs(nodes []NodePools) []error {
	var out []error
	for _, n := range nodes {
		if n.Err != nil {
			out = append(out, fmt.Errorf("node %s: %w", n.Node, n.Err))
		}
	}
	return out
}

func nodeNames(nodes []NodePools) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Node
	}
	return out
}
