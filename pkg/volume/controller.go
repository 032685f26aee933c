package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"

	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/pool"
)

// Controller decides where volumes go and asks the nodes to make them.
type Controller struct {
	nodes NodeSet
	locks *Locks
}

// NodeSet is the nodes a controller places volumes on: fixed in standalone
// mode, the cluster's plinth nodes (which come and go) in a cluster.
type NodeSet interface {
	// NodeIDs returns the IDs of the nodes known now, sorted.
	NodeIDs() []string
	// Node returns the node with this ID.
	Node(id string) (Node, bool)
}

// StaticNodes is a NodeSet that never changes.
type StaticNodes map[string]Node

// NodeIDs implements NodeSet.
func (s StaticNodes) NodeIDs() []string {
	ids := make([]string, 0, len(s))
	for id := range s {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	return ids
}

// Node implements NodeSet.
func (s StaticNodes) Node(id string) (Node, bool) {
	n, ok := s[id]
	return n, ok
}

// ErrNodeGone: the volume's node is no longer part of the cluster.
var ErrNodeGone = errors.New("node is gone")

// NewController returns a Controller over a fixed set of nodes, keyed by node ID.
func NewController(nodes map[string]Node) *Controller {
	return NewControllerOver(StaticNodes(nodes))
}

// NewControllerOver returns a Controller over a set of nodes that may change.
func NewControllerOver(nodes NodeSet) *Controller {
	return &Controller{nodes: nodes, locks: NewLocks()}
}

// node returns the node id, or one whose every call fails with ErrNodeGone.
func (c *Controller) node(id string) Node {
	if n, ok := c.nodes.Node(id); ok {
		return n
	}
	return goneNode(id)
}

// CreateRequest is a validated request for a new volume.
type CreateRequest struct {
	Name          string
	RequiredBytes int64
	LimitBytes    int64
	Mode          pool.Mode
	FsType        string
	Params        Params
	Source        *pool.Source
	// Nodes the volume may be placed on, preferred first; empty means any.
	Nodes []string
	// Owner says who asked (namespace/name of a PVC): recorded with the
	// volume under ParamOwner, never compared.
	Owner string
}

// ParamOwner is the volume parameter that records CreateRequest.Owner.
const ParamOwner = "plinth.example.com/owner"

// Placed is a volume and the node it lives on.
type Placed struct {
	Node   string
	Volume pool.Volume
	// NodeExpansion: after growing, the node must grow the filesystem
	// (a filesystem made by mkfs on the volume, not the pool's own).
	NodeExpansion bool
}

// PlacedSnapshot is a snapshot and the node it lives on.
type PlacedSnapshot struct {
	Node     string
	Snapshot pool.Snapshot
}

func (c *Controller) candidates(nodes []string) ([]string, error) {
	if len(nodes) == 0 {
		return c.nodes.NodeIDs(), nil
	}
	var out []string
	for _, n := range nodes {
		if _, ok := c.nodes.Node(n); ok && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: none of the nodes %v is served by this controller", pool.ErrNoSpace, nodes)
	}
	return out, nil
}

// poolServes reports whether a pool can hold a volume of this kind.
func poolServes(pi PoolInfo, p Params, mode pool.Mode, fsType string) bool {
	if p.Pool != "" && pi.Name != p.Pool || p.Backend != "" && pi.Backend != p.Backend {
		return false
	}
	if mode == pool.ModeBlock {
		return pi.Capabilities.Block
	}
	return fsType == "" || slices.Contains(pi.Capabilities.FsTypes, fsType)
}

// mkfsType is the filesystem mkfs will make on a volume of this pool ("" for
// block volumes and pools that hand out directories of their own fs): it
// decides the minimum size.
func mkfsType(pi PoolInfo, mode pool.Mode, fsType string) string {
	if pi.Capabilities.OwnFs {
		return ""
	}
	return fsTypeFor(pi, mode, fsType)
}

// fsTypeFor resolves an empty fs type to the pool's default.
func fsTypeFor(pi PoolInfo, mode pool.Mode, fsType string) string {
	if mode == pool.ModeBlock {
		return ""
	}
	if fsType == "" {
		return pi.Capabilities.FsTypes[0]
	}
	return fsType
}

// CreateVolume places and creates a volume, or returns the one already made
// under the same name.
func (c *Controller) CreateVolume(ctx context.Context, req CreateRequest) (Placed, error) {
	id := VolumeID(req.Name)
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return Placed{}, err
	}
	defer release()
	logger := klog.FromContext(ctx).WithValues("volumeName", req.Name, "volumeID", id)

	nodes, err := c.candidates(req.Nodes)
	if err != nil {
		return Placed{}, err
	}
	// An existing volume (a retry) is answered from its own node and pool.
	if placed, err := c.GetVolume(ctx, id); err == nil {
		spec := placed.Volume
		infos, err := c.node(placed.Node).Pools(ctx)
		if err != nil {
			return Placed{}, err
		}
		mkfs := spec.FsType
		for _, pi := range infos {
			if pi.Name == spec.Pool {
				mkfs = mkfsType(pi, spec.Mode, spec.FsType)
			}
		}
		size, err := Size(req.RequiredBytes, req.LimitBytes, req.Mode, mkfs)
		if err != nil {
			return Placed{}, err
		}
		want := pool.Volume{ID: id, Name: req.Name, CapacityBytes: size, Mode: req.Mode, FsType: spec.FsType, Thick: req.Params.Thick, Source: req.Source}
		if req.FsType != "" && req.FsType != spec.FsType || !pool.SameVolume(spec, want) {
			return Placed{}, fmt.Errorf("volume %q: %w", req.Name, pool.ErrExists)
		}
		v, err := c.node(placed.Node).CreateVolume(ctx, spec.Pool, spec)
		return Placed{Node: placed.Node, Volume: v}, err
	} else if !errors.Is(err, pool.ErrNotFound) {
		return Placed{}, err
	}

	if req.Source != nil {
		srcNode, srcPool, err := c.locateSource(ctx, req.Source)
		if err != nil {
			return Placed{}, err
		}
		if !slices.Contains(nodes, srcNode) {
			return Placed{}, fmt.Errorf("%w: the content source lives on node %s, outside the requested topology", pool.ErrNoSpace, srcNode)
		}
		nodes, req.Params.Pool = []string{srcNode}, srcPool
	}

	// With no preference every node competes: the best-fitting pool anywhere
	// wins. With preferred nodes (the scheduler's choice first), each is
	// tried in turn.
	groups := [][]string{nodes}
	if len(req.Nodes) > 0 {
		groups = nil
		for _, n := range nodes {
			groups = append(groups, []string{n})
		}
	}
	var lastErr error
	matched := false
	for _, group := range groups {
		// Best fit: the pool with the least room that still fits.
		type choice struct {
			node string
			info PoolInfo
			size int64
		}
		var fits []choice
		for _, nodeID := range group {
			infos, err := c.node(nodeID).Pools(ctx)
			if err != nil {
				lastErr = err
				continue
			}
			for _, pi := range infos {
				if !poolServes(pi, req.Params, req.Mode, req.FsType) {
					continue
				}
				matched = true
				size, err := Size(req.RequiredBytes, req.LimitBytes, req.Mode, mkfsType(pi, req.Mode, req.FsType))
				if err != nil {
					return Placed{}, err
				}
				if pi.Stats.AllocatableBytes() >= size {
					fits = append(fits, choice{nodeID, pi, size})
				} else {
					lastErr = fmt.Errorf("%w: pool %s on node %s has %s allocatable, %s requested", pool.ErrNoSpace, pi.Name, nodeID,
						FormatBytes(pi.Stats.AllocatableBytes()), FormatBytes(size))
				}
			}
		}
		sort.SliceStable(fits, func(i, j int) bool {
			return fits[i].info.Stats.AllocatableBytes() < fits[j].info.Stats.AllocatableBytes()
		})
		for _, ch := range fits {
			v := pool.Volume{ID: id, Name: req.Name, CapacityBytes: ch.size, Mode: req.Mode,
				FsType: fsTypeFor(ch.info, req.Mode, req.FsType), Thick: req.Params.Thick, Source: req.Source}
			if req.Owner != "" {
				v.Parameters = map[string]string{ParamOwner: req.Owner}
			}
			created, err := c.node(ch.node).CreateVolume(ctx, ch.info.Name, v)
			if err == nil {
				logger.V(2).Info("Volume placed", "node", ch.node, "pool", ch.info.Name, "capacity", ch.size)
				return Placed{Node: ch.node, Volume: created}, nil
			}
			if !errors.Is(err, pool.ErrNoSpace) {
				return Placed{}, err
			}
			lastErr = err // raced with another create: try the next pool
		}
	}
	if !matched {
		kind := string(req.Mode)
		if req.Mode == pool.ModeFilesystem && req.FsType != "" {
			kind = req.FsType + " " + kind
		}
		return Placed{}, fmt.Errorf("%w: no pool on nodes %v serves %s volumes with parameters %+v", pool.ErrUnsupported, nodes, kind, req.Params)
	}
	if lastErr == nil {
		lastErr = fmt.Errorf("%w: no pool fits", pool.ErrNoSpace)
	}
	return Placed{}, lastErr
}

