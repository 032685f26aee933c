package btrfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/durable"
	"github.com/plinth-dev/plinth/pkg/mount"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// Volumes go to and come from other nodes as btrfs send streams:
//
//   - the sending node runs `btrfs send` of a read-only snapshot (for a
//     move's final sync, `btrfs send -p <the move's snapshot>` of a
//     read-only snapshot of the held volume, taken in <pool>/exports for
//     that stream and deleted after it);
//   - the receiving node runs `btrfs receive -e --chroot` into
//     <pool>/imports/<volume id>, a directory of its own per volume, and
//     makes the volume a writable snapshot of the read-only subvolume it
//     received. That subvolume stays as the base of a final sync until the
//     volume is first attached (staged) or brought up to date;
//   - a final sync receives the incremental stream next to its base, then
//     swaps the volume for a writable snapshot of what it received
//     (renameat2 RENAME_EXCHANGE: the volume's path always holds one of
//     the two).
//
// A stream is not resumable: an attempt that breaks is started over, and
// whatever it left in the import directory is deleted first. Each stream
// is checked as it passes (sendstream.go), and a volume's level-1 group
// keeps the groups of the subvolumes it was received as (adoptedKey).

var (
	_ pool.Importer = (*Pool)(nil)
	_ pool.Syncer   = (*Pool)(nil)
	_ pool.Sender   = (*Pool)(nil)
)

// Only IDs that passed pool.ValidateID reach these joins.
func (p *Pool) importsDir() string         { return filepath.Join(p.dir, "imports") }
func (p *Pool) importDir(id string) string { return filepath.Join(p.importsDir(), id) }
func (p *Pool) exportDir() string          { return filepath.Join(p.dir, "exports") }

// streamLimit is the most a stream for a volume of capacity bytes may
// carry: its data (checked on its own: at most the capacity) and the
// metadata around it, which many small files or deep paths make large.
// A stream that runs past it is cut (a sender that would fill the pool).
func streamLimit(capacity int64) int64 {
	if capacity > 1<<50 {
		return 1 << 53
	}
	return 8*capacity + 1<<30
}

// BeginImport records v (its capacity reserved, state creating) and says
// how its stream is received.
func (p *Pool) BeginImport(ctx context.Context, v pool.Volume) (pool.ImportTarget, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", v.ID); err != nil {
		return pool.ImportTarget{}, pool.Volume{}, err
	}
	if v.Source == nil || v.Source.Node == "" || v.Source.SnapshotID == "" {
		return pool.ImportTarget{}, pool.Volume{}, fmt.Errorf("%w: an import names a snapshot on another node", pool.ErrInvalid)
	}
	if v.Mode != pool.ModeFilesystem || (v.FsType != "" && v.FsType != "btrfs") {
		return pool.ImportTarget{}, pool.Volume{}, fmt.Errorf("%w: btrfs pool %s makes btrfs filesystem volumes only", pool.ErrUnsupported, p.name)
	}
	v, _, err := p.index.BeginVolumeAfterDelete(ctx, p.name, v, p.committed, p.DeleteVolume)
	if err != nil {
		return pool.ImportTarget{}, pool.Volume{}, err
	}
	if err := os.MkdirAll(p.importsDir(), 0o700); err != nil {
		return pool.ImportTarget{}, pool.Volume{}, fmt.Errorf("create %s: %w", p.importsDir(), err)
	}
	return pool.ImportTarget{Format: pool.ImportStream, Receive: p.receiver(v.ID, v.CapacityBytes)}, v, nil
}

