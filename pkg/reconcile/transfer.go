package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/transfer"
	"github.com/plinth-dev/plinth/pkg/volume"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Importer is a node that fills volumes from other nodes' snapshots and
// brings them up to date from other nodes' volumes (node.Local).
type Importer interface {
	Import(ctx context.Context, poolName string, v pool.Volume, fill func(context.Context, pool.ImportTarget) error) (pool.Volume, error)
	Sync(ctx context.Context, id string, fill func(context.Context, pool.ImportTarget) error) error
}

// Exporter is a node that opens its snapshots and volumes for other nodes
// (node.Local).
type Exporter interface {
	ExportSnapshot(ctx context.Context, id string) (*os.File, pool.Snapshot, error)
	ExportVolume(ctx context.Context, id string) (*os.File, pool.Volume, error)
	SendSnapshot(ctx context.Context, id string) (pool.Send, pool.Snapshot, error)
	SendVolume(ctx context.Context, id, base string) (pool.Send, pool.Volume, error)
}

// Held says whether volume id is held (a move's cutover): its node stages
// and publishes it for no pod (node.Mounts.Hold).
func (r *Reconciler) Held(id string) error {
	if !r.started.Load() {
		return nil
	}
	v, err := r.volumes.Get(id)
	if err != nil {
		return nil // not a volume object of this node: nothing holds it
	}
	if v.Spec.Held {
		return fmt.Errorf("volume %s is being moved to another node: no pod may use it here", id)
	}
	return nil
}

// Fetcher fills a destination with what another node serves for a volume
// (transfer.Client).
type Fetcher interface {
	Fill(ctx context.Context, node, volumeID string, dst transfer.Destination, report func(transfer.Progress)) error
	FillStream(ctx context.Context, node, volumeID string, start transfer.StartStream, report func(transfer.Progress)) error
}

// imports are the transfers this node runs, one per volume.
type imports struct {
	mu      sync.Mutex
	running map[string]*importRun
}

type importRun struct {
	cancel context.CancelFunc
	done   chan struct{}
}

// stop cancels id's transfer, if one runs, and waits until it has let go
// of the volume.
func (r *Reconciler) stopImport(ctx context.Context, id string) {
	r.imports.mu.Lock()
	run := r.imports.running[id]
	r.imports.mu.Unlock()
	if run == nil {
		return
	}
	run.cancel()
	select {
	case <-run.done:
	case <-ctx.Done():
	}
}

// startImport fills volume object v (Pending, its source on another node)
// in a goroutine of its own: a transfer takes as long as the data and the
// network do, and no worker waits for it. It tries again, going on from
// what it has, until the volume is made, the object goes, or the source
// refuses for good.
func (r *Reconciler) startImport(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	imp, ok := r.Local.(Importer)
	if !ok || r.Transfer == nil {
		return r.fail(ctx, v, fmt.Errorf("%w: this node does not receive volumes from other nodes (its transfer service is off)", pool.ErrUnsupported))
	}
	// The cache may not show yet that an import just failed (or was
	// made): what the API server says now decides.
	cur, err := r.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, v.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.DeletionTimestamp != nil || (cur.Status.Phase != "" && cur.Status.Phase != v1alpha1.VolumePending) {
		return nil
	}
	return r.startTransfer(ctx, cur, func(ctx context.Context, v *v1alpha1.PlinthVolume) { r.runImport(ctx, imp, v) })
}

// startSync brings Ready volume object v up to its spec.sync's volume in
// a goroutine of its own, as startImport fills one.
func (r *Reconciler) startSync(ctx context.Context, v *v1alpha1.PlinthVolume) error {
	imp, ok := r.Local.(Importer)
	if !ok || r.Transfer == nil {
		return r.syncFailed(ctx, v.Name, fmt.Errorf("%w: this node does not receive volumes from other nodes (its transfer service is off)", pool.ErrUnsupported))
	}
	return r.startTransfer(ctx, v, func(ctx context.Context, v *v1alpha1.PlinthVolume) { r.runSync(ctx, imp, v) })
}