func (c *Controller) locateSource(ctx context.Context, src *pool.Source) (node, poolName string, err error) {
	if src.SnapshotID != "" {
		s, err := c.GetSnapshot(ctx, src.SnapshotID)
		if err != nil {
			return "", "", err
		}
		return s.Node, s.Snapshot.Pool, nil
	}
	v, err := c.GetVolume(ctx, src.VolumeID)
	if err != nil {
		return "", "", err
	}
	return v.Node, v.Volume.Pool, nil
}

// DeleteVolume deletes id wherever it is; a missing volume is success.
func (c *Controller) DeleteVolume(ctx context.Context, id string) error {
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	placed, err := c.GetVolume(ctx, id)
	if errors.Is(err, pool.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.node(placed.Node).DeleteVolume(ctx, id)
}

// ExpandVolume grows id to at least required (and at most limit).
func (c *Controller) ExpandVolume(ctx context.Context, id string, required, limit int64) (Placed, error) {
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return Placed{}, err
	}
	defer release()
	placed, err := c.GetVolume(ctx, id)
	if err != nil {
		return Placed{}, err
	}
	size, err := Size(required, limit, placed.Volume.Mode, placed.Volume.FsType)
	if err != nil {
		return Placed{}, err
	}
	node := c.node(placed.Node)
	v, err := node.ExpandVolume(ctx, id, size)
	if err != nil {
		return Placed{}, err
	}
	out := Placed{Node: placed.Node, Volume: v}
	if v.Mode == pool.ModeFilesystem {
		infos, err := node.Pools(ctx)
		if err != nil {
			return Placed{}, err
		}
		for _, pi := range infos {
			if pi.Name == v.Pool {
				out.NodeExpansion = !pi.Capabilities.OwnFs
			}
		}
	}
	return out, nil
}

