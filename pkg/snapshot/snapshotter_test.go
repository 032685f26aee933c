package snapshot

import (
	"context"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// fakeCSI answers as a CSI controller would: a snapshot being taken, then
// ready; ListSnapshots by ID; codes for what it refuses.
type fakeCSI struct {
	calls  int
	create *csi.CreateSnapshotRequest
}

func (f *fakeCSI) CreateSnapshot(_ context.Context, r *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	f.calls++
	f.create = r
	if r.GetSourceVolumeId() == "pv-missing" {
		return nil, status.Error(codes.NotFound, "volume pv-missing")
	}
	return &csi.CreateSnapshotResponse{Snapshot: &csi.Snapshot{SnapshotId: "sn-1", SourceVolumeId: r.GetSourceVolumeId(),
		CreationTime: timestamppb.New(time.Unix(100, 0)), SizeBytes: 42, ReadyToUse: f.calls > 1}}, nil
}

func (f *fakeCSI) DeleteSnapshot(_ context.Context, r *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	if r.GetSnapshotId() == "sn-busy" {
		return nil, status.Error(codes.Aborted, "in progress")
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

func (f *fakeCSI) ListSnapshots(_ context.Context, r *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	if r.GetSnapshotId() != "sn-1" {
		return &csi.ListSnapshotsResponse{}, nil
	}
	return &csi.ListSnapshotsResponse{Entries: []*csi.ListSnapshotsResponse_Entry{{Snapshot: &csi.Snapshot{
		SnapshotId: "sn-1", CreationTime: timestamppb.New(time.Unix(100, 0)), SizeBytes: 42, ReadyToUse: true}}}}, nil
}

// The sidecar sees what a CSI socket would have told it: the request as it
// built it, not-ready snapshots as not ready (it asks again), and the
// service's gRPC codes (which it sorts into final errors and retries).
func TestSnapshotter(t *testing.T) {
	ctx := context.Background()
	f := &fakeCSI{}
	s := &Snapshotter{Driver: "plinth.example.com", CSI: f}
	params, secrets := map[string]string{"k": "v"}, map[string]string{"s": "x"}
	driver, id, at, size, ready, err := s.CreateSnapshot(ctx, "snapshot-uid", "pv-a", params, secrets)
	if err != nil || driver != "plinth.example.com" || id != "sn-1" || !at.Equal(time.Unix(100, 0)) || size != 42 || ready {
		t.Fatalf("first CreateSnapshot = %s %s %v %d %v %v", driver, id, at, size, ready, err)
	}
	if r := f.create; r.GetName() != "snapshot-uid" || r.GetSourceVolumeId() != "pv-a" || r.GetParameters()["k"] != "v" || r.GetSecrets()["s"] != "x" {
		t.Fatalf("request %+v", r)
	}
	if _, _, _, _, ready, err := s.CreateSnapshot(ctx, "snapshot-uid", "pv-a", nil, nil); err != nil || !ready {
		t.Fatalf("second CreateSnapshot: ready %v, %v", ready, err)
	}
	if _, _, _, _, _, err := s.CreateSnapshot(ctx, "snapshot-x", "pv-missing", nil, nil); status.Code(err) != codes.NotFound {
		t.Fatalf("CreateSnapshot of a missing volume: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, "sn-busy", nil); status.Code(err) != codes.Aborted {
		t.Fatalf("DeleteSnapshot in progress: %v", err)
	}
	if err := s.DeleteSnapshot(ctx, "sn-1", nil); err != nil {
		t.Fatal(err)
	}
	if ready, at, size, group, err := s.GetSnapshotStatus(ctx, "sn-1", nil); err != nil || !ready || size != 42 || group != "" || !at.Equal(time.Unix(100, 0)) {
		t.Fatalf("GetSnapshotStatus = %v %v %d %q %v", ready, at, size, group, err)
	}
	if _, _, _, _, err := s.GetSnapshotStatus(ctx, "sn-nope", nil); err == nil {
		t.Fatal("GetSnapshotStatus of a missing snapshot: no error")
	}
}