func (r *Reconciler) startTransfer(ctx context.Context, v *v1alpha1.PlinthVolume, work func(context.Context, *v1alpha1.PlinthVolume)) error {
	r.imports.mu.Lock()
	defer r.imports.mu.Unlock()
	if r.imports.running == nil {
		r.imports.running = map[string]*importRun{}
	}
	if r.imports.running[v.Name] != nil {
		return nil
	}
	ictx, cancel := context.WithCancel(ctx)
	run := &importRun{cancel: cancel, done: make(chan struct{})}
	r.imports.running[v.Name] = run
	go func() {
		defer func() {
			cancel()
			r.imports.mu.Lock()
			delete(r.imports.running, v.Name)
			r.imports.mu.Unlock()
			close(run.done)
			r.queue.Add(v.Name)
		}()
		work(ictx, v.DeepCopy())
	}()
	return nil
}

// permanentTries is how many times in a row the source may refuse (the
// object does not name this node, the snapshot is gone) before the volume
// is failed: the serving node reads the objects live, so a refusal that
// lasts is the answer.
const permanentTries = 3

func (r *Reconciler) runImport(ctx context.Context, imp Importer, v *v1alpha1.PlinthVolume) {
	logger := klog.FromContext(ctx).WithValues("volumeID", v.Name, "sourceNode", v.Spec.Source.NodeName, "snapshotID", v.Spec.Source.SnapshotID)
	ctx = klog.NewContext(ctx, logger)
	want := pool.Volume{
		ID: v.Name, Name: v.Spec.VolumeName, CapacityBytes: v.Spec.CapacityBytes, Mode: poolMode(v.Spec.Mode),
		FsType: v.Spec.FsType, Thick: v.Spec.Thick, IOLimits: specMutable(v).IOLimits,
		Source: &pool.Source{SnapshotID: v.Spec.Source.SnapshotID, Node: v.Spec.Source.NodeName},
	}
	if v.Spec.Claim != "" {
		want.Parameters = map[string]string{volume.ParamOwner: v.Spec.Claim}
	}
	var made pool.Volume
	err := r.transferLoop(ctx, v.Name, func(ctx context.Context, report func(transfer.Progress)) error {
		var err error
		made, err = imp.Import(ctx, v.Spec.Pool, want, func(ctx context.Context, t pool.ImportTarget) error {
			if t.Format == pool.ImportStream {
				return r.Transfer.FillStream(ctx, v.Spec.Source.NodeName, v.Name, t.Receive, report)
			}
			if t.Format != pool.ImportImage {
				return fmt.Errorf("%w: import format %q", pool.ErrUnsupported, t.Format)
			}
			dst := &transfer.FileDestination{Image: t.Image, Progress: t.Progress, MaxSize: v.Spec.CapacityBytes}
			defer dst.Close()
			return r.Transfer.Fill(ctx, v.Spec.Source.NodeName, v.Name, dst, report)
		})
		return err
	})
	switch {
	case err == nil:
		r.imported(ctx, v.Name, made)
	case ctx.Err() == nil:
		r.failLatest(ctx, v.Name, err)
	}
}