// FinishImport makes the volume a writable snapshot of the subvolume its
// stream made, bounds it and marks it ready. Idempotent.
func (p *Pool) FinishImport(ctx context.Context, id string) (pool.Volume, error) {
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Volume{}, err
	}
	if v.State == pool.StateReady {
		return v, nil
	}
	if v.State != pool.StateCreating || v.Source == nil || v.Source.Node == "" {
		return pool.Volume{}, fmt.Errorf("volume %s is %s, not an import in progress: %w", id, v.State, pool.ErrInvalid)
	}
	final := p.volPath(id)
	if _, err := os.Lstat(final); err != nil {
		got, err := p.imported(id)
		if err != nil {
			return pool.Volume{}, err
		}
		var recv *received
		for i := range got {
			if got[i].complete() {
				if recv != nil {
					return pool.Volume{}, fmt.Errorf("volume %s: more than one subvolume received: %w", id, pool.ErrInvalid)
				}
				recv = &got[i]
			}
		}
		if recv == nil || len(got) != 1 {
			return pool.Volume{}, fmt.Errorf("volume %s: the stream made %d entries, not one whole read-only subvolume: %w", id, len(got), pool.ErrInvalid)
		}
		if err := p.snapshotInto(ctx, filepath.Join(p.importDir(id), recv.name), final); err != nil {
			return pool.Volume{}, err
		}
	}
	// The subvolume the data came in as (the volume is a snapshot of it):
	// its group counts for the volume.
	vol, err := readSubvolInfo(final)
	if err != nil {
		return pool.Volume{}, err
	}
	got, err := p.imported(id)
	if err != nil {
		return pool.Volume{}, err
	}
	for _, e := range got {
		if e.complete() && e.info.UUID == vol.ParentUUID {
			v.Parameters = withAdopted(v, e.info.TreeID)
		}
	}
	sub := vol.TreeID
	// Bounded before the record says ready: nothing mounts it sooner.
	if err := p.boundSub(ctx, sub, v.CapacityBytes, adopted(v)); err != nil {
		return pool.Volume{}, fmt.Errorf("bound imported volume %s: %w", id, err)
	}
	v.Parameters = pool.WithParameter(v.Parameters, subvolKey, strconv.FormatUint(sub, 10))
	v.State, v.Blank = pool.StateReady, false
	if err := p.index.PutVolume(v); err != nil {
		return pool.Volume{}, err
	}
	klog.InfoS("Volume filled from another node", "pool", p.name, "volumeID", id, "node", v.Source.Node, "snapshotID", v.Source.SnapshotID)
	return v, nil
}

// snapshotInto makes final a writable snapshot of src, through final.tmp.
func (p *Pool) snapshotInto(ctx context.Context, src, final string) error {
	tmp := final + ".tmp"
	if err := p.deleteSubvolume(ctx, tmp); err != nil {
		return err
	}
	if _, err := p.run.Run(ctx, "btrfs", "subvolume", "snapshot", src, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, final); err != nil {
		_ = p.deleteSubvolume(ctx, tmp)
		return fmt.Errorf("rename subvolume: %w", err)
	}
	return durable.SyncDir(filepath.Dir(final))
}

// SyncTarget says how Ready volume id is brought up to date: an
// incremental stream received next to the base the volume was filled
// from. A volume that has no base (not filled from another node, or used
// since) cannot be.
func (p *Pool) SyncTarget(ctx context.Context, id string) (pool.ImportTarget, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return pool.ImportTarget{}, err
	}
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.ImportTarget{}, err
	}
	if v.State != pool.StateReady {
		return pool.ImportTarget{}, fmt.Errorf("volume %s is %s: %w", id, v.State, pool.ErrNotReady)
	}
	base, _, prev, err := p.syncState(id)
	if err != nil {
		return pool.ImportTarget{}, err
	}
	if base == nil {
		return pool.ImportTarget{}, fmt.Errorf("%w: volume %s keeps no subvolume it was filled from (it was not, or it has been used since)", pool.ErrUnsupported, id)
	}
	// After a crash between a sync's swap and its end, the volume is a
	// snapshot of what that sync received (base), on top of the first
	// copy (prev): the sender's stream is again on top of the first copy,
	// and FinishSync then only ends what the crash left.
	keep := []received{*base}
	if prev != nil {
		keep = append(keep, *prev)
	}
	return pool.ImportTarget{Format: pool.ImportStream, Receive: p.receiver(id, v.CapacityBytes, keep...)}, nil
}

