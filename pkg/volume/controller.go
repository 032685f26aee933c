package volume

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

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

// VolumeIndex is a NodeSet that knows which node holds a volume without
// asking every node (the cluster's volume objects are keyed by volume ID).
type VolumeIndex interface {
	// VolumeNode returns the node holding volume id; false when none does.
	VolumeNode(id string) (string, bool)
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
	// Requisite is the only nodes the volume may be placed on; empty means
	// any node. (CSI: the requisite topologies; a cluster: the scheduler's
	// selected node, or the StorageClass's allowedTopologies.)
	Requisite []string
	// Preferred is the order in which nodes are tried, ahead of best fit
	// (see Place); nodes outside Requisite are ignored. (CSI: the
	// preferred topologies.)
	Preferred []string
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

// allowed returns the nodes a request may be placed on: its Requisite
// nodes this controller knows, in order, or every node when it names none.
func (c *Controller) allowed(requisite []string) ([]string, error) {
	if len(requisite) == 0 {
		return c.nodes.NodeIDs(), nil
	}
	// A set, not a search of out: a class's allowed topologies may name
	// every node of the cluster (a thousand: a million comparisons a
	// claim, the controller's largest CPU cost at that size).
	var out []string
	seen := make(map[string]struct{}, len(requisite))
	for _, n := range requisite {
		if _, dup := seen[n]; dup {
			continue
		}
		seen[n] = struct{}{}
		if _, ok := c.nodes.Node(n); ok {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%w: none of the nodes %v is served by this controller", pool.ErrNoSpace, requisite)
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
// under the same name when it answers the request (see conflict); one that
// does not is ErrExists. A clone or restore keeps its source's mode and
// filesystem: a request for another is ErrInvalid, refused before anything
// is made.
func (c *Controller) CreateVolume(ctx context.Context, req CreateRequest) (Placed, error) {
	id := VolumeID(req.Name)
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return Placed{}, err
	}
	defer release()
	logger := klog.FromContext(ctx).WithValues("volumeName", req.Name, "volumeID", id)

	// An existing volume (a retry) is answered from its own node and pool.
	if placed, err := c.GetVolume(ctx, id); err == nil {
		if placed.Volume.State != pool.StateDeleting {
			return c.existing(ctx, req, placed)
		}
		// The name's last volume is half deleted (an interrupted
		// DeleteVolume): finish that, then make the one asked for now.
		if err := c.node(placed.Node).DeleteVolume(ctx, id); err != nil {
			return Placed{}, fmt.Errorf("finish deleting the earlier volume %s: %w", id, err)
		}
	} else if !errors.Is(err, pool.ErrNotFound) {
		return Placed{}, err
	}

	nodes, err := c.allowed(req.Requisite)
	if err != nil {
		return Placed{}, err
	}
	// remote is the source of a volume filled from another node.
	var remote *pool.Source
	var srcBackend string
	if req.Source != nil {
		src, err := c.origin(ctx, req.Source)
		if err != nil {
			return Placed{}, err
		}
		if err := src.admits(req); err != nil {
			return Placed{}, err
		}
		if req.Mode == pool.ModeFilesystem && req.FsType == "" {
			req.FsType = src.fsType // the source's, not the pool's default
		}
		// A volume made from a source holds all of it: a smaller request
		// is rounded up to the source's size, as any size is rounded up to
		// what the pool makes, unless the limit forbids it.
		if req.RequiredBytes < src.size {
			if req.LimitBytes > 0 && req.LimitBytes < src.size {
				return Placed{}, fmt.Errorf("%w: %s holds %d bytes, more than the limit of %d", pool.ErrOutOfRange, src.what, src.size, req.LimitBytes)
			}
			req.RequiredBytes = src.size
		}
		if slices.Contains(nodes, src.node) {
			// On the source's node: a local copy (a reflink, a btrfs
			// snapshot), in the source's pool.
			if req.Params.Pool != "" && req.Params.Pool != src.pool {
				return Placed{}, fmt.Errorf("%w: %s is in pool %s, the request asks for pool %s: a clone or restore on its source's node is made in its source's pool", pool.ErrInvalid, src.what, src.pool, req.Params.Pool)
			}
			nodes, req.Params.Pool = []string{src.node}, src.pool
		} else {
			// Elsewhere: the volume's node fills it from the source's
			// node over the transfer service.
			if !Transferable(src.backend) {
				return Placed{}, fmt.Errorf("%w: the content source lives on node %s, outside the requested topology, in a %s pool, whose content plinth does not send to other nodes (file and btrfs pools only)",
					pool.ErrNoSpace, src.node, src.backend)
			}
			if req.Params.Backend != "" && !TransferableTo(src.backend, req.Params.Backend) {
				return Placed{}, fmt.Errorf("%w: %s is on node %s, outside the requested topology; a volume filled from another node is made in a pool of its source's backend (%s), the request asks for backend %s",
					pool.ErrNoSpace, src.what, src.node, src.backend, req.Params.Backend)
			}
			remote = &pool.Source{SnapshotID: req.Source.SnapshotID, VolumeID: req.Source.VolumeID, Node: src.node}
			srcBackend = src.backend
		}
	}

	known := make([]NodePools, len(nodes))
	for i, n := range nodes {
		known[i].Node = n
		known[i].Pools, known[i].Err = c.node(n).Pools(ctx)
	}
	choices, err := Place(req, known)
	if err != nil {
		return Placed{}, err
	}
	source := req.Source
	if remote != nil {
		choices = slices.DeleteFunc(choices, func(ch Choice) bool { return !TransferableTo(srcBackend, ch.Pool.Backend) })
		if len(choices) == 0 {
			return Placed{}, fmt.Errorf("%w: no %s pool on the nodes asked can hold a volume filled from node %s", pool.ErrNoSpace, srcBackend, remote.Node)
		}
		if remote.VolumeID != "" {
			// A clone from another node is sent from a snapshot of its
			// source, taken now and removed once the clone is made.
			snap, err := c.CreateSnapshot(ctx, cloneSnapshotName(req.Name), remote.VolumeID)
			if err != nil {
				return Placed{}, fmt.Errorf("snapshot volume %s to clone it onto another node: %w", remote.VolumeID, err)
			}
			remote.SnapshotID = snap.Snapshot.ID
		}
		source = remote
	}
	var lastErr error
	for _, ch := range choices {
		v := pool.Volume{ID: id, Name: req.Name, CapacityBytes: ch.Size, Mode: req.Mode,
			FsType: fsTypeFor(ch.Pool, req.Mode, req.FsType), Thick: req.Params.Thick, IOLimits: req.Params.IOLimits, Source: source}
		if req.Owner != "" {
			v.Parameters = map[string]string{ParamOwner: req.Owner}
		}
		created, err := c.node(ch.Node).CreateVolume(ctx, ch.Pool.Name, v)
		if err == nil {
			logger.V(2).Info("Volume placed", "node", ch.Node, "pool", ch.Pool.Name, "capacity", ch.Size)
			c.dropCloneSnapshot(ctx, created)
			return Placed{Node: ch.Node, Volume: created}, nil
		}
		if !errors.Is(err, pool.ErrNoSpace) {
			if remote != nil && remote.VolumeID != "" && refused(err) {
				c.dropCloneSnapshot(ctx, pool.Volume{Source: remote, State: pool.StateReady})
			}
			return Placed{}, err
		}
		lastErr = err // raced with another create: try the next pool
	}
	return Placed{}, lastErr
}

// refused reports whether err is a node's answer that the volume will not
// be made as asked (not a wait that ran out).
func refused(err error) bool {
	for _, e := range []error{pool.ErrInvalid, pool.ErrUnsupported, pool.ErrExists, pool.ErrOutOfRange, pool.ErrNotFound} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Transferable reports whether volumes of a pool backend can be sent to
// and filled from other nodes (pkg/transfer): images (file pools) and
// btrfs send streams (btrfs pools).
func Transferable(backend string) bool { return backend == "file" || backend == "btrfs" }

// Movable reports whether bound volumes of a pool backend can move to
// another node (pkg/move): those that are Transferable, and whole disks,
// which have no snapshot and so are copied whole once their workload
// stopped.
func Movable(backend string) bool { return Transferable(backend) || backend == "disk" }

// TransferableTo reports whether a volume of a pool of backend from can be
// sent to a pool of backend to: an image goes to a file pool, a btrfs
// stream to a btrfs pool, a whole disk to a disk pool.
func TransferableTo(from, to string) bool { return Movable(from) && from == to }

// cloneSnapshotName is the name of the snapshot a clone onto another node
// is sent from.
func cloneSnapshotName(volumeName string) string { return CloneSnapshotPrefix + volumeName }

// CloneSnapshotPrefix starts the names of the snapshots plinth takes to
// clone a volume onto another node; they are plinth's, not the CO's, and
// ListSnapshots leaves them out.
const CloneSnapshotPrefix = "plinth-clone-"

// MoveSnapshotPrefix starts the names of the snapshots a PlinthMove takes
// (pkg/move); ListSnapshots leaves them out too.
const MoveSnapshotPrefix = "plinth-move-"

// dropCloneSnapshot removes the snapshot a clone from another node was
// sent from, once the clone is made.
func (c *Controller) dropCloneSnapshot(ctx context.Context, v pool.Volume) {
	s := v.Source
	if s == nil || s.Node == "" || s.VolumeID == "" || s.SnapshotID == "" || v.State != pool.StateReady {
		return
	}
	if err := c.DeleteSnapshot(ctx, s.SnapshotID); err != nil {
		klog.FromContext(ctx).Error(err, "Removing the snapshot a clone was sent from; it is removed at the clone's next create or delete", "snapshotID", s.SnapshotID)
	}
}

// existing answers a create whose name is already taken by placed: the
// volume itself when it answers the request (finishing its creation if
// that was interrupted), ErrExists otherwise.
func (c *Controller) existing(ctx context.Context, req CreateRequest, placed Placed) (Placed, error) {
	v := placed.Volume
	// A range no volume can satisfy is OUT_OF_RANGE, as for a new volume.
	if _, err := Size(req.RequiredBytes, req.LimitBytes, req.Mode, ""); err != nil {
		return Placed{}, err
	}
	backend := ""
	if req.Params.Backend != "" {
		infos, err := c.node(placed.Node).Pools(ctx)
		if err != nil {
			return Placed{}, err
		}
		for _, pi := range infos {
			if pi.Name == v.Pool {
				backend = pi.Backend
			}
		}
		if backend == "" {
			return Placed{}, fmt.Errorf("%w: volume %q exists in pool %s, which node %s does not report now: its backend cannot be compared with the %q asked",
				pool.ErrNotReady, req.Name, v.Pool, placed.Node, req.Params.Backend)
		}
	}
	if why := conflict(req, placed, backend); why != "" {
		return Placed{}, fmt.Errorf("volume %q: %w: %s", req.Name, pool.ErrExists, why)
	}
	if v.State == pool.StateReady {
		c.dropCloneSnapshot(ctx, v)
		return placed, nil
	}
	// An interrupted create: the node finishes it as first asked.
	got, err := c.node(placed.Node).CreateVolume(ctx, v.Pool, v)
	return Placed{Node: placed.Node, Volume: got}, err
}

// conflict says how a create request differs from the volume already made
// under its name, backend being the backend of the volume's pool ("" when
// the request names none); "" means the volume answers the request. It is
// the CSI spec's rule for CreateVolume: the same name with a compatible
// capacity range (required <= capacity <= limit, limit 0 = none), volume
// capability, parameters, content source and topology is the same volume;
// anything else is ALREADY_EXISTS. Fields a request leaves empty (fs type,
// pool, backend, topology) match anything; provisioning left empty is thin.
func conflict(req CreateRequest, placed Placed, backend string) string {
	v := placed.Volume
	switch {
	case req.Mode != v.Mode:
		return fmt.Sprintf("it is a %s volume, the request asks for %s", v.Mode, req.Mode)
	case req.Mode == pool.ModeFilesystem && req.FsType != "" && req.FsType != v.FsType:
		return fmt.Sprintf("its filesystem is %s, the request asks for %s", v.FsType, req.FsType)
	case req.Params.Pool != "" && req.Params.Pool != v.Pool:
		return fmt.Sprintf("it is in pool %s, the request asks for pool %s", v.Pool, req.Params.Pool)
	case req.Params.Backend != "" && req.Params.Backend != backend:
		return fmt.Sprintf("it is in a %s pool, the request asks for backend %s", backend, req.Params.Backend)
	case req.Params.Thick != v.Thick:
		return fmt.Sprintf("it is %s provisioned, the request asks for %s", provisioning(v.Thick), provisioning(req.Params.Thick))
	case !sameSource(req.Source, v.Source):
		return fmt.Sprintf("its content source is %s, the request's is %s", describeSource(v.Source), describeSource(req.Source))
	case req.RequiredBytes > v.CapacityBytes || req.LimitBytes > 0 && v.CapacityBytes > req.LimitBytes:
		return fmt.Sprintf("its capacity %d bytes is outside the range asked (required %d, limit %d)", v.CapacityBytes, req.RequiredBytes, req.LimitBytes)
	case len(req.Requisite) > 0 && !slices.Contains(req.Requisite, placed.Node):
		return fmt.Sprintf("it lives on node %s, outside the nodes asked %v", placed.Node, req.Requisite)
	}
	return ""
}

func provisioning(thick bool) string {
	if thick {
		return "thick"
	}
	return "thin"
}

// sameSource reports whether a request's source (req) is the one a volume
// was made from (have). A volume filled from another node records that
// node, and for a clone the snapshot it was sent from: the request names
// the volume only.
func sameSource(req, have *pool.Source) bool {
	if req == nil || have == nil {
		return req == nil && have == nil
	}
	if have.VolumeID != "" {
		return req.VolumeID == have.VolumeID && req.SnapshotID == ""
	}
	return req.VolumeID == "" && req.SnapshotID == have.SnapshotID
}

func describeSource(s *pool.Source) string {
	switch {
	case s == nil:
		return "none"
	case s.VolumeID != "":
		return "volume " + s.VolumeID
	}
	return "snapshot " + s.SnapshotID
}

// origin is what a content source says about the volumes made from it.
type origin struct {
	what       string // "snapshot sn-…" or "volume pv-…", for messages
	node, pool string
	// backend of the source's pool ("" when its node does not say).
	backend string
	// mode and fsType of the source volume; mode is empty when unknown (a
	// snapshot recorded before plinth kept modes, whose source is gone).
	mode   pool.Mode
	fsType string
	// size is the snapshot's size or the volume's capacity: the least a
	// volume made from it holds.
	size int64
}

func (c *Controller) origin(ctx context.Context, src *pool.Source) (origin, error) {
	var o origin
	if src.SnapshotID != "" {
		s, err := c.GetSnapshot(ctx, src.SnapshotID)
		if err != nil {
			return origin{}, err
		}
		o = origin{what: "snapshot " + s.Snapshot.ID, node: s.Node, pool: s.Snapshot.Pool, mode: s.Snapshot.Mode, fsType: s.Snapshot.FsType,
			size: s.Snapshot.SizeBytes}
	} else {
		v, err := c.GetVolume(ctx, src.VolumeID)
		if err != nil {
			return origin{}, err
		}
		o = origin{what: "volume " + v.Volume.ID, node: v.Node, pool: v.Volume.Pool, mode: v.Volume.Mode, fsType: v.Volume.FsType,
			size: v.Volume.CapacityBytes}
	}
	infos, err := c.node(o.node).Pools(ctx)
	if err != nil {
		return origin{}, err
	}
	for _, pi := range infos {
		if pi.Name != o.pool {
			continue
		}
		o.backend = pi.Backend
		if o.mode == "" && !pi.Capabilities.Block && pi.Capabilities.OwnFs && len(pi.Capabilities.FsTypes) > 0 {
			// A snapshot whose mode was not recorded: the pool filled in
			// what its source volume's record told (pool.OpenIndex); what
			// is left is known only where the pool serves nothing but its
			// own filesystem (btrfs).
			o.mode, o.fsType = pool.ModeFilesystem, pi.Capabilities.FsTypes[0]
		}
	}
	return o, nil
}

// admits checks that req keeps the source's mode and filesystem. A snapshot
// of unknown mode may be restored as a block volume only: plinth never
// mounts that, while mounting it could mount a block volume's raw image.
func (o origin) admits(req CreateRequest) error {
	switch {
	case o.mode == "" && req.Mode != pool.ModeBlock:
		return fmt.Errorf("%w: %s was taken before plinth recorded the mode of snapshots and its source volume is gone: "+
			"it may have been a block volume's, so it is restored as a block volume only, never mounted as a filesystem", pool.ErrInvalid, o.what)
	case o.mode == "":
		return nil
	case o.mode != req.Mode:
		return fmt.Errorf("%w: %s is of a %s volume, the request asks for %s: a clone or restore keeps its source's mode", pool.ErrInvalid, o.what, o.mode, req.Mode)
	case req.Mode == pool.ModeFilesystem && req.FsType != "" && req.FsType != o.fsType:
		return fmt.Errorf("%w: %s holds %s, the request asks for %s: a clone or restore keeps its source's filesystem", pool.ErrInvalid, o.what, o.fsType, req.FsType)
	}
	return nil
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
		// Not found is gone only where every pool could be read: a
		// volume on a pool whose disk is missing comes back with it.
		for _, n := range c.nodes.NodeIDs() {
			if u, ok := c.node(n).(interface {
				Unopened(context.Context) []string
			}); ok {
				if pools := u.Unopened(ctx); len(pools) > 0 {
					return fmt.Errorf("%w: volume %s is in none of the readable pools of node %s, and pool %s cannot be read: it may be there",
						pool.ErrNotReady, id, n, strings.Join(pools, ", "))
				}
			}
		}
		return nil
	}
	if err != nil {
		return err
	}
	if err := c.node(placed.Node).DeleteVolume(ctx, id); err != nil {
		return err
	}
	// A clone from another node that never finished leaves the snapshot
	// it was to be sent from.
	v := placed.Volume
	v.State = pool.StateReady
	c.dropCloneSnapshot(ctx, v)
	return nil
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

// ModifyVolume applies mutable parameters (ParseMutable) to volume id: its
// node changes the provisioning and its consumers' IO limits. Only the
// keys named change (the CSI spec: no change from a key's absence); a
// limit named with 0 is lifted. An invalid
// parameter or a change the volume's pool cannot make is ErrInvalid, a
// thick volume that does not fit ErrNoSpace; the volume is then as it was.
func (c *Controller) ModifyVolume(ctx context.Context, id string, params map[string]string) (Placed, error) {
	limits, thick, err := ParseMutable(params)
	if err != nil {
		return Placed{}, err
	}
	release, err := c.locks.TryAcquire(id)
	if err != nil {
		return Placed{}, err
	}
	defer release()
	placed, err := c.GetVolume(ctx, id)
	if err != nil {
		return Placed{}, err
	}
	m := pool.Mutable{Thick: placed.Volume.Thick, IOLimits: mergeLimits(placed.Volume.IOLimits, limits, params)}
	if thick != nil {
		m.Thick = *thick
	}
	if pool.MutableOf(placed.Volume).Equal(m) {
		return placed, nil
	}
	v, err := c.node(placed.Node).ModifyVolume(ctx, id, m)
	if err != nil {
		return Placed{}, err
	}
	return Placed{Node: placed.Node, Volume: v}, nil
}

// mergeLimits is cur with the limits params names set to given's (given:
// ParseMutable's, nil when all it names are 0); nil when nothing is left.
func mergeLimits(cur, given *pool.IOLimits, params map[string]string) *pool.IOLimits {
	var out, g pool.IOLimits
	if cur != nil {
		out = *cur
	}
	if given != nil {
		g = *given
	}
	set := func(key string, dst *int64, v int64) {
		if _, named := params[key]; named {
			*dst = v
		}
	}
	set(ParamReadIOPS, &out.ReadIOPS, g.ReadIOPS)
	set(ParamWriteIOPS, &out.WriteIOPS, g.WriteIOPS)
	set(ParamReadBytesPerSecond, &out.ReadBytesPerSecond, g.ReadBytesPerSecond)
	set(ParamWriteBytesPerSecond, &out.WriteBytesPerSecond, g.WriteBytesPerSecond)
	if out.IsZero() {
		return nil
	}
	return &out
}

// GetVolume finds id: through the NodeSet's VolumeIndex when it has one
// (one lookup), otherwise by asking each node (a static set is small).
func (c *Controller) GetVolume(ctx context.Context, id string) (Placed, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return Placed{}, err
	}
	if idx, ok := c.nodes.(VolumeIndex); ok {
		n, ok := idx.VolumeNode(id)
		if !ok {
			return Placed{}, fmt.Errorf("volume %s: %w", id, pool.ErrNotFound)
		}
		v, err := c.node(n).Volume(ctx, id)
		if err != nil {
			return Placed{}, fmt.Errorf("volume %s on node %s: %w", id, n, err)
		}
		return Placed{Node: n, Volume: v}, nil
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
	var ids []string
	if len(nodes) == 0 {
		ids = c.nodes.NodeIDs()
	} else {
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
			available += pi.Stats.AllocatableBytes()
			maximum = max(maximum, pi.Stats.MaxVolumeBytes())
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
			if strings.HasPrefix(s.Name, CloneSnapshotPrefix) || strings.HasPrefix(s.Name, MoveSnapshotPrefix) {
				continue // plinth's own, for a clone onto another node
			}
			out = append(out, PlacedSnapshot{Node: n, Snapshot: s})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Snapshot.ID < out[j].Snapshot.ID })
	return out, nil
}