// runSync brings Ready volume object v up to date from its spec.sync.
func (r *Reconciler) runSync(ctx context.Context, imp Importer, v *v1alpha1.PlinthVolume) {
	sync := v.Spec.Sync
	logger := klog.FromContext(ctx).WithValues("volumeID", v.Name, "sourceNode", sync.NodeName, "sourceVolumeID", sync.VolumeID)
	ctx = klog.NewContext(ctx, logger)
	err := r.transferLoop(ctx, v.Name, func(ctx context.Context, report func(transfer.Progress)) error {
		return imp.Sync(ctx, v.Name, func(ctx context.Context, t pool.ImportTarget) error {
			if t.Format == pool.ImportStream {
				return r.Transfer.FillStream(ctx, sync.NodeName, v.Name, t.Receive, report)
			}
			if t.Format == pool.ImportDevice {
				dst := &transfer.DeviceDestination{Open: t.OpenDevice, Progress: t.Progress}
				defer dst.Close()
				return r.Transfer.Fill(ctx, sync.NodeName, v.Name, dst, report)
			}
			if t.Format != pool.ImportImageDelta {
				return fmt.Errorf("%w: sync format %q", pool.ErrUnsupported, t.Format)
			}
			dst := &transfer.SyncDestination{Image: t.Image, Progress: t.Progress}
			defer dst.Close()
			return r.Transfer.Fill(ctx, sync.NodeName, v.Name, dst, report)
		})
	})
	switch {
	case err == nil:
		logger.Info("Volume brought up to date from another node")
		_ = r.settleAny(ctx, v.Name, v1alpha1.VolumeReady, func(cur *v1alpha1.PlinthVolume) (bool, error) {
			if cur.Spec.Sync == nil || cur.Spec.Sync.VolumeID != sync.VolumeID {
				return false, nil
			}
			cur.Status.SyncedVolumeID, cur.Status.Transfer = sync.VolumeID, nil
			cur.Status.Reason, cur.Status.Message = "", ""
			return true, nil
		})
	case ctx.Err() == nil:
		_ = r.syncFailed(ctx, v.Name, err)
	}
}

// syncFailed says on a Ready volume object why its sync will not happen
// (the move that asked for it rolls back).
func (r *Reconciler) syncFailed(ctx context.Context, id string, err error) error {
	klog.FromContext(ctx).Info("Sync refused", "volumeID", id, "err", err)
	return r.settleAny(ctx, id, v1alpha1.VolumeReady, func(cur *v1alpha1.PlinthVolume) (bool, error) {
		cur.Status.Reason, cur.Status.Message = v1alpha1.ReasonSyncFailed, err.Error()
		return true, nil
	})
}

