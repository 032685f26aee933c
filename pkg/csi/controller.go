package csi

import (
	"context"
	"errors"
	"slices"
	"strings"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// ControllerServer serves the CSI Controller service.
type ControllerServer struct {
	csi.UnimplementedControllerServer
	ctrl        *volume.Controller
	topologyKey string
}

var _ csi.ControllerServer = (*ControllerServer)(nil)

// NewControllerServer returns the Controller service over ctrl; volumes'
// topology is reported under topologyKey (the node ID is its value).
func NewControllerServer(ctrl *volume.Controller, topologyKey string) *ControllerServer {
	return &ControllerServer{ctrl: ctrl, topologyKey: topologyKey}
}

func (s *ControllerServer) ControllerGetCapabilities(ctx context.Context, _ *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_GET_VOLUME,
		csi.ControllerServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_LIST_VOLUME_HEALTH,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		csi.ControllerServiceCapability_RPC_MODIFY_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// nodesOf reads the node IDs out of topology segments, keeping order.
func (s *ControllerServer) nodesOf(segments ...[]*csi.Topology) ([]string, error) {
	var out []string
	for _, list := range segments {
		for _, t := range list {
			n, ok := t.GetSegments()[s.topologyKey]
			if !ok {
				return nil, invalid("topology segment %v has no %s key", t.GetSegments(), s.topologyKey)
			}
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	return out, nil
}

func (s *ControllerServer) csiVolume(p volume.Placed) *csi.Volume {
	v := &csi.Volume{
		VolumeId:           p.Volume.ID,
		CapacityBytes:      p.Volume.CapacityBytes,
		AccessibleTopology: []*csi.Topology{{Segments: map[string]string{s.topologyKey: p.Node}}},
		VolumeContext:      map[string]string{"pool": p.Volume.Pool, "mode": string(p.Volume.Mode)},
	}
	if p.Volume.FsType != "" {
		v.VolumeContext["fsType"] = p.Volume.FsType
	}
	if src := p.Volume.Source; src != nil {
		if src.SnapshotID != "" {
			v.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: src.SnapshotID}}}
		} else {
			v.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.VolumeID}}}
		}
	}
	return v
}

// CreateVolume is an adapter: it reads the CSI request into a volume.Ask
// (the capabilities' shape is CSI's own syntax and is checked here) and
// leaves every rule to volume.NewCreateRequest, the one the provisioner's
// PVCs go through too.
func (s *ControllerServer) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	mode, fsType, err := capabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, err
	}
	ask := volume.Ask{
		Name: req.GetName(), RequiredBytes: req.GetCapacityRange().GetRequiredBytes(), LimitBytes: req.GetCapacityRange().GetLimitBytes(),
		Block: mode == pool.ModeBlock, FsType: fsType, Parameters: req.GetParameters(),
		MutableParameters: req.GetMutableParameters(),
	}
	if cs := req.GetVolumeContentSource(); cs != nil {
		ask.Source = &pool.Source{SnapshotID: cs.GetSnapshot().GetSnapshotId(), VolumeID: cs.GetVolume().GetVolumeId()}
		if cs.GetSnapshot() == nil && cs.GetVolume() == nil {
			return nil, invalid("volume content source has neither a snapshot nor a volume")
		}
	}
	// Requisite limits where the volume may go (none: anywhere); preferred
	// only orders the nodes tried.
	tr := req.GetAccessibilityRequirements()
	if ask.Requisite, err = s.nodesOf(tr.GetRequisite()); err != nil {
		return nil, err
	}
	if ask.Preferred, err = s.nodesOf(tr.GetPreferred()); err != nil {
		return nil, err
	}
	cr, err := volume.NewCreateRequest(ask)
	if err != nil {
		return nil, toStatus(err)
	}
	placed, err := s.ctrl.CreateVolume(ctx, cr)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateVolumeResponse{Volume: s.csiVolume(placed)}, nil
}

func (s *ControllerServer) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if err := s.ctrl.DeleteVolume(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (s *ControllerServer) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, invalid("volume capabilities are required")
	}
	placed, err := s.ctrl.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	mode, fsType, err := capabilities(req.GetVolumeCapabilities())
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	if mode != placed.Volume.Mode || fsType != "" && fsType != placed.Volume.FsType {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: "volume is " + string(placed.Volume.Mode) + " " + placed.Volume.FsType}, nil
	}
	if _, err := parseParams(req.GetParameters()); err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: status.Convert(err).Message()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext: req.GetVolumeContext(), VolumeCapabilities: req.GetVolumeCapabilities(), Parameters: req.GetParameters(),
	}}, nil
}

