package csiclient

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/bytesize"
	"github.com/plinth-dev/plinth/pkg/unixsock"
)

var (
	// ErrUnreachable: nothing answered CSI on the endpoint.
	ErrUnreachable = errors.New("cannot reach")
	// ErrShrink: an expansion asked for less than the volume has.
	ErrShrink = errors.New("volumes do not shrink")
)

// StatusError is a CSI call's failure as its gRPC status says it:
// "NotFound: volume ... does not exist". status.Code reads its code.
type StatusError struct{ Status *status.Status }

func (e *StatusError) Error() string {
	return e.Status.Code().String() + ": " + e.Status.Message()
}

// GRPCStatus lets status.Code and status.FromError see the status.
func (e *StatusError) GRPCStatus() *status.Status { return e.Status }

// fromRPC turns a gRPC call's error into a *StatusError.
func fromRPC(err error) error {
	if st, ok := status.FromError(err); ok && err != nil {
		return &StatusError{Status: st}
	}
	return err
}

// Volume is a CSI volume as plinth's client shows it (the stable form of
// -o json).
type Volume struct {
	ID            string `json:"id"`
	CapacityBytes int64  `json:"capacityBytes"`
	// Topology is where the volume is accessible: one map of topology
	// keys to values per segment (plinth: its node).
	Topology []map[string]string `json:"topology,omitempty"`
	// Context is the volume context (plinth: pool, mode, fsType).
	Context          map[string]string `json:"context,omitempty"`
	SourceSnapshotID string            `json:"sourceSnapshotID,omitempty"`
	SourceVolumeID   string            `json:"sourceVolumeID,omitempty"`
}

// Snapshot is a CSI snapshot as plinth's client shows it.
type Snapshot struct {
	ID             string    `json:"id"`
	SourceVolumeID string    `json:"sourceVolumeID"`
	SizeBytes      int64     `json:"sizeBytes"`
	CreationTime   time.Time `json:"creationTime"`
	ReadyToUse     bool      `json:"readyToUse"`
}

// Expansion is what ControllerExpandVolume answered.
type Expansion struct {
	VolumeID      string `json:"volumeID"`
	CapacityBytes int64  `json:"capacityBytes"`
	// NodeExpansionRequired: the filesystem grows when the CO calls
	// NodeExpandVolume (or stages the volume again).
	NodeExpansionRequired bool `json:"nodeExpansionRequired"`
}

// VolumeRequest is a CreateVolume.
type VolumeRequest struct {
	Name      string
	SizeBytes int64
	// Block asks for a raw block volume; otherwise a filesystem of FsType
	// ("": the pool's default).
	Block      bool
	FsType     string
	AccessMode csi.VolumeCapability_AccessMode_Mode
	Parameters map[string]string
	// FromSnapshot or FromVolume (at most one) is the content source.
	FromSnapshot, FromVolume string
}

// Client is a CSI Controller client on one endpoint.
type Client struct {
	// PageSize is the max_entries of each List call (0: the plugin's
	// choice); the lists read every page whatever it is.
	PageSize int32
	endpoint string
	conn     *grpc.ClientConn
	ctrl     csi.ControllerClient
	caps     map[csi.ControllerServiceCapability_RPC_Type]bool
}

// Dial connects to the CSI endpoint (unix://PATH) and reads the
// controller's capabilities: an endpoint nobody answers on fails here with
// ErrUnreachable, as soon as the connection fails or ctx ends.
func Dial(ctx context.Context, endpoint string) (*Client, error) {
	path, err := unixsock.ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if path, err = filepath.Abs(path); err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
	}
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: %w", endpoint, err)
	}
	c := &Client{endpoint: endpoint, conn: conn, ctrl: csi.NewControllerClient(conn), caps: map[csi.ControllerServiceCapability_RPC_Type]bool{}}
	resp, err := c.ctrl.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		conn.Close()
		switch status.Code(err) {
		case codes.Unavailable, codes.DeadlineExceeded:
			return nil, fmt.Errorf("%w %s (is plinth standalone running there?): %w", ErrUnreachable, endpoint, fromRPC(err))
		case codes.Unimplemented:
			return nil, fmt.Errorf("%s serves no CSI Controller service (is it a plinth node socket?): %w", endpoint, fromRPC(err))
		}
		return nil, fmt.Errorf("controller capabilities: %w", fromRPC(err))
	}
	for _, cp := range resp.GetCapabilities() {
		c.caps[cp.GetRpc().GetType()] = true
	}
	return c, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// need fails with errors.ErrUnsupported unless the controller advertises t.