// syncState finds, among what volume id's import directory holds, the
// base the volume is now a snapshot of, a whole subvolume received on top
// of that base (next), and the one the base was received on top of (prev);
// each nil when there is none.
func (p *Pool) syncState(id string) (base, next, prev *received, err error) {
	vol, err := readSubvolInfo(p.volPath(id))
	if err != nil {
		return nil, nil, nil, err
	}
	got, err := p.imported(id)
	if err != nil {
		return nil, nil, nil, err
	}
	for i := range got {
		if got[i].complete() && got[i].info.UUID == vol.ParentUUID {
			base = &got[i]
		}
	}
	if base == nil {
		return nil, nil, nil, nil
	}
	for i := range got {
		switch {
		case !got[i].complete():
		case got[i].info.ParentUUID == base.info.UUID:
			next = &got[i]
		case got[i].info.UUID == base.info.ParentUUID:
			prev = &got[i]
		}
	}
	return base, next, prev, nil
}

// FinishSync makes the volume a writable snapshot of the subvolume the
// sync received, then drops what was received. Idempotent: a crash at any
// point is finished by a retry.
func (p *Pool) FinishSync(ctx context.Context, id string) error {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return err
	}
	v, err := p.index.Volume(id)
	if err != nil {
		return err
	}
	if v.State != pool.StateReady {
		return fmt.Errorf("volume %s is %s: %w", id, v.State, pool.ErrNotReady)
	}
	final, other := p.volPath(id), p.volPath(id)+".sync"
	// What is at .sync is a snapshot a crash interrupted, or the volume
	// as it was before the swap: either goes.
	if err := p.deleteSubvolume(ctx, other); err != nil {
		return err
	}
	base, next, _, err := p.syncState(id)
	if err != nil {
		return err
	}
	if next != nil {
		// The data came in as the base and the sync's subvolume: both
		// groups count for the volume from now on.
		v.Parameters = withAdopted(v, base.info.TreeID, next.info.TreeID)
		if err := p.index.PutVolume(v); err != nil {
			return err
		}
		if _, err := p.run.Run(ctx, "btrfs", "subvolume", "snapshot", filepath.Join(p.importDir(id), next.name), other); err != nil {
			return err
		}
		sub, err := subvolID(other)
		if err == nil {
			err = p.boundSub(ctx, sub, v.CapacityBytes, adopted(v))
		}
		if err != nil {
			_ = p.deleteSubvolume(ctx, other)
			return fmt.Errorf("bound the synced volume %s: %w", id, err)
		}
		if err := unix.Renameat2(unix.AT_FDCWD, other, unix.AT_FDCWD, final, unix.RENAME_EXCHANGE); err != nil {
			_ = p.deleteSubvolume(ctx, other)
			return fmt.Errorf("swap volume %s for what the sync received: %w", id, err)
		}
		if err := durable.SyncDir(p.volDir()); err != nil {
			return err
		}
	}
	sub, err := subvolID(final)
	if err != nil {
		return err
	}
	if v.Parameters[subvolKey] != strconv.FormatUint(sub, 10) {
		v.Parameters = pool.WithParameter(v.Parameters, subvolKey, strconv.FormatUint(sub, 10))
		if err := p.index.PutVolume(v); err != nil {
			return err
		}
	}
	if err := p.deleteSubvolume(ctx, other); err != nil {
		return err
	}
	if err := p.dropImport(ctx, id); err != nil {
		return err
	}
	klog.InfoS("Volume brought up to date from another node", "pool", p.name, "volumeID", id)
	return nil
}

// received is an entry of an import directory.
type received struct {
	name string
	// info is the subvolume's (zero when the entry is not a subvolume).
	info subvolInfo
	sub  bool
}

// complete reports whether a whole stream made e: a read-only subvolume
// with a received UUID (btrfs receive sets both only at the stream's end).
func (e received) complete() bool {
	return e.sub && e.info.Flags&rootSubvolReadOnly != 0 && e.info.ReceivedUUID != [16]byte{}
}