const (
	volumeTokenPrefix   = "v1:"
	snapshotTokenPrefix = "s1:"
	maxPage             = 1000
)

// page returns the slice of ids after the starting token and the next token.
func page[T any](all []T, id func(T) string, token, prefix string, max int32) ([]T, string, error) {
	start := 0
	if token != "" {
		after, ok := strings.CutPrefix(token, prefix)
		if !ok || pool.ValidateID("token", after) != nil {
			return nil, "", status.Errorf(codes.Aborted, "starting token %q was not issued by this plugin", token)
		}
		start, _ = slices.BinarySearchFunc(all, after, func(t T, s string) int { return strings.Compare(id(t), s) })
		if start < len(all) && id(all[start]) == after {
			start++
		}
	}
	if max < 0 {
		return nil, "", invalid("max_entries must not be negative")
	}
	n := maxPage
	if max > 0 && int(max) < n {
		n = int(max)
	}
	end := min(start+n, len(all))
	next := ""
	if end < len(all) {
		next = prefix + id(all[end-1])
	}
	return all[start:end], next, nil
}

func (s *ControllerServer) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	all, err := s.ctrl.ListVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	items, next, err := page(all, func(p volume.Placed) string { return p.Volume.ID }, req.GetStartingToken(), volumeTokenPrefix, req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, p := range items {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: s.csiVolume(p)})
	}
	return resp, nil
}

// health is what the controller knows of a volume: its record's state.
func health(v pool.Volume) *csi.VolumeHealth {
	h := &csi.VolumeHealth{VolumeId: v.ID}
	if v.State == pool.StateDeleting {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_DATA_LOSS, Reason: "DeletionIncomplete",
			Message: "a delete of this volume was interrupted; DeleteVolume finishes it",
		})
		return h
	}
	if v.Problem != "" {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "StorageUnreachable", Message: v.Problem,
		})
	}
	if v.State != pool.StateReady {
		h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
			Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "CreationIncomplete",
			Message: "volume is being created, or its creation was interrupted and awaits a retry or a delete",
		})
	}
	return h
}

func (s *ControllerServer) ControllerGetVolumeHealth(ctx context.Context, req *csi.ControllerGetVolumeHealthRequest) (*csi.ControllerGetVolumeHealthResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	p, err := s.ctrl.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeHealthResponse{VolumeHealth: health(p.Volume)}, nil
}

// ControllerListVolumeHealth lists the volumes with a health problem.
func (s *ControllerServer) ControllerListVolumeHealth(ctx context.Context, req *csi.ControllerListVolumeHealthRequest) (*csi.ControllerListVolumeHealthResponse, error) {
	all, err := s.ctrl.ListVolumes(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	all = slices.DeleteFunc(all, func(p volume.Placed) bool { return len(health(p.Volume).HealthStatuses) == 0 })
	items, next, err := page(all, func(p volume.Placed) string { return p.Volume.ID }, req.GetStartingToken(), volumeTokenPrefix, req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ControllerListVolumeHealthResponse{NextToken: next}
	for _, p := range items {
		resp.Entries = append(resp.Entries, health(p.Volume))
	}
	return resp, nil
}

func (s *ControllerServer) ControllerGetVolume(ctx context.Context, req *csi.ControllerGetVolumeRequest) (*csi.ControllerGetVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	p, err := s.ctrl.GetVolume(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.ControllerGetVolumeResponse{Volume: s.csiVolume(p), Status: &csi.ControllerGetVolumeResponse_VolumeStatus{}}, nil
}

func (s *ControllerServer) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	params, err := parseParams(req.GetParameters())
	if err != nil {
		return nil, err
	}
	var mode pool.Mode
	fsType := ""
	if req.GetVolumeCapabilities() != nil {
		if mode, fsType, err = capabilities(req.GetVolumeCapabilities()); err != nil {
			return nil, err
		}
	}
	var nodes []string
	if t := req.GetAccessibleTopology(); t != nil {
		if nodes, err = s.nodesOf([]*csi.Topology{t}); err != nil {
			return nil, err
		}
	}
	available, maximum, err := s.ctrl.Capacity(ctx, nodes, params, mode, fsType)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: available,
		MaximumVolumeSize: wrapInt64(maximum),
	}, nil
}

func (s *ControllerServer) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if req.GetCapacityRange() == nil {
		return nil, invalid("capacity range is required")
	}
	required, limit, err := capacityRange(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		if _, err := capability(c); err != nil {
			return nil, err
		}
	}
	p, err := s.ctrl.ExpandVolume(ctx, req.GetVolumeId(), required, limit)
	if err != nil {
		return nil, toStatus(err)
	}
	// Filesystems made on a volume grow on the node; block devices and
	// subvolume limits are done here.
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: p.Volume.CapacityBytes, NodeExpansionRequired: p.NodeExpansion}, nil
}