// transferLoop runs attempt until it succeeds, ctx ends, or it fails for
// good (returned): a pool that refuses, or a source that keeps refusing
// (permanentTries). Other errors (the network, the source node restarting)
// are tried again, with backoff, going on from what was committed; the
// volume object's status.transfer says how far it is and why it waits.
func (r *Reconciler) transferLoop(ctx context.Context, id string, attempt func(context.Context, func(transfer.Progress)) error) error {
	logger := klog.FromContext(ctx)
	var lastWrite time.Time
	var last transfer.Progress
	report := func(p transfer.Progress, msg string) {
		if time.Since(lastWrite) < 5*time.Second && msg == "" && p.DoneBytes < p.TotalBytes {
			return
		}
		lastWrite = time.Now()
		r.writeTransfer(ctx, id, &v1alpha1.TransferProgress{DoneBytes: p.DoneBytes, TotalBytes: p.TotalBytes,
			BytesPerSecond: p.BytesPerSecond, UpdateTime: metav1.Now(), Message: msg})
	}
	refused := 0
	backoff := time.Second
	for {
		err := attempt(ctx, func(p transfer.Progress) {
			last = p
			report(p, "")
		})
		if err == nil || ctx.Err() != nil {
			return err
		}
		code := status.Code(errors.Unwrap(err))
		if s, ok := status.FromError(err); ok {
			code = s.Code()
		}
		switch {
		case errors.Is(err, pool.ErrNoSpace), errors.Is(err, pool.ErrInvalid), errors.Is(err, pool.ErrUnsupported),
			errors.Is(err, pool.ErrExists), errors.Is(err, pool.ErrOutOfRange), errors.Is(err, transfer.ErrUnsupported),
			errors.Is(err, transfer.ErrTooLarge):
			return err
		case code == codes.PermissionDenied || code == codes.NotFound:
			if refused++; refused >= permanentTries {
				if code == codes.NotFound {
					err = fmt.Errorf("%w: %w", pool.ErrNotFound, err)
				}
				return err
			}
		default:
			refused = 0
		}
		logger.Info("Transfer stopped; trying again", "err", err, "after", backoff)
		report(last, err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}

// imported publishes the pools' numbers and calls the volume Ready.
func (r *Reconciler) imported(ctx context.Context, id string, made pool.Volume) {
	for {
		err := r.settle(ctx, id, func(v *v1alpha1.PlinthVolume) (bool, error) {
			counted, err := r.Status.PublishAfter(ctx, made.CreatedAt)
			if err != nil {
				return false, err
			}
			v.Status = v1alpha1.VolumeStatus{Phase: v1alpha1.VolumeReady, CapacityBytes: made.CapacityBytes,
				ObservedGeneration: v.Generation, CountedIn: counted}
			return true, nil
		})
		if err == nil || ctx.Err() != nil {
			return
		}
		klog.FromContext(ctx).Error(err, "Recording a filled volume")
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// failLatest undoes what the import began (the record, the partial image
// and its progress) and fails the volume object with err.
func (r *Reconciler) failLatest(ctx context.Context, id string, err error) {
	if derr := r.Local.DeleteVolume(ctx, id); derr != nil && !errors.Is(derr, pool.ErrNotFound) {
		klog.FromContext(ctx).Error(derr, "Removing what a failed import began; the volume's delete removes it", "volumeID", id)
	}
	_ = r.settle(ctx, id, func(v *v1alpha1.PlinthVolume) (bool, error) {
		return true, r.fail(ctx, v, err)
	})
}

// writeTransfer writes a volume's transfer progress, if it still waits
// (for its content, or for a sync).
func (r *Reconciler) writeTransfer(ctx context.Context, id string, p *v1alpha1.TransferProgress) {
	change := func(v *v1alpha1.PlinthVolume) (bool, error) {
		v.Status.Transfer = p
		return true, nil
	}
	if err := r.settle(ctx, id, change); err != nil {
		return
	}
	_ = r.settleAny(ctx, id, v1alpha1.VolumeReady, func(v *v1alpha1.PlinthVolume) (bool, error) {
		if v.Spec.Sync == nil || v.Status.SyncedVolumeID == v.Spec.Sync.VolumeID {
			return false, nil
		}
		return change(v)
	})
}

// settleAny is settle for a volume object in phase.
func (r *Reconciler) settleAny(ctx context.Context, id string, phase v1alpha1.VolumePhase, change func(*v1alpha1.PlinthVolume) (bool, error)) error {
	cur, err := r.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, id, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.DeletionTimestamp != nil || cur.Status.Phase != phase {
		return nil
	}
	write, err := change(cur)
	if err != nil || !write {
		return err
	}
	return r.writeStatus(ctx, cur)
}

// settle applies change to the latest object of a volume that still
// waits to be made (Pending, not being deleted) and writes its status.
func (r *Reconciler) settle(ctx context.Context, id string, change func(*v1alpha1.PlinthVolume) (bool, error)) error {
	cur, err := r.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, id, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if cur.DeletionTimestamp != nil || (cur.Status.Phase != "" && cur.Status.Phase != v1alpha1.VolumePending) {
		return nil
	}
	write, err := change(cur)
	if err != nil || !write {
		return err
	}
	if cur.Status.Phase == v1alpha1.VolumeFailed {
		return nil // fail wrote it
	}
	return r.writeStatus(ctx, cur)
}

// fail writes the volume object's Failed status for err.
func (r *Reconciler) fail(ctx context.Context, v *v1alpha1.PlinthVolume, err error) error {
	v.Status.Phase = v1alpha1.VolumeFailed
	v.Status.Reason, v.Status.Message = reasonOf(err), err.Error()
	if errors.Is(err, pool.ErrNotFound) {
		v.Status.Reason = v1alpha1.ReasonNotFound
	}
	v.Status.ObservedGeneration = v.Generation
	r.event(v, v1.EventTypeWarning, "CreateFailed", err.Error())
	klog.FromContext(ctx).Info("Volume refused", "volumeID", v.Name, "err", err)
	return r.writeStatus(ctx, v)
}

// TransferSource is what this node serves to other nodes: the snapshot a
// volume object on another node names as its source, only to that node,
// and only while the volume waits to be made. The object is read from the
// API server at each call, not from a cache.
type TransferSource struct {
	NodeName string
	Plinth   versioned.Interface
	Local    Exporter
}

// Content answers node peer's transfer for its volume volumeID.
func (s *TransferSource) Content(ctx context.Context, peer, volumeID string) (*transfer.Content, error) {
	if err := pool.ValidateID("volume ID", volumeID); err != nil {
		return nil, fmt.Errorf("%w: %v", transfer.ErrNoContent, err)
	}
	v, err := s.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, volumeID, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: volume object %s", transfer.ErrNoContent, volumeID)
	}
	if err != nil {
		return nil, fmt.Errorf("read volume object %s: %w", volumeID, err)
	}
	if v.Status.Phase == v1alpha1.VolumeReady && v.Spec.Sync != nil {
		return s.syncContent(ctx, peer, v)
	}
	src := v.Spec.Source
	switch {
	case src == nil || src.NodeName != s.NodeName || src.SnapshotID == "":
		return nil, fmt.Errorf("%w: volume %s is not filled from a snapshot on node %s", transfer.ErrDenied, volumeID, s.NodeName)
	case v.Spec.NodeName != peer:
		return nil, fmt.Errorf("%w: volume %s is node %s's, not node %s's", transfer.ErrDenied, volumeID, v.Spec.NodeName, peer)
	case v.DeletionTimestamp != nil || (v.Status.Phase != "" && v.Status.Phase != v1alpha1.VolumePending):
		return nil, fmt.Errorf("%w: volume %s is %s, not waiting to be filled", transfer.ErrDenied, volumeID, v.Status.Phase)
	}
	f, snap, err := s.Local.ExportSnapshot(ctx, src.SnapshotID)
	if errors.Is(err, pool.ErrUnsupported) {
		return s.streamContent(ctx, v, src.SnapshotID)
	}
	if errors.Is(err, pool.ErrNotFound) {
		return nil, fmt.Errorf("%w: snapshot %s: %v", transfer.ErrNoContent, src.SnapshotID, err)
	}
	if errors.Is(err, pool.ErrUnsupported) {
		return nil, fmt.Errorf("%w: %v", transfer.ErrDenied, err)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	// The volume must be able to hold the snapshot as it is: its mode and
	// filesystem, and at least its size (the controller checked; this
	// node, which serves the bytes, checks again).
	switch {
	case snap.Mode != "" && snap.Mode != poolMode(v.Spec.Mode):
		f.Close()
		return nil, fmt.Errorf("%w: snapshot %s is of a %s volume, volume %s is %s", transfer.ErrDenied, snap.ID, snap.Mode, volumeID, v.Spec.Mode)
	case snap.Mode == "" && v.Spec.Mode != v1alpha1.ModeBlock:
		f.Close()
		return nil, fmt.Errorf("%w: snapshot %s's mode is unknown: it is restored as a block volume only", transfer.ErrDenied, snap.ID)
	case snap.Mode == pool.ModeFilesystem && snap.FsType != v.Spec.FsType:
		f.Close()
		return nil, fmt.Errorf("%w: snapshot %s holds %s, volume %s asks for %s", transfer.ErrDenied, snap.ID, snap.FsType, volumeID, v.Spec.FsType)
	case st.Size() > v.Spec.CapacityBytes:
		f.Close()
		return nil, fmt.Errorf("%w: snapshot %s is %d bytes, volume %s holds %d", transfer.ErrDenied, snap.ID, st.Size(), volumeID, v.Spec.CapacityBytes)
	}
	return &transfer.Content{ID: fmt.Sprintf("%s@%d/%d", snap.ID, snap.CreatedAt.UnixNano(), st.Size()), File: f, Size: st.Size()}, nil
}

// syncContent answers a sync: Ready volume object v on node peer is to
// be brought up to its spec.sync's volume, which must be this node's and
// held (no pod writes to it); only what differs from the base snapshot v
// was filled from is sent.
func (s *TransferSource) syncContent(ctx context.Context, peer string, v *v1alpha1.PlinthVolume) (*transfer.Content, error) {
	sync := v.Spec.Sync
	switch {
	case sync.NodeName != s.NodeName:
		return nil, fmt.Errorf("%w: volume %s is brought up to date from node %s, not %s", transfer.ErrDenied, v.Name, sync.NodeName, s.NodeName)
	case v.Spec.NodeName != peer:
		return nil, fmt.Errorf("%w: volume %s is node %s's, not node %s's", transfer.ErrDenied, v.Name, v.Spec.NodeName, peer)
	case v.DeletionTimestamp != nil || v.Status.SyncedVolumeID == sync.VolumeID:
		return nil, fmt.Errorf("%w: volume %s is not waiting for a sync", transfer.ErrDenied, v.Name)
	}
	if err := pool.ValidateID("volume ID", sync.VolumeID); err != nil {
		return nil, fmt.Errorf("%w: %v", transfer.ErrDenied, err)
	}
	src, err := s.Plinth.PlinthV1alpha1().PlinthVolumes().Get(ctx, sync.VolumeID, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("%w: volume object %s", transfer.ErrNoContent, sync.VolumeID)
	}
	if err != nil {
		return nil, fmt.Errorf("read volume object %s: %w", sync.VolumeID, err)
	}
	switch {
	case src.Spec.NodeName != s.NodeName:
		return nil, fmt.Errorf("%w: volume %s is not on node %s", transfer.ErrDenied, src.Name, s.NodeName)
	case !src.Spec.Held:
		return nil, fmt.Errorf("%w: volume %s is not held: pods may still write to it", transfer.ErrDenied, src.Name)
	case src.Spec.Mode != v.Spec.Mode || src.Spec.FsType != v.Spec.FsType:
		return nil, fmt.Errorf("%w: volume %s is %s %s, volume %s is %s %s", transfer.ErrDenied, src.Name, src.Spec.Mode, src.Spec.FsType, v.Name, v.Spec.Mode, v.Spec.FsType)
	}
	if sync.BaseSnapshotID == "" {
		return s.wholeSync(ctx, v, src.Name)
	}
	base, snap, err := s.Local.ExportSnapshot(ctx, sync.BaseSnapshotID)
	if errors.Is(err, pool.ErrUnsupported) {
		return s.streamSync(ctx, v, src.Name, sync.BaseSnapshotID)
	}
	if errors.Is(err, pool.ErrNotFound) {
		return nil, fmt.Errorf("%w: snapshot %s: %v", transfer.ErrNoContent, sync.BaseSnapshotID, err)
	}
	if err != nil {
		return nil, err
	}
	if snap.SourceVolumeID != src.Name {
		base.Close()
		return nil, fmt.Errorf("%w: snapshot %s is of volume %s, not %s", transfer.ErrDenied, snap.ID, snap.SourceVolumeID, src.Name)
	}
	f, vol, err := s.Local.ExportVolume(ctx, src.Name)
	if err != nil {
		base.Close()
		// In use (its pod has not let go yet) or locked: the receiver
		// tries again.
		return nil, err
	}
	st, err := f.Stat()
	if err == nil && st.Size() > v.Spec.CapacityBytes {
		err = fmt.Errorf("%w: volume %s is %d bytes, volume %s holds %d", transfer.ErrDenied, src.Name, st.Size(), v.Name, v.Spec.CapacityBytes)
	}
	if err != nil {
		f.Close()
		base.Close()
		return nil, err
	}
	return &transfer.Content{ID: fmt.Sprintf("sync:%s@%d/%d+%s@%d", vol.ID, st.ModTime().UnixNano(), st.Size(), snap.ID, snap.CreatedAt.UnixNano()),
		File: f, Base: base, Size: st.Size()}, nil
}

// streamContent answers volume object v's fill from snapshot id of a pool
// that sends streams (btrfs), with the same checks as an image's.
func (s *TransferSource) streamContent(ctx context.Context, v *v1alpha1.PlinthVolume, id string) (*transfer.Content, error) {
	send, snap, err := s.Local.SendSnapshot(ctx, id)
	switch {
	case errors.Is(err, pool.ErrNotFound):
		return nil, fmt.Errorf("%w: snapshot %s: %v", transfer.ErrNoContent, id, err)
	case errors.Is(err, pool.ErrUnsupported):
		return nil, fmt.Errorf("%w: %v", transfer.ErrDenied, err)
	case err != nil:
		return nil, err
	}
	var why error
	switch {
	case snap.Mode != pool.ModeFilesystem || v.Spec.Mode != v1alpha1.ModeFilesystem:
		why = fmt.Errorf("%w: snapshot %s (%s) is sent as a filesystem stream, volume %s is %s", transfer.ErrDenied, snap.ID, dash(string(snap.Mode)), v.Name, v.Spec.Mode)
	case snap.FsType != v.Spec.FsType:
		why = fmt.Errorf("%w: snapshot %s holds %s, volume %s asks for %s", transfer.ErrDenied, snap.ID, snap.FsType, v.Name, v.Spec.FsType)
	case send.Size > v.Spec.CapacityBytes:
		why = fmt.Errorf("%w: snapshot %s is of a %d-byte volume, volume %s holds %d", transfer.ErrDenied, snap.ID, send.Size, v.Name, v.Spec.CapacityBytes)
	}
	if why != nil {
		send.Close()
		return nil, why
	}
	return &transfer.Content{ID: send.ID, Size: v.Spec.CapacityBytes, Stream: send.Run, DataBytes: send.DataBytes, Release: send.Close}, nil
}

// streamSync answers volume object v's sync from held volume src of a
// pool that sends streams: what src holds now against the base snapshot
// v was filled from.
func (s *TransferSource) streamSync(ctx context.Context, v *v1alpha1.PlinthVolume, src, base string) (*transfer.Content, error) {
	send, vol, err := s.Local.SendVolume(ctx, src, base)
	switch {
	case errors.Is(err, pool.ErrNotFound):
		return nil, fmt.Errorf("%w: volume %s or snapshot %s: %v", transfer.ErrNoContent, src, base, err)
	case errors.Is(err, pool.ErrUnsupported), errors.Is(err, pool.ErrInvalid):
		return nil, fmt.Errorf("%w: %v", transfer.ErrDenied, err)
	case err != nil:
		// In use (its pod has not let go yet) or locked: the receiver
		// tries again.
		return nil, err
	}
	if vol.CapacityBytes > v.Spec.CapacityBytes {
		send.Close()
		return nil, fmt.Errorf("%w: volume %s is %d bytes, volume %s holds %d", transfer.ErrDenied, src, vol.CapacityBytes, v.Name, v.Spec.CapacityBytes)
	}
	return &transfer.Content{ID: "sync:" + send.ID, Size: v.Spec.CapacityBytes, Stream: send.Run, DataBytes: send.DataBytes, Release: send.Close}, nil
}

// wholeSync answers volume object v's sync that has no base (a whole
// disk, which has no snapshot: the move stopped the workload before
// anything was copied): all of held volume src, its chunks of zeros left
// out, read while nothing else has it.
func (s *TransferSource) wholeSync(ctx context.Context, v *v1alpha1.PlinthVolume, src string) (*transfer.Content, error) {
	f, vol, err := s.Local.ExportVolume(ctx, src)
	switch {
	case errors.Is(err, pool.ErrNotFound):
		return nil, fmt.Errorf("%w: volume %s: %v", transfer.ErrNoContent, src, err)
	case errors.Is(err, pool.ErrUnsupported):
		return nil, fmt.Errorf("%w: %v", transfer.ErrDenied, err)
	case err != nil:
		return nil, err // in use or locked: the receiver tries again
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil && size > v.Spec.CapacityBytes {
		err = fmt.Errorf("%w: volume %s is %d bytes, volume %s holds %d", transfer.ErrDenied, src, size, v.Name, v.Spec.CapacityBytes)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &transfer.Content{ID: fmt.Sprintf("whole:%s@%s/%d", vol.ID, vol.Disk, size), File: f, Size: size}, nil
}

// dash is s, or "-" when it is empty.
func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Peers reads what other nodes published for transfers from their
// PlinthNode objects. Answers are kept a while (a node's certificate
// changes only when its agent restarts) and reads of the API server are
// bounded: a handshake by a client that claims to be some node costs at
// most one read per peerTTL for that name, and all reads together at most
// lookupRate per second, whatever names clients make up.
type Peers struct {
	Plinth versioned.Interface

	mu    sync.Mutex
	known map[string]peerEntry
	limit *rate.Limiter
}

type peerEntry struct {
	peer transfer.Peer
	err  error
	at   time.Time
}

const (
	// peerTTL is how long a published certificate is taken as read;
	// missTTL how long a node that published none is.
	peerTTL = 30 * time.Second
	missTTL = 10 * time.Second
	// refreshAfter: a certificate that did not match is read again, at
	// most this often per node (its agent restarted with a new one).
	refreshAfter = 2 * time.Second
	lookupRate   = 2
	lookupBurst  = 3
)

// Peer returns node's published address and certificate.
func (p *Peers) Peer(ctx context.Context, node string) (transfer.Peer, error) {
	return p.lookup(ctx, node, false)
}

// Refresh reads node's published certificate again (one that did not
// match may have been replaced), unless it was read just now.
func (p *Peers) Refresh(ctx context.Context, node string) (transfer.Peer, error) {
	return p.lookup(ctx, node, true)
}

func (p *Peers) lookup(ctx context.Context, node string, refresh bool) (transfer.Peer, error) {
	p.mu.Lock()
	if p.known == nil {
		p.known = map[string]peerEntry{}
		p.limit = rate.NewLimiter(lookupRate, lookupBurst)
	}
	e, ok := p.known[node]
	p.mu.Unlock()
	if ok {
		age := time.Since(e.at)
		ttl := peerTTL
		if e.err != nil {
			ttl = missTTL
		}
		if age < ttl && (!refresh || age < refreshAfter) {
			return e.peer, e.err
		}
	}
	if !p.limit.Allow() {
		if ok {
			return e.peer, e.err // kept past its time rather than read again
		}
		return transfer.Peer{}, fmt.Errorf("node %s: too many lookups of published certificates; try again", node)
	}
	peer, err := p.read(ctx, node)
	if err != nil && ctx.Err() != nil {
		return peer, err // not an answer about the node
	}
	p.mu.Lock()
	if len(p.known) > 4096 {
		clear(p.known) // names made up by clients: forget them all
	}
	p.known[node] = peerEntry{peer: peer, err: err, at: time.Now()}
	p.mu.Unlock()
	return peer, err
}

func (p *Peers) read(ctx context.Context, node string) (transfer.Peer, error) {
	pn, err := p.Plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return transfer.Peer{}, fmt.Errorf("read PlinthNode %s: %w", node, err)
	}
	t := pn.Status.Transfer
	if t == nil || t.Certificate == "" {
		return transfer.Peer{}, fmt.Errorf("node %s publishes no transfer certificate (an older plinth, or its transfer service is off)", node)
	}
	der, err := transfer.ParseCertificatePEM(t.Certificate)
	if err != nil {
		return transfer.Peer{}, fmt.Errorf("node %s's transfer certificate: %w", node, err)
	}
	return transfer.Peer{Address: t.Address, Cert: der}, nil
}