// GetVolume finds id on the nodes.
func (c *Controller) GetVolume(ctx context.Context, id string) (Placed, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return Placed{}, err
	}
	for _, n := range c.nodes.NodeIDs() {
		v, err := c.node(n).Volume(ctx, id)
		if err == nil {
			return Placed{Node: n, Volume: v}, nil
		}
		if !errors.Is(err, pool.ErrNotFound) {
			return Placed{}, fmt.Errorf("volume %s on node %s: %w", id, n, err)
		}
	}
	return Placed{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
}

// ListVolumes returns every volume on every node, sorted by ID.
func (c *Controller) ListVolumes(ctx context.Context) ([]Placed, error) {
	var out []Placed
	for _, n := range c.nodes.NodeIDs() {
		vs, err := c.node(n).Volumes(ctx)
		if err != nil {
			return nil, fmt.Errorf("list volumes of node %s: %w", n, err)
		}
		for _, v := range vs {
			out = append(out, Placed{Node: n, Volume: v})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Volume.ID < out[j].Volume.ID })
	return out, nil
}

// Capacity sums what the matching pools on nodes can still give, and the
// largest single volume one of them can hold.
func (c *Controller) Capacity(ctx context.Context, nodes []string, p Params, mode pool.Mode, fsType string) (available, maximum int64, err error) {
	ids := c.nodes.NodeIDs()
	if len(nodes) > 0 {
		ids = nil
		for _, n := range nodes {
			if _, ok := c.nodes.Node(n); ok {
				ids = append(ids, n)
			}
		}
	}
	for _, n := range ids {
		infos, err := c.node(n).Pools(ctx)
		if err != nil {
			return 0, 0, err
		}
		for _, pi := range infos {
			if mode != "" && !poolServes(pi, p, mode, fsType) {
				continue
			}
			if mode == "" && (p.Pool != "" && pi.Name != p.Pool || p.Backend != "" && pi.Backend != p.Backend) {
				continue
			}
			a := pi.Stats.AllocatableBytes()
			available += a
			maximum = max(maximum, a)
		}
	}
	return available, maximum, nil
}