func (c *Client) need(t csi.ControllerServiceCapability_RPC_Type) error {
	if !c.caps[t] {
		return fmt.Errorf("%s does not advertise controller capability %s: %w", c.endpoint, t, errors.ErrUnsupported)
	}
	return nil
}

// CreateVolume creates (or, for a name it already has, returns) a volume.
func (c *Client) CreateVolume(ctx context.Context, r VolumeRequest) (Volume, error) {
	if err := c.need(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME); err != nil {
		return Volume{}, err
	}
	capability := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: r.AccessMode}}
	if r.Block {
		capability.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		capability.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: r.FsType}}
	}
	req := &csi.CreateVolumeRequest{
		Name: r.Name, CapacityRange: &csi.CapacityRange{RequiredBytes: r.SizeBytes},
		VolumeCapabilities: []*csi.VolumeCapability{capability}, Parameters: r.Parameters,
	}
	switch {
	case r.FromSnapshot != "":
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: r.FromSnapshot}}}
	case r.FromVolume != "":
		req.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: r.FromVolume}}}
	}
	resp, err := c.ctrl.CreateVolume(ctx, req)
	if err != nil {
		return Volume{}, fromRPC(err)
	}
	return volumeOf(resp.GetVolume()), nil
}

// volumeOf reads a CSI volume.
func volumeOf(v *csi.Volume) Volume {
	out := Volume{ID: v.GetVolumeId(), CapacityBytes: v.GetCapacityBytes(), Context: v.GetVolumeContext(),
		SourceSnapshotID: v.GetContentSource().GetSnapshot().GetSnapshotId(), SourceVolumeID: v.GetContentSource().GetVolume().GetVolumeId()}
	for _, t := range v.GetAccessibleTopology() {
		out.Topology = append(out.Topology, t.GetSegments())
	}
	return out
}

// listResponse is a page of a CSI List call.
type listResponse[E any] interface {
	GetEntries() []E
	GetNextToken() string
}

// allPages calls list from the first token until a page has no next
// token, and converts every entry; a token given twice is an error, not an
// endless loop.
func allPages[E, T any, R listResponse[E]](ctx context.Context, list func(ctx context.Context, token string) (R, error), conv func(E) T) ([]T, error) {
	all := []T{}
	seen := map[string]bool{}
	for token := ""; ; {
		resp, err := list(ctx, token)
		if err != nil {
			return nil, fromRPC(err)
		}
		for _, e := range resp.GetEntries() {
			all = append(all, conv(e))
		}
		next := resp.GetNextToken()
		if next == "" {
			return all, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("the plugin gave next token %q twice", next)
		}
		seen[next], token = true, next
	}
}

// ListVolumes lists every volume, page by page.
func (c *Client) ListVolumes(ctx context.Context) ([]Volume, error) {
	if err := c.need(csi.ControllerServiceCapability_RPC_LIST_VOLUMES); err != nil {
		return nil, err
	}
	return allPages(ctx, func(ctx context.Context, token string) (*csi.ListVolumesResponse, error) {
		return c.ctrl.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: token, MaxEntries: c.PageSize})
	}, func(e *csi.ListVolumesResponse_Entry) Volume { return volumeOf(e.GetVolume()) })
}

// GetVolume reads one volume: with ControllerGetVolume where the
// controller has GET_VOLUME, else from ListVolumes. A volume that does not
// exist is a *StatusError with codes.NotFound.
func (c *Client) GetVolume(ctx context.Context, id string) (Volume, error) {
	if c.caps[csi.ControllerServiceCapability_RPC_GET_VOLUME] {
		resp, err := c.ctrl.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
		if err != nil {
			return Volume{}, fromRPC(err)
		}
		return volumeOf(resp.GetVolume()), nil
	}
	all, err := c.ListVolumes(ctx)
	if err != nil {
		return Volume{}, err
	}
	for _, v := range all {
		if v.ID == id {
			return v, nil
		}
	}
	return Volume{}, &StatusError{Status: status.Newf(codes.NotFound, "volume %s not found in ListVolumes", id)}
}

