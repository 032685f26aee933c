package csi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// NodeServer serves the CSI Node service.
type NodeServer struct {
	csi.UnimplementedNodeServer
	pub         *node.Mounts
	nodeID      string
	topologyKey string
	maxVolumes  func(context.Context) int64
	paths       Paths
}

var _ csi.NodeServer = (*NodeServer)(nil)

// NodeConfig configures a NodeServer.
type NodeConfig struct {
	NodeID      string
	TopologyKey string
	// MaxVolumes, when set, is how many volumes the node can hold, asked
	// at each NodeGetInfo (the kubelet asks again every
	// nodeAllocatableUpdatePeriodSeconds of the CSIDriver); 0 or unset: no
	// limit.
	MaxVolumes func(context.Context) int64
	Paths      Paths
}

// NewNodeServer returns the Node service over pub.
func NewNodeServer(pub *node.Mounts, cfg NodeConfig) *NodeServer {
	return &NodeServer{pub: pub, nodeID: cfg.NodeID, topologyKey: cfg.TopologyKey, maxVolumes: cfg.MaxVolumes, paths: cfg.Paths}
}

func lstatLink(p string) (bool, error) {
	fi, err := os.Lstat(p)
	if err != nil {
		return false, err
	}
	return fi.Mode()&os.ModeSymlink != 0, nil
}

// checkPath validates a path from the CO and returns it with its parent's
// symlinks resolved: the node works on that one spelling of the place.
func (s *NodeServer) checkPath(kind, p string) (string, error) {
	r, err := s.paths.Resolve(kind, p, lstatLink, filepath.EvalSymlinks)
	return r, toStatus(err)
}

func (s *NodeServer) NodeGetInfo(ctx context.Context, _ *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             s.nodeID,
		MaxVolumesPerNode:  s.volumeLimit(ctx),
		AccessibleTopology: &csi.Topology{Segments: map[string]string{s.topologyKey: s.nodeID}},
	}, nil
}

func (s *NodeServer) volumeLimit(ctx context.Context) int64 {
	if s.maxVolumes == nil {
		return 0
	}
	return max(s.maxVolumes(ctx), 0)
}

func (s *NodeServer) NodeGetCapabilities(ctx context.Context, _ *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_HEALTH,
		csi.NodeServiceCapability_RPC_GET_STORAGE_HEALTH,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
		// Not VOLUME_MOUNT_GROUP: with it the kubelet leaves a pod's
		// fsGroup to the driver and never says which fsGroupChangePolicy
		// the pod asked for. Without it the kubelet applies fsGroup itself,
		// by the policy (the CSIDriver says fsGroupPolicy: File). A
		// volume_mount_group a CO sends anyway is applied to the volume's
		// root at stage and at publish.
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func access(c *csi.VolumeCapability, readOnly bool) (node.Access, error) {
	mode, err := capability(c)
	if err != nil {
		return node.Access{}, err
	}
	if g := c.GetMount().GetVolumeMountGroup(); g != "" {
		if gid, err := strconv.ParseUint(g, 10, 32); err != nil || gid == 0 && g != "0" {
			return node.Access{}, invalid("volume mount group %q is not a numeric GID", g)
		}
	}
	am := c.GetAccessMode().GetMode()
	return node.Access{
		Block:        mode == pool.ModeBlock,
		FsType:       c.GetMount().GetFsType(),
		MountFlags:   c.GetMount().GetMountFlags(),
		MountGroup:   c.GetMount().GetVolumeMountGroup(),
		ReadOnly:     readOnly || am == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
		SingleWriter: am == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
	}, nil
}

func (s *NodeServer) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	staging, err := s.checkPath("staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	a, err := access(req.GetVolumeCapability(), false)
	if err != nil {
		return nil, err
	}
	if err := s.pub.Stage(ctx, req.GetVolumeId(), staging, a); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (s *NodeServer) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	staging, err := s.checkPath("staging target path", req.GetStagingTargetPath())
	if err != nil {
		return nil, err
	}
	if err := s.pub.Unstage(ctx, req.GetVolumeId(), staging); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func (s *NodeServer) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	target, err := s.checkPath("target path", req.GetTargetPath())
	if err != nil {
		return nil, err
	}
	a, err := access(req.GetVolumeCapability(), req.GetReadonly())
	if err != nil {
		return nil, err
	}
	a.PodUID = req.GetVolumeContext()[node.PodUIDKey]
	staging := req.GetStagingTargetPath()
	if !a.Block {
		if staging, err = s.checkPath("staging target path", staging); err != nil {
			return nil, err
		}
	} else if staging != "" {
		if r, err := s.checkPath("staging target path", staging); err == nil {
			staging = r
		}
	}
	if staging != "" && (under(target, staging) || under(staging, target)) {
		return nil, invalid("target path %q and staging target path %q must be apart (neither within the other)", req.GetTargetPath(), req.GetStagingTargetPath())
	}
	if err := s.pub.Publish(ctx, req.GetVolumeId(), staging, target, a); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (s *NodeServer) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	target, err := s.checkPath("target path", req.GetTargetPath())
	if status.Code(err) == codes.NotFound {
		// The target's parent does not exist, so neither does the target:
		// nothing is published there (OK, whether the volume exists or
		// not), once the path as given passes the checks.
		noParent := func(dir string) (string, error) { return dir, nil }
		if _, err := s.paths.Resolve("target path", req.GetTargetPath(), lstatLink, noParent); err != nil {
			return nil, toStatus(err)
		}
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err != nil {
		return nil, err
	}
	// Below an allowed root (there is one): an empty directory left at the
	// target of a volume that is gone may be removed (node.Mounts).
	underAllowedRoot := len(s.paths.Allowed) > 0
	if err := s.pub.Unpublish(ctx, req.GetVolumeId(), target, underAllowedRoot); err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// volumeAtPath checks a volume ID and a path for the read-only calls and
// returns the resolved path; a path that is not a valid, allowed path
// cannot hold the volume: NotFound.
func (s *NodeServer) volumeAtPath(id, path string) (string, error) {
	if err := validateID("volume ID", id); err != nil {
		return "", err
	}
	if path == "" {
		return "", invalid("volume path is required")
	}
	r, err := s.checkPath("volume path", path)
	if err != nil {
		return "", status.Errorf(codes.NotFound, "volume %s is not at %q: %v", id, path, status.Convert(err).Message())
	}
	return r, nil
}

func (s *NodeServer) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	path, err := s.volumeAtPath(req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		if status.Code(err) == codes.NotFound {
			// An unknown volume is NotFound before the path is looked at.
			if _, _, lerr := s.pub.Lookup(ctx, req.GetVolumeId()); lerr != nil {
				return nil, toStatus(lerr)
			}
		}
		return nil, err
	}
	st, err := s.pub.Stats(ctx, req.GetVolumeId(), path)
	if err != nil {
		return nil, toStatus(err)
	}
	if st.Abnormal {
		return nil, status.Errorf(codes.Internal, "volume %s at %s: %s", req.GetVolumeId(), req.GetVolumePath(), st.Message)
	}
	resp := &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{
		Unit: csi.VolumeUsage_BYTES, Total: st.TotalBytes, Available: st.AvailBytes, Used: st.UsedBytes,
	}}}
	if !st.Block {
		resp.Usage = append(resp.Usage, &csi.VolumeUsage{Unit: csi.VolumeUsage_INODES, Total: st.TotalInodes, Available: st.FreeInodes, Used: st.UsedInodes})
	}
	return resp, nil
}