// imported lists volume id's import directory (empty when it is missing).
func (p *Pool) imported(id string) ([]received, error) {
	if err := p.ownImportDir(id); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(p.importDir(id))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]received, 0, len(ents))
	for _, e := range ents {
		r := received{name: e.Name()}
		if e.Type().IsDir() {
			if info, err := readSubvolInfo(filepath.Join(p.importDir(id), e.Name())); err == nil {
				r.info, r.sub = info, true
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// ownImportDir makes sure that <pool>/imports and volume id's directory
// there, where they exist, are directories and not links to elsewhere
// (what an administrator or a restore of the pool's directory may have
// left): a link is removed, never followed.
func (p *Pool) ownImportDir(id string) error {
	for _, dir := range []string{p.importsDir(), p.importDir(id)} {
		st, err := os.Lstat(dir)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if st.IsDir() {
			continue
		}
		klog.InfoS("Removing what is not a directory where the pool keeps imports", "pool", p.name, "path", dir, "mode", st.Mode().String())
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("remove %s: %w", dir, err)
		}
	}
	return nil
}

// clearImport empties volume id's import directory but for keep: what an
// attempt that broke left, or a stream a malicious sender spread there.
func (p *Pool) clearImport(ctx context.Context, id string, keep ...received) error {
	got, err := p.imported(id)
	if err != nil {
		return err
	}
	for _, e := range got {
		if slices.ContainsFunc(keep, func(k received) bool { return k.name == e.name }) {
			continue
		}
		path := filepath.Join(p.importDir(id), e.name)
		if e.sub {
			err = p.deleteSubvolume(ctx, path)
		} else {
			err = os.RemoveAll(path)
		}
		if err != nil {
			return fmt.Errorf("clear import of %s: %w", id, err)
		}
	}
	return nil
}

// dropImport removes volume id's import directory and all it holds.
func (p *Pool) dropImport(ctx context.Context, id string) error {
	if err := p.clearImport(ctx, id); err != nil {
		return err
	}
	if err := os.Remove(p.importDir(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// receiver starts attempts to receive a stream for volume id into its
// import directory, keeping keep (a sync's base).
func (p *Pool) receiver(id string, capacity int64, keep ...received) func(context.Context) (io.WriteCloser, error) {
	return func(ctx context.Context) (io.WriteCloser, error) {
		piper, ok := p.run.(mount.Piper)
		if !ok {
			return nil, fmt.Errorf("%w: this runner cannot stream to btrfs receive", pool.ErrUnsupported)
		}
		if err := p.clearImport(ctx, id, keep...); err != nil {
			return nil, err
		}
		dir := p.importDir(id)
		if err := os.MkdirAll(p.importsDir(), 0o700); err != nil {
			return nil, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, err
		}
		var parents [][16]byte
		for _, k := range keep {
			parents = append(parents, k.info.ReceivedUUID)
		}
		if st, err := os.Lstat(dir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("import directory %s is not a directory: %w", dir, pool.ErrInvalid)
		}
		pr, pw := io.Pipe()
		rctx, cancel := context.WithCancel(ctx)
		w := &receiveWriter{pw: pw, cancel: cancel, left: streamLimit(capacity), dir: dir, done: make(chan error, 1),
			check: newStreamCheck(capacity, parents...)}
		go func() {
			// Confined to the import directory (chroot): paths in the
			// stream cannot reach anything else; -e ends at the stream's
			// end command.
			err := piper.Pipe(rctx, pr, nil, "btrfs", "receive", "-e", "--chroot", dir)
			pr.CloseWithError(errors.Join(err, errReceiveEnded))
			w.done <- err
		}()
		return w, nil
	}
}

var errReceiveEnded = errors.New("btrfs receive ended")

// receiveWriter feeds a btrfs receive.
type receiveWriter struct {
	pw     *io.PipeWriter
	cancel func()
	left   int64
	dir    string
	done   chan error
	once   sync.Once
	err    error
	check  *streamCheck
	bad    error
}

func (w *receiveWriter) Write(p []byte) (int, error) {
	if w.bad != nil {
		return 0, w.bad
	}
	if int64(len(p)) > w.left {
		w.pw.CloseWithError(errTooLong)
		w.bad = fmt.Errorf("%w: the stream carries more than a volume of this capacity can", pool.ErrNoSpace)
		return 0, w.bad
	}
	w.left -= int64(len(p))
	// Checked before receive sees it: a command plinth's senders never
	// make is never run.
	if err := w.check.feed(p); err != nil {
		w.pw.CloseWithError(err)
		w.bad = fmt.Errorf("%w: %w", pool.ErrInvalid, err)
		return 0, w.bad
	}
	return w.pw.Write(p)
}

var errTooLong = errors.New("stream too long")

// receiveGrace is how long btrfs receive may take after the stream's last
// byte: it has all but the last 64 KiB (the pipe) written by then.
const receiveGrace = 2 * time.Minute

// Close ends the stream and waits for btrfs receive: nil once it took a
// whole stream and what it wrote is on disk.
func (w *receiveWriter) Close() error {
	w.once.Do(func() {
		if w.bad == nil {
			w.bad = w.check.finish()
		}
		if w.bad != nil {
			w.pw.CloseWithError(w.bad)
			w.cancel()
		} else {
			w.pw.Close()
		}
		select {
		case w.err = <-w.done:
		case <-time.After(receiveGrace):
			w.cancel()
			w.err = errors.Join(fmt.Errorf("btrfs receive did not end %v after its stream", receiveGrace), <-w.done)
		}
		w.cancel()
		if w.bad != nil {
			w.err = w.bad
		}
		if w.err == nil {
			w.err = syncFS(w.dir)
		}
	})
	return w.err
}

func syncFS(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// SendSnapshot sends Ready snapshot id whole (btrfs send).
func (p *Pool) SendSnapshot(ctx context.Context, id string) (pool.Send, pool.Snapshot, error) {
	if err := pool.ValidateID("snapshot ID", id); err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	s, err := p.index.Snapshot(id)
	if err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	if s.State != pool.StateReady {
		return pool.Send{}, pool.Snapshot{}, fmt.Errorf("snapshot %s is %s: %w", id, s.State, pool.ErrNotFound)
	}
	path := p.snapPath(id)
	info, err := readSubvolInfo(path)
	if err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	if info.Flags&rootSubvolReadOnly == 0 {
		return pool.Send{}, pool.Snapshot{}, fmt.Errorf("snapshot %s is not read-only: %w", id, pool.ErrInvalid)
	}
	// Simple quotas count an extent for the subvolume that wrote it, not
	// for a snapshot that shares it: the source volume's usage is the
	// better guess of what the stream carries, while it exists.
	data := int64(0)
	if v, err := p.index.Volume(s.SourceVolumeID); err == nil {
		data = p.usedBy(v)
	}
	send, err := p.send(path, "", info, data)
	if err != nil {
		return pool.Send{}, pool.Snapshot{}, err
	}
	send.Size = s.SizeBytes
	return send, s, nil
}

// SendVolume sends what Ready volume id holds now that differs from its
// snapshot base: a read-only snapshot of the volume is taken for the
// stream (in <pool>/exports) and deleted by the send's Close.
func (p *Pool) SendVolume(ctx context.Context, id, base string) (pool.Send, pool.Volume, error) {
	if err := pool.ValidateID("volume ID", id); err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	if err := pool.ValidateID("snapshot ID", base); err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	v, err := p.index.Volume(id)
	if err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	if v.State != pool.StateReady {
		return pool.Send{}, pool.Volume{}, fmt.Errorf("volume %s is %s: %w", id, v.State, pool.ErrNotReady)
	}
	b, err := p.index.Snapshot(base)
	if err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	if b.State != pool.StateReady || b.SourceVolumeID != id {
		return pool.Send{}, pool.Volume{}, fmt.Errorf("snapshot %s is not a ready snapshot of volume %s: %w", base, id, pool.ErrInvalid)
	}
	if err := os.MkdirAll(p.exportDir(), 0o700); err != nil {
		return pool.Send{}, pool.Volume{}, err
	}
	path := filepath.Join(p.exportDir(), fmt.Sprintf("%s.%d", id, time.Now().UnixNano()))
	if _, err := p.run.Run(ctx, "btrfs", "subvolume", "snapshot", "-r", p.volPath(id), path); err != nil {
		return pool.Send{}, pool.Volume{}, fmt.Errorf("snapshot volume %s to send it: %w", id, err)
	}
	drop := func() {
		if err := p.deleteSubvolume(context.WithoutCancel(ctx), path); err != nil {
			klog.ErrorS(err, "Cannot delete a snapshot made to send a volume", "pool", p.name, "path", path)
		}
	}
	info, err := readSubvolInfo(path)
	var send pool.Send
	if err == nil {
		send, err = p.send(path, p.snapPath(base), info, p.usedBy(v))
	}
	if err != nil {
		drop()
		return pool.Send{}, pool.Volume{}, err
	}
	send.Size, send.Close = v.CapacityBytes, drop
	return send, v, nil
}

// usedBy is what volume v references now (0 when it cannot be read).
func (p *Pool) usedBy(v pool.Volume) int64 {
	sub, ok := readySubvol(v)
	if !ok {
		return 0
	}
	st, err := readState(p.dir)
	if err != nil {
		return 0
	}
	return st.used(sub)
}

// send is a btrfs send of the read-only subvolume at path (incremental on
// parent when set), carrying about data bytes.
func (p *Pool) send(path, parent string, info subvolInfo, data int64) (pool.Send, error) {
	piper, ok := p.run.(mount.Piper)
	if !ok {
		return pool.Send{}, fmt.Errorf("%w: this runner cannot stream from btrfs send", pool.ErrUnsupported)
	}
	args := []string{"send", "-q"}
	if parent != "" {
		args = append(args, "-p", parent)
	}
	args = append(args, path)
	return pool.Send{
		ID:        fmt.Sprintf("%x@%d", info.UUID, info.CTransID),
		DataBytes: data,
		Run: func(ctx context.Context, w io.Writer) error {
			return piper.Pipe(ctx, nil, w, "btrfs", args...)
		},
		Close: func() {},
	}, nil
}

// dropExports deletes the snapshots made to send volumes that a crash left.
func (p *Pool) dropExports(ctx context.Context) error {
	ents, err := os.ReadDir(p.exportDir())
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := p.deleteSubvolume(ctx, filepath.Join(p.exportDir(), e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// subvolInfo is struct btrfs_ioctl_get_subvol_info_args (504 bytes).
type subvolInfo struct {
	TreeID                         uint64
	Name                           [256]byte
	ParentID, DirID                uint64
	Generation, Flags              uint64
	UUID, ParentUUID, ReceivedUUID [16]byte
	CTransID, OTransID             uint64
	STransID, RTransID             uint64
	CTime, OTime, STime, RTime     [16]byte
	_                              [8]uint64
}

const (
	iocGetSubvolInfo   = 0x81f8943c // _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args)
	rootSubvolReadOnly = 1 << 0     // BTRFS_ROOT_SUBVOL_RDONLY, in the root item's flags
)

var _ = [1]struct{}{}[unsafe.Sizeof(subvolInfo{})-504]

// readSubvolInfo reads what the kernel says of the subvolume whose root is
// at path (not following a symlink there).
func readSubvolInfo(path string) (subvolInfo, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return subvolInfo{}, fmt.Errorf("open subvolume %s: %w", path, err)
	}
	defer unix.Close(fd)
	if _, err := subvolOf(fd); err != nil {
		return subvolInfo{}, fmt.Errorf("%s: %w", path, err)
	}
	var info subvolInfo
	if err := ioctl(fd, iocGetSubvolInfo, unsafe.Pointer(&info)); err != nil {
		return subvolInfo{}, fmt.Errorf("subvolume info of %s: %w", path, err)
	}
	return info, nil
}

// settleSync ends what a crash inside FinishSync left for volume v: the
// volume's path always holds the volume (the swap is one rename), so the
// record follows the path, and what is at <volume>.sync (a snapshot not yet
// swapped in, or the volume as it was before the swap) goes.
func (p *Pool) settleSync(ctx context.Context, v pool.Volume) (pool.Volume, error) {
	if v.State != pool.StateReady {
		return v, nil
	}
	other := p.volPath(v.ID) + ".sync"
	if _, err := os.Lstat(other); err == nil {
		if err := p.deleteSubvolume(ctx, other); err != nil {
			return v, err
		}
	}
	sub, err := subvolID(p.volPath(v.ID))
	if err != nil {
		return v, err
	}
	if id := strconv.FormatUint(sub, 10); v.Parameters[subvolKey] != id {
		klog.InfoS("Volume's record follows the subvolume a sync swapped in", "pool", p.name, "volumeID", v.ID, "was", v.Parameters[subvolKey], "now", id)
		v.Parameters = pool.WithParameter(v.Parameters, subvolKey, id)
		if err := p.index.PutVolume(v); err != nil {
			return v, err
		}
	}
	return v, nil
}
