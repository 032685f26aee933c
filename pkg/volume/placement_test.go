package volume

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// fakeNode is a node of pools with given numbers: placement needs nothing
// more. It records what it was asked to create and how often it was asked
// for a volume; a pool named in refuse answers ErrNoSpace, as a node does
// when another create took the bytes first.
type fakeNode struct {
	goneNode // every call not below: ErrNodeGone
	pools    []PoolInfo
	poolsErr error
	refuse   map[string]bool

	mu          sync.Mutex
	created     map[string]pool.Volume // volume ID → volume
	volumeCalls int
}

const mib = int64(1 << 20)

func (f *fakeNode) Pools(context.Context) ([]PoolInfo, error) { return f.pools, f.poolsErr }

func (f *fakeNode) CreateVolume(_ context.Context, poolName string, v pool.Volume) (pool.Volume, error) {
	if f.refuse[poolName] {
		return pool.Volume{}, fmt.Errorf("%w: pool %s: taken by another create", pool.ErrNoSpace, poolName)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	v.Pool, v.State = poolName, pool.StateReady
	if f.created == nil {
		f.created = map[string]pool.Volume{}
	}
	f.created[v.ID] = v
	return v, nil
}

func (f *fakeNode) Volume(_ context.Context, id string) (pool.Volume, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.volumeCalls++
	if v, ok := f.created[id]; ok {
		return v, nil
	}
	return pool.Volume{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
}

// blockPool is a pool serving block and ext4 volumes with free bytes of
// which committed are promised already (reservations in flight included).
func blockPool(name string, free, committed int64) PoolInfo {
	return PoolInfo{Name: name, Backend: "file",
		Capabilities: pool.Capabilities{Block: true, FsTypes: []string{"ext4"}},
		Stats:        pool.Stats{TotalBytes: 2 * free, FreeBytes: free, CommittedBytes: committed}}
}

// Placement by the table: a node is a candidate only when one of its pools
// serving the request holds the whole volume; Preferred order first, then
// the smallest pool that fits, ties by node then pool name; Requisite
// limits, never orders. old: what plinth did before issue 11, given the
// request as it was then built (Nodes = preferred then requisite).
func TestPlacement(t *testing.T) {
	type nodes map[string]*fakeNode
	node := func(pools ...PoolInfo) *fakeNode { return &fakeNode{pools: pools} }
	req := func(requiredMi int64, requisite, preferred []string) CreateRequest {
		return CreateRequest{Name: "v", RequiredBytes: requiredMi * mib, Mode: pool.ModeBlock, Requisite: requisite, Preferred: preferred}
	}
	list := func(n ...string) []string { return n }
	cases := map[string]struct {
		nodes    nodes
		req      CreateRequest
		wantNode string
		wantPool string
		wantErr  error
		errHas   []string // the error names these
		old      string
	}{
		"best fit across nodes": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 0)), "n2": node(blockPool("b", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n2", wantPool: "b", old: "same",
		},
		"best fit among a node's pools": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 0), blockPool("b", 50*mib, 0), blockPool("c", 30*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n1", wantPool: "b", old: "same",
		},
		"tie: node name first": {
			nodes: nodes{"n2": node(blockPool("a", 50*mib, 0)), "n1": node(blockPool("z", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n1", wantPool: "z", old: "same",
		},
		"tie on one node: pool name": {
			nodes: nodes{"n1": node(blockPool("b", 50*mib, 0), blockPool("a", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n1", wantPool: "a", old: "n1/b (the node's listing order)",
		},
		"requisite limits": {
			nodes: nodes{"n1": node(blockPool("a", 50*mib, 0)), "n2": node(blockPool("a", 100*mib, 0))},
			req:   req(40, list("n2"), nil), wantNode: "n2", wantPool: "a", old: "same",
		},
		"requisite is not an order: best fit among them": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 0)), "n2": node(blockPool("a", 50*mib, 0)), "n3": node(blockPool("a", 41*mib, 0))},
			req:   req(40, list("n1", "n2"), nil), wantNode: "n2", wantPool: "a", old: "n1 (the first node listed)",
		},
		"two nodes of two pools, one single pool fits": {
			nodes: nodes{"n1": node(blockPool("a", 50*mib, 0), blockPool("b", 50*mib, 0)), "n2": node(blockPool("a", 90*mib, 0), blockPool("b", 30*mib, 0))},
			req:   req(80, list("n1", "n2"), nil), wantNode: "n2", wantPool: "a", old: "same here; the provisioner's createAmong chose n1 (see pkg/provision)",
		},
		"preferred beats best fit": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 0)), "n2": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, list("n1")), wantNode: "n1", wantPool: "a", old: "same",
		},
		"preferred in order": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 0)), "n2": node(blockPool("a", 200*mib, 0)), "n3": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, list("n2", "n1")), wantNode: "n2", wantPool: "a", old: "same",
		},
		"preferred node full: best fit elsewhere": {
			nodes: nodes{"n1": node(blockPool("a", 30*mib, 0)), "n2": node(blockPool("a", 100*mib, 0)), "n3": node(blockPool("a", 60*mib, 0))},
			req:   req(40, nil, list("n1")), wantNode: "n3", wantPool: "a", old: "ResourceExhausted (preferred was taken as allowed)",
		},
		"preferred outside requisite is ignored": {
			nodes: nodes{"n1": node(blockPool("a", 50*mib, 0)), "n2": node(blockPool("a", 100*mib, 0))},
			req:   req(40, list("n2"), list("n1", "n2")), wantNode: "n2", wantPool: "a", old: "n1 (outside the requisite)",
		},
		"reservations in flight count": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 70*mib)), "n2": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n2", wantPool: "a", old: "same",
		},
		"best fit after reservations": {
			nodes: nodes{"n1": node(blockPool("a", 100*mib, 55*mib)), "n2": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n1", wantPool: "a", old: "same",
		},
		"lost race: next choice": {
			nodes: nodes{"n1": {pools: []PoolInfo{blockPool("a", 45*mib, 0)}, refuse: map[string]bool{"a": true}}, "n2": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n2", wantPool: "a", old: "same",
		},
		"pool parameter": {
			nodes: nodes{"n1": node(blockPool("a", 50*mib, 0), blockPool("b", 100*mib, 0))},
			req:   func() CreateRequest { r := req(40, nil, nil); r.Params.Pool = "b"; return r }(), wantNode: "n1", wantPool: "b", old: "same",
		},
		"unreadable node skipped": {
			nodes: nodes{"n1": {poolsErr: errors.New("status unreadable")}, "n2": node(blockPool("a", 50*mib, 0))},
			req:   req(40, nil, nil), wantNode: "n2", wantPool: "a", old: "same",
		},
		"nothing fits: each node's largest pool": {
			nodes:   nodes{"n1": node(blockPool("a", 30*mib, 0), blockPool("b", 35*mib, 0)), "n2": node(blockPool("a", 100*mib, 80*mib))},
			req:     req(40, nil, nil),
			wantErr: pool.ErrNoSpace,
			errHas:  []string{"largest pool b on node n1 has 35MiB allocatable, 40MiB requested", "largest pool a on node n2 has 20MiB allocatable, 40MiB requested"},
			old:     "ErrNoSpace naming only the last pool tried",
		},
		"nothing serves": {
			nodes:   nodes{"n1": node(blockPool("a", 100*mib, 0))},
			req:     CreateRequest{Name: "v", RequiredBytes: 40 * mib, Mode: pool.ModeFilesystem, FsType: "xfs"},
			wantErr: pool.ErrUnsupported, old: "same",
		},
		"requisite unknown": {
			nodes:   nodes{"n1": node(blockPool("a", 100*mib, 0))},
			req:     req(40, list("n9"), nil),
			wantErr: pool.ErrNoSpace, old: "same",
		},
	}
	names := make([]string, 0, len(cases))
	for n := range cases {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, name := range names {
		tc := cases[name]
		t.Run(name, func(t *testing.T) {
			set := map[string]Node{}
			for n, f := range tc.nodes {
				set[n] = f
			}
			got, err := NewController(set).CreateVolume(context.Background(), tc.req)
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("got %+v, %v; want %v (old: %s)", got, err, tc.wantErr, tc.old)
				}
				for _, s := range tc.errHas {
					if !strings.Contains(err.Error(), s) {
						t.Errorf("error %q does not say %q (old: %s)", err, s, tc.old)
					}
				}
				return
			}
			if err != nil || got.Node != tc.wantNode || got.Volume.Pool != tc.wantPool {
				t.Fatalf("placed on %s/%s (%v), want %s/%s (old: %s)", got.Node, got.Volume.Pool, err, tc.wantNode, tc.wantPool, tc.old)
			}
		})
	}
}

