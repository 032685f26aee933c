package snapshot

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/kubernetes-csi/external-snapshotter/v8/pkg/snapshotter"
)

// Controller is the part of a CSI controller service the snapshotter calls
// (pkg/csi's ControllerServer).
type Controller interface {
	CreateSnapshot(context.Context, *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error)
	DeleteSnapshot(context.Context, *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error)
	ListSnapshots(context.Context, *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error)
}

// Snapshotter is the sidecar controller's snapshotter.Snapshotter over a
// CSI controller service in the same process. Its errors are the
// service's gRPC statuses, which the sidecar sorts into final ones and
// ones to retry.
type Snapshotter struct {
	Driver string
	CSI    Controller
}

var _ snapshotter.Snapshotter = (*Snapshotter)(nil)

// CreateSnapshot asks for a snapshot of volumeHandle named snapshotName; a
// snapshot not yet ready is answered so, and the sidecar asks again.
func (s *Snapshotter) CreateSnapshot(ctx context.Context, snapshotName, volumeHandle string, parameters, secrets map[string]string) (string, string, time.Time, int64, bool, error) {
	rsp, err := s.CSI.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{
		SourceVolumeId: volumeHandle, Name: snapshotName, Parameters: parameters, Secrets: secrets,
	})
	if err != nil {
		return "", "", time.Time{}, 0, false, err
	}
	sn := rsp.GetSnapshot()
	return s.Driver, sn.GetSnapshotId(), sn.GetCreationTime().AsTime(), sn.GetSizeBytes(), sn.GetReadyToUse(), nil
}

// DeleteSnapshot deletes snapshotID; one already gone is success.
func (s *Snapshotter) DeleteSnapshot(ctx context.Context, snapshotID string, secrets map[string]string) error {
	_, err := s.CSI.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snapshotID, Secrets: secrets})
	return err
}

// GetSnapshotStatus reads a snapshot (for a pre-provisioned content):
// whether it is ready, when it was taken, its size, and its group (none).
func (s *Snapshotter) GetSnapshotStatus(ctx context.Context, snapshotID string, secrets map[string]string) (bool, time.Time, int64, string, error) {
	rsp, err := s.CSI.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: snapshotID, Secrets: secrets})
	if err != nil {
		return false, time.Time{}, 0, "", err
	}
	if len(rsp.GetEntries()) == 0 {
		return false, time.Time{}, 0, "", fmt.Errorf("snapshot %s not found", snapshotID)
	}
	sn := rsp.GetEntries()[0].GetSnapshot()
	return sn.GetReadyToUse(), sn.GetCreationTime().AsTime(), sn.GetSizeBytes(), sn.GetGroupSnapshotId(), nil
}