// ExpandVolume grows volume id to sizeBytes; less than it has is
// ErrShrink (CSI plugins answer that with the current size and no error).
func (c *Client) ExpandVolume(ctx context.Context, id string, sizeBytes int64) (Expansion, error) {
	if err := c.need(csi.ControllerServiceCapability_RPC_EXPAND_VOLUME); err != nil {
		return Expansion{}, err
	}
	v, err := c.GetVolume(ctx, id)
	if err != nil {
		return Expansion{}, err
	}
	if sizeBytes < v.CapacityBytes {
		return Expansion{}, fmt.Errorf("volume %s is %s, more than the %s asked: %w", id, bytesize.Format(v.CapacityBytes), bytesize.Format(sizeBytes), ErrShrink)
	}
	resp, err := c.ctrl.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: sizeBytes}})
	if err != nil {
		return Expansion{}, fromRPC(err)
	}
	return Expansion{VolumeID: id, CapacityBytes: resp.GetCapacityBytes(), NodeExpansionRequired: resp.GetNodeExpansionRequired()}, nil
}

// DeleteVolume deletes a volume. CSI's DeleteVolume answers OK for a
// volume that does not exist, so the client looks first (GetVolume): one
// that does not exist is a *StatusError with codes.NotFound, and nothing
// is deleted.
func (c *Client) DeleteVolume(ctx context.Context, id string) error {
	if err := c.need(csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME); err != nil {
		return err
	}
	return deleteExisting("volume", id, func() error { _, err := c.GetVolume(ctx, id); return err }, func() error {
		_, err := c.ctrl.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
		return err
	})
}

// deleteExisting deletes kind id with del once look has found it; what
// look does not find (codes.NotFound) is not deleted, and is a NotFound
// that says so.
func deleteExisting(kind, id string, look, del func() error) error {
	switch err := look(); {
	case status.Code(err) == codes.NotFound:
		return &StatusError{Status: status.Newf(codes.NotFound, "%s %s does not exist; nothing deleted", kind, id)}
	case err != nil:
		return err
	}
	return fromRPC(del())
}

// snapshotOf reads a CSI snapshot.
func snapshotOf(s *csi.Snapshot) Snapshot {
	out := Snapshot{ID: s.GetSnapshotId(), SourceVolumeID: s.GetSourceVolumeId(), SizeBytes: s.GetSizeBytes(), ReadyToUse: s.GetReadyToUse()}
	if s.GetCreationTime() != nil {
		out.CreationTime = s.GetCreationTime().AsTime()
	}
	return out
}

// CreateSnapshot snapshots volume volumeID as name (the same name again
// returns the same snapshot).
func (c *Client) CreateSnapshot(ctx context.Context, name, volumeID string) (Snapshot, error) {
	if err := c.need(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT); err != nil {
		return Snapshot{}, err
	}
	resp, err := c.ctrl.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: volumeID})
	if err != nil {
		return Snapshot{}, fromRPC(err)
	}
	return snapshotOf(resp.GetSnapshot()), nil
}

// ListSnapshots lists every snapshot, or volumeID's ("": all), page by page.
func (c *Client) ListSnapshots(ctx context.Context, volumeID string) ([]Snapshot, error) {
	return c.listSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: volumeID})
}

// listSnapshots lists the snapshots that req's filters select, page by page.
func (c *Client) listSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) ([]Snapshot, error) {
	if err := c.need(csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS); err != nil {
		return nil, err
	}
	return allPages(ctx, func(ctx context.Context, token string) (*csi.ListSnapshotsResponse, error) {
		req.StartingToken, req.MaxEntries = token, c.PageSize
		return c.ctrl.ListSnapshots(ctx, req)
	}, func(e *csi.ListSnapshotsResponse_Entry) Snapshot { return snapshotOf(e.GetSnapshot()) })
}

// GetSnapshot reads one snapshot (ListSnapshots of its ID). A snapshot
// that does not exist is a *StatusError with codes.NotFound.
func (c *Client) GetSnapshot(ctx context.Context, id string) (Snapshot, error) {
	all, err := c.listSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: id})
	if err != nil {
		return Snapshot{}, err
	}
	for _, s := range all {
		if s.ID == id {
			return s, nil
		}
	}
	return Snapshot{}, &StatusError{Status: status.Newf(codes.NotFound, "snapshot %s not found in ListSnapshots", id)}
}

// DeleteSnapshot deletes a snapshot. As for DeleteVolume, the client looks
// first (GetSnapshot): one that does not exist is a *StatusError with
// codes.NotFound, and nothing is deleted.
func (c *Client) DeleteSnapshot(ctx context.Context, id string) error {
	if err := c.need(csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT); err != nil {
		return err
	}
	return deleteExisting("snapshot", id, func() error { _, err := c.GetSnapshot(ctx, id); return err }, func() error {
		_, err := c.ctrl.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: id})
		return err
	})
}