// idxNodes is a NodeSet with an index of volumes by ID, as a cluster's is.
type idxNodes struct {
	StaticNodes
	where map[string]string
}

func (s idxNodes) VolumeNode(id string) (string, bool) { n, ok := s.where[id]; return n, ok }

// GetVolume asks only the volume's node when the node set knows where it
// is (old: every node in turn, 50 calls here).
func TestGetVolumeAsksOneNode(t *testing.T) {
	set := idxNodes{StaticNodes: StaticNodes{}, where: map[string]string{}}
	var all []*fakeNode
	for i := range 50 {
		f := &fakeNode{}
		all = append(all, f)
		set.StaticNodes[fmt.Sprintf("n%02d", i)] = f
	}
	id := VolumeID("v")
	all[49].created = map[string]pool.Volume{id: {ID: id, Pool: "a", State: pool.StateReady}}
	set.where[id] = "n49"
	c := NewControllerOver(set)
	got, err := c.GetVolume(context.Background(), id)
	if err != nil || got.Node != "n49" || got.Volume.ID != id {
		t.Fatalf("got %+v, %v", got, err)
	}
	calls := 0
	for _, f := range all {
		calls += f.volumeCalls
	}
	if calls != 1 {
		t.Fatalf("%d nodes asked for the volume, want 1", calls)
	}
	if _, err := c.GetVolume(context.Background(), VolumeID("other")); !errors.Is(err, pool.ErrNotFound) {
		t.Fatalf("unknown volume: %v, want ErrNotFound", err)
	}
}
