// Package refdriver is a stand-in for csi-driver-host-path, the reference
// the bench compares plinth with when no other CSI endpoint is given
// (csi-driver-host-path itself cannot be fetched on the bench machine).
//
// It does what csi-driver-host-path does for the calls of a volume cycle,
// and no more:
//
//   - a filesystem volume is a plain directory; a block volume is a file
//     made with fallocate(1) and attached with `losetup -f --show` at
//     create, detached with `losetup -d` at delete;
//   - stage and unstage are accepted and do nothing (STAGE_UNSTAGE_VOLUME is
//     advertised, as csi-driver-host-path does);
//   - publish bind-mounts the directory (or the loop device, onto a file)
//     with mount(8), twice as k8s.io/mount-utils does for a bind (bind,
//     then bind,remount with the options); unpublish reads the mount table,
//     runs umount(8) and removes the target;
//   - one mutex around every call, and the volumes' state written to a
//     JSON file (no fsync) after every change.
//
// It is a bench baseline, not a driver: no capacity, topology, snapshots,
// checks of paths or identities.
package refdriver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mountutils "k8s.io/mount-utils"
)

// Driver serves CSI Identity, Controller and Node over volumes in Dir.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	Dir string

	mu   sync.Mutex // one lock for every call, as csi-driver-host-path has
	vols map[string]*volume
}

type volume struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Path  string `json:"path"`
	Size  int64  `json:"size"`
	Block bool   `json:"block"`
	// Published: target paths.
	Published []string `json:"published,omitempty"`
}

// Run serves the driver on the unix socket sock until ctx ends.
func Run(ctx context.Context, sock, dir string) error {
	d := &Driver{Dir: dir, vols: map[string]*volume{}}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	_ = os.Remove(sock)
	l, err := net.Listen("unix", sock)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, d)
	csi.RegisterControllerServer(srv, d)
	csi.RegisterNodeServer(srv, d)
	go func() { <-ctx.Done(); srv.Stop() }()
	return srv.Serve(l)
}

func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// saveLocked writes the state file as csi-driver-host-path does after
// every change: the whole state, os.WriteFile, no fsync.
func (d *Driver) saveLocked() error {
	data, err := json.Marshal(d.vols)
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d.Dir, "state.json"), data, 0o600)
}

func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: "refdriver.bench.plinth.example.com", VendorVersion: "host-path stand-in"}, nil
}

func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{{Type: &csi.PluginCapability_Service_{
		Service: &csi.PluginCapability_Service{Type: csi.PluginCapability_Service_CONTROLLER_SERVICE}}}}}, nil
}

func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: []*csi.ControllerServiceCapability{{Type: &csi.ControllerServiceCapability_Rpc{
		Rpc: &csi.ControllerServiceCapability_RPC{Type: csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME}}}}}, nil
}

func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	if req.GetName() == "" || len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "name and capabilities are required")
	}
	block := req.GetVolumeCapabilities()[0].GetBlock() != nil
	size := max(req.GetCapacityRange().GetRequiredBytes(), 1<<20)
	sum := sha256.Sum256([]byte(req.GetName()))
	id := "ref-" + hex.EncodeToString(sum[:16])
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.vols[id]; ok {
		return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: v.ID, CapacityBytes: v.Size}}, nil
	}
	v := &volume{ID: id, Name: req.GetName(), Path: filepath.Join(d.Dir, id), Size: size, Block: block}
	if block {
		if _, err := run("fallocate", "-l", fmt.Sprintf("%dM", (size+(1<<20)-1)>>20), v.Path); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		if _, err := run("losetup", "-f", "--show", v.Path); err != nil {
			os.Remove(v.Path)
			return nil, status.Error(codes.Internal, err.Error())
		}
	} else if err := os.MkdirAll(v.Path, 0o777); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	d.vols[id] = v
	if err := d.saveLocked(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.CreateVolumeResponse{Volume: &csi.Volume{VolumeId: id, CapacityBytes: size}}, nil
}

// loopDevice finds the loop device backed by path in sysfs, as
// k8s.io/kubernetes' volumepathhandler does.
func loopDevice(path string) (string, error) {
	matches, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && strings.TrimSpace(string(b)) == path {
			return "/dev/" + filepath.Base(filepath.Dir(filepath.Dir(m))), nil
		}
	}
	return "", fmt.Errorf("no loop device backed by %s", path)
}

func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[req.GetVolumeId()]
	if !ok {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if v.Block {
		if dev, err := loopDevice(v.Path); err == nil {
			if _, err := run("losetup", "-d", dev); err != nil {
				return nil, status.Error(codes.Internal, err.Error())
			}
		}
	}
	if err := os.RemoveAll(v.Path); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	delete(d.vols, v.ID)
	if err := d.saveLocked(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.DeleteVolumeResponse{}, nil
}

func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: "bench"}, nil
}

func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	return &csi.NodeGetCapabilitiesResponse{Capabilities: []*csi.NodeServiceCapability{{Type: &csi.NodeServiceCapability_Rpc{
		Rpc: &csi.NodeServiceCapability_RPC{Type: csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME}}}}}, nil
}

// NodeStageVolume checks its arguments and does nothing, as
// csi-driver-host-path's does.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetStagingTargetPath() == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "volume ID, staging path and capability are required")
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	if req.GetVolumeId() == "" || req.GetStagingTargetPath() == "" {
		return nil, status.Error(codes.InvalidArgument, "volume ID and staging path are required")
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

func mounted(path string) (bool, error) {
	ms, err := mountutils.ParseMountInfo("/proc/self/mountinfo")
	for _, m := range ms {
		if m.MountPoint == path {
			return true, nil
		}
	}
	return false, err
}

func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	target := req.GetTargetPath()
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[req.GetVolumeId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such volume")
	}
	if m, err := mounted(target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if m {
		return &csi.NodePublishVolumeResponse{}, nil
	}
	source := v.Path
	if v.Block {
		dev, err := loopDevice(v.Path)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		source = dev
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDWR, 0o750)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	remount := "bind,remount"
	if req.GetReadonly() {
		remount += ",ro"
	}
	for _, f := range req.GetVolumeCapability().GetMount().GetMountFlags() {
		remount += "," + f
	}
	if _, err := run("mount", "-o", "bind", source, target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if _, err := run("mount", "-o", remount, source, target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	v.Published = append(v.Published, target)
	if err := d.saveLocked(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	target := req.GetTargetPath()
	d.mu.Lock()
	defer d.mu.Unlock()
	v, ok := d.vols[req.GetVolumeId()]
	if !ok {
		return nil, status.Error(codes.NotFound, "no such volume")
	}
	if m, err := mounted(target); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	} else if m {
		if _, err := run("umount", target); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if err := os.RemoveAll(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Error(codes.Internal, err.Error())
	}
	for i, p := range v.Published {
		if p == target {
			v.Published = append(v.Published[:i], v.Published[i+1:]...)
			break
		}
	}
	if err := d.saveLocked(); err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}