// NodeGetVolumeHealth checks that the volume exists and, where paths are
// given, that it is mounted and readable there.
func (s *NodeServer) NodeGetVolumeHealth(ctx context.Context, req *csi.NodeGetVolumeHealthRequest) (*csi.NodeGetVolumeHealthResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	_, v, err := s.pub.Lookup(ctx, req.GetVolumeId())
	if err != nil {
		return nil, toStatus(err)
	}
	h := health(v)
	for _, p := range []string{req.GetVolumePublishPath(), req.GetStagingTargetPath()} {
		if p == "" || v.Mode == pool.ModeBlock && p == req.GetStagingTargetPath() {
			continue
		}
		p, err := s.checkPath("volume path", p)
		if err != nil {
			return nil, err
		}
		if st, err := s.pub.Stats(ctx, v.ID, p); err != nil || st.Abnormal {
			msg := st.Message
			if err != nil {
				msg = err.Error()
			}
			h.HealthStatuses = append(h.HealthStatuses, &csi.VolumeHealth_VolumeHealthEntry{
				Status: csi.VolumeHealthErrorType_INACCESSIBLE, Reason: "NotMounted", Message: msg,
			})
		}
	}
	return &csi.NodeGetVolumeHealthResponse{VolumeHealth: h}, nil
}

func (s *NodeServer) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	if err := validateID("volume ID", req.GetVolumeId()); err != nil {
		return nil, err
	}
	if req.GetVolumePath() == "" {
		return nil, invalid("volume path is required")
	}
	if _, _, err := s.pub.Lookup(ctx, req.GetVolumeId()); err != nil {
		return nil, toStatus(err)
	}
	path, err := s.volumeAtPath(req.GetVolumeId(), req.GetVolumePath())
	if err != nil {
		return nil, err
	}
	if c := req.GetVolumeCapability(); c != nil {
		if _, err := capability(c); err != nil {
			return nil, err
		}
	}
	size, err := s.pub.Expand(ctx, req.GetVolumeId(), path)
	if err != nil {
		return nil, toStatus(err)
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: size}, nil
}

// NodeGetStorageHealth reports pools that cannot be read, run degraded
// (a raid1 pool missing a disk) or are nearly full.
func (s *NodeServer) NodeGetStorageHealth(ctx context.Context, _ *csi.NodeGetStorageHealthRequest) (*csi.NodeGetStorageHealthResponse, error) {
	resp := &csi.NodeGetStorageHealthResponse{}
	for _, ph := range s.pub.PoolHealth(ctx) {
		switch {
		case ph.Err != nil:
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: csi.StorageHealthErrorType_STORAGE_UNREACHABLE, Reason: "PoolUnreadable",
				Message: fmt.Sprintf("pool %s: %v", ph.Name, ph.Err),
			})
		case ph.Stats.Degraded != "":
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "PoolDegraded",
				Message: fmt.Sprintf("pool %s: %s", ph.Name, ph.Stats.Degraded),
			})
		case ph.Stats.TotalBytes > 0 && ph.Stats.AllocatableBytes()*20 < ph.Stats.TotalBytes:
			resp.BackendHealth = append(resp.BackendHealth, &csi.NodeGetStorageHealthResponse_StorageBackendHealth{
				Status: csi.StorageHealthErrorType_STORAGE_DEGRADED, Reason: "PoolNearlyFull",
				Message: fmt.Sprintf("pool %s: %d of %d bytes allocatable", ph.Name, ph.Stats.AllocatableBytes(), ph.Stats.TotalBytes),
			})
		}
	}
	return resp, nil
}