// ControllerModifyVolume applies a VolumeAttributesClass's parameters: IO
// limits (enforced on the node for each pod the volume is published to)
// and provisioning. Parameters plinth does not know, and a change the
// volume cannot take (provisioning of a btrfs or disk volume, thick in a
// pool without the room), are InvalidArgument, the volume unchanged: the
// CSI spec's answer for a request beyond the volume's capabilities, which
// the CO reports as infeasible.
func (s *ControllerServer) ControllerModifyVolume(ctx context.Context, req *csi.ControllerModifyVolumeRequest) (*csi.ControllerModifyVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if _, err := s.ctrl.ModifyVolume(ctx, req.GetVolumeId(), req.GetMutableParameters()); err != nil {
		if errors.Is(err, pool.ErrNoSpace) {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		return nil, toStatus(err)
	}
	return &csi.ControllerModifyVolumeResponse{}, nil
}

func (s *ControllerServer) csiSnapshot(p volume.PlacedSnapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId: p.Snapshot.ID, SourceVolumeId: p.Snapshot.SourceVolumeID, SizeBytes: p.Snapshot.SizeBytes,
		CreationTime: timestamppb.New(p.Snapshot.CreatedAt), ReadyToUse: p.Snapshot.State == pool.StateReady,
		// accessible_topology (optional) is left out: a snapshot is usable
		// on its source volume's node, whose topology the volume reports,
		// and CreateSnapshot enforces requisite topology. (csi-test v5.6.0
		// compares a reported topology with a reflect-based Equal that fails
		// on identical messages once one has been marshalled.)
	}
}

func (s *ControllerServer) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	if err := validateName("snapshot", req.GetName()); err != nil {
		return nil, err
	}
	if err := validateID("source volume ID", req.GetSourceVolumeId()); err != nil {
		return nil, err
	}
	if len(req.GetParameters()) > 0 {
		return nil, invalid("snapshot parameters are not supported: %v", req.GetParameters())
	}
	// A snapshot lives on its volume's node; requirements that exclude it
	// cannot be met.
	if tr := req.GetAccessibilityRequirements(); tr != nil && len(tr.GetRequisite()) > 0 {
		nodes, err := s.nodesOf(tr.GetRequisite())
		if err != nil {
			return nil, err
		}
		src, err := s.ctrl.GetVolume(ctx, req.GetSourceVolumeId())
		if err != nil {
			return nil, toStatus(err)
		}
		if !slices.Contains(nodes, src.Node) {
			return nil, status.Errorf(codes.ResourceExhausted, "volume %s lives on node %s, outside the requisite topology", src.Volume.ID, src.Node)
		}
	}
	p, err := s.ctrl.CreateSnapshot(ctx, req.GetName(), req.GetSourceVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.CreateSnapshotResponse{Snapshot: s.csiSnapshot(p)}, nil
}

func (s *ControllerServer) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if err := validateID("snapshot ID", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	p, err := s.ctrl.GetSnapshot(ctx, req.GetSnapshotId())
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.GetSnapshotResponse{Snapshot: s.csiSnapshot(p)}, nil
}

func (s *ControllerServer) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if err := validateID("snapshot ID", req.GetSnapshotId()); err != nil {
		return nil, err
	}
	if err := s.ctrl.DeleteSnapshot(ctx, req.GetSnapshotId()); err != nil {
		return nil, toStatus(err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (s *ControllerServer) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	all, err := s.ctrl.ListSnapshots(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	// Filters: an ID that cannot exist matches nothing.
	all = slices.DeleteFunc(all, func(p volume.PlacedSnapshot) bool {
		return req.GetSnapshotId() != "" && p.Snapshot.ID != req.GetSnapshotId() ||
			req.GetSourceVolumeId() != "" && p.Snapshot.SourceVolumeID != req.GetSourceVolumeId()
	})
	items, next, err := page(all, func(p volume.PlacedSnapshot) string { return p.Snapshot.ID }, req.GetStartingToken(), snapshotTokenPrefix, req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, p := range items {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: s.csiSnapshot(p)})
	}
	return resp, nil
}