// CreateSnapshot snapshots a volume on its node, or returns the snapshot
// already made under the same name.
func (c *Controller) CreateSnapshot(ctx context.Context, name, sourceVolumeID string) (PlacedSnapshot, error) {
	id := SnapshotID(name)
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return PlacedSnapshot{}, err
	}
	defer release()
	if s, err := c.GetSnapshot(ctx, id); err == nil {
		if s.Snapshot.SourceVolumeID != sourceVolumeID {
			return PlacedSnapshot{}, fmt.Errorf("snapshot %q of volume %s: %w", name, s.Snapshot.SourceVolumeID, pool.ErrExists)
		}
		if s.Snapshot.State == pool.StateReady {
			return s, nil
		}
	}
	src, err := c.GetVolume(ctx, sourceVolumeID)
	if err != nil {
		return PlacedSnapshot{}, err
	}
	s, err := c.node(src.Node).CreateSnapshot(ctx, pool.Snapshot{ID: id, Name: name, SourceVolumeID: sourceVolumeID})
	return PlacedSnapshot{Node: src.Node, Snapshot: s}, err
}

// DeleteSnapshot deletes id wherever it is; a missing snapshot is success.
func (c *Controller) DeleteSnapshot(ctx context.Context, id string) error {
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return err
	}
	defer release()
	s, err := c.GetSnapshot(ctx, id)
	if errors.Is(err, pool.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return c.node(s.Node).DeleteSnapshot(ctx, id)
}

// GetSnapshot finds id on the nodes.
func (c *Controller) GetSnapshot(ctx context.Context, id string) (PlacedSnapshot, error) {
	if err := pool.ValidateID("snapshot ID", id); err != nil {
		return PlacedSnapshot{}, err
	}
	for _, n := range c.nodes.NodeIDs() {
		s, err := c.node(n).Snapshot(ctx, id)
		if err == nil {
			return PlacedSnapshot{Node: n, Snapshot: s}, nil
		}
		if !errors.Is(err, pool.ErrNotFound) {
			return PlacedSnapshot{}, fmt.Errorf("snapshot %s on node %s: %w", id, n, err)
		}
	}
	return PlacedSnapshot{}, fmt.Errorf("snapshot %s: %w", id, pool.ErrNotFound)
}

// ListSnapshots returns every snapshot on every node, sorted by ID.
func (c *Controller) ListSnapshots(ctx context.Context) ([]PlacedSnapshot, error) {
	var out []PlacedSnapshot
	for _, n := range c.nodes.NodeIDs() {
		ss, err := c.node(n).Snapshots(ctx)
		if err != nil {
			return nil, fmt.Errorf("list snapshots of node %s: %w", n, err)
		}
		for _, s := range ss {
			out = append(out, PlacedSnapshot{Node: n, Snapshot: s})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Snapshot.ID < out[j].Snapshot.ID })
	return out, nil
}
