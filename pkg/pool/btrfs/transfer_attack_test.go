package btrfs_test

// Attacks on the btrfs pool's transfers (transfer.go) from three seats:
// a malicious or buggy sending node, which controls every byte of the
// stream that `btrfs receive` runs; a tenant, who owns what a sent volume
// holds; and a careless administrator or a crash. Streams are built by
// hand (sendStream) in the btrfs send format, version 1 unless a command
// needs version 2.
//
// Each test says at its top whether the attack WORKS (the test fails
// until the product is fixed) or is HELD (the test passes and documents an
// attack that the code, btrfs receive or the kernel stops).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/btrfs"
)

// The btrfs send stream format (btrfs-progs kernel-shared/send.h).
const (
	cmdSubvol    = 1
	cmdSnapshot  = 2
	cmdMkfile    = 3
	cmdMkdir     = 4
	cmdMknod     = 5
	cmdMkfifo    = 6
	cmdSymlink   = 8
	cmdRename    = 9
	cmdLink      = 10
	cmdWrite     = 15
	cmdClone     = 16
	cmdTruncate  = 17
	cmdChmod     = 18
	cmdChown     = 19
	cmdEnd       = 21
	cmdFallocate = 23

	attrUUID          = 1
	attrCtransid      = 2
	attrIno           = 3
	attrSize          = 4
	attrMode          = 5
	attrUID           = 6
	attrGID           = 7
	attrRdev          = 8
	attrPath          = 15
	attrPathTo        = 16
	attrPathLink      = 17
	attrFileOffset    = 18
	attrData          = 19
	attrCloneUUID     = 20
	attrCloneCtransid = 21
	attrClonePath     = 22
	attrCloneOffset   = 23
	attrCloneLen      = 24
	attrFallocateMode = 25
)

type tlv struct {
	typ  uint16
	data []byte
}

func aStr(typ uint16, s string) tlv { return tlv{typ, []byte(s)} }
func aU64(typ uint16, v uint64) tlv { return tlv{typ, binary.LittleEndian.AppendUint64(nil, v)} }
func aU32(typ uint16, v uint32) tlv { return tlv{typ, binary.LittleEndian.AppendUint32(nil, v)} }
func aUUID(typ uint16, u [16]byte) tlv {
	return tlv{typ, append([]byte(nil), u[:]...)}
}

// sendStream builds a send stream by hand.
type sendStream struct {
	b       bytes.Buffer
	version uint32
}

func newStream(version uint32) *sendStream {
	s := &sendStream{version: version}
	s.b.WriteString("btrfs-stream\x00")
	s.b.Write(binary.LittleEndian.AppendUint32(nil, version))
	return s
}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// rawCRC32C is crc32c without the pre and post inversion, seed 0: what
// btrfs send and receive compute over a command.
func rawCRC32C(b []byte) uint32 {
	c := uint32(0)
	for _, x := range b {
		c = castagnoli[byte(c)^x] ^ (c >> 8)
	}
	return c
}

func (s *sendStream) cmd(c uint16, attrs ...tlv) *sendStream {
	var body []byte
	for _, a := range attrs {
		body = binary.LittleEndian.AppendUint16(body, a.typ)
		if !(s.version >= 2 && a.typ == attrData) {
			body = binary.LittleEndian.AppendUint16(body, uint16(len(a.data)))
		}
		body = append(body, a.data...)
	}
	hdr := make([]byte, 10)
	binary.LittleEndian.PutUint32(hdr[0:], uint32(len(body)))
	binary.LittleEndian.PutUint16(hdr[4:], c)
	all := append(hdr, body...)
	binary.LittleEndian.PutUint32(all[6:], rawCRC32C(all))
	s.b.Write(all)
	return s
}

func (s *sendStream) subvol(path string, uuid [16]byte, ctransid uint64) *sendStream {
	return s.cmd(cmdSubvol, aStr(attrPath, path), aUUID(attrUUID, uuid), aU64(attrCtransid, ctransid))
}

func (s *sendStream) snapshot(path string, uuid [16]byte, ctransid uint64, parent [16]byte, parentCtransid uint64) *sendStream {
	return s.cmd(cmdSnapshot, aStr(attrPath, path), aUUID(attrUUID, uuid), aU64(attrCtransid, ctransid),
		aUUID(attrCloneUUID, parent), aU64(attrCloneCtransid, parentCtransid))
}

var nextIno uint64 = 300

func (s *sendStream) mkfile(path string) *sendStream {
	nextIno++
	return s.cmd(cmdMkfile, aStr(attrPath, path), aU64(attrIno, nextIno))
}

func (s *sendStream) mkdir(path string) *sendStream {
	nextIno++
	return s.cmd(cmdMkdir, aStr(attrPath, path), aU64(attrIno, nextIno))
}

func (s *sendStream) write(path string, off uint64, data []byte) *sendStream {
	for len(data) > 0 {
		n := min(len(data), 48<<10)
		s.cmd(cmdWrite, aStr(attrPath, path), aU64(attrFileOffset, off), tlv{attrData, data[:n]})
		data, off = data[n:], off+uint64(n)
	}
	return s
}

func (s *sendStream) clone(path string, off, n uint64, src [16]byte, srcCtransid uint64, srcPath string, srcOff uint64) *sendStream {
	return s.cmd(cmdClone, aStr(attrPath, path), aU64(attrFileOffset, off), aU64(attrCloneLen, n),
		aUUID(attrCloneUUID, src), aU64(attrCloneCtransid, srcCtransid), aStr(attrClonePath, srcPath), aU64(attrCloneOffset, srcOff))
}

func (s *sendStream) end() []byte {
	s.cmd(cmdEnd)
	return s.b.Bytes()
}

func uuidOf(seed byte) [16]byte {
	var u [16]byte
	for i := range u {
		u[i] = seed + byte(i)
	}
	return u
}

// receiveStream feeds b to a new attempt of target's receive.
func receiveStream(ctx context.Context, target pool.ImportTarget, b []byte) error {
	w, err := target.Receive(ctx)
	if err != nil {
		return err
	}
	_, werr := w.Write(b)
	return errors.Join(werr, w.Close())
}

func beginImport(t *testing.T, p *btrfs.Pool, id string, capacity int64) pool.ImportTarget {
	t.Helper()
	target, _, err := p.BeginImport(context.Background(), pool.Volume{ID: id, CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "attacker", SnapshotID: "s-" + id}})
	must(t, err)
	return target
}

// importStream imports volume id from stream b and reports FinishImport's
// error (a receive that fails is fatal unless allowed).
func importStream(t *testing.T, p *btrfs.Pool, id string, capacity int64, b []byte) error {
	t.Helper()
	ctx := context.Background()
	if err := receiveStream(ctx, beginImport(t, p, id, capacity), b); err != nil {
		return fmt.Errorf("receive: %w", err)
	}
	_, err := p.FinishImport(ctx, id)
	return err
}

// subvolUUIDs reads a subvolume's UUID, received UUID and parent UUID.
func subvolUUIDs(t *testing.T, path string) (uuid, received, parent [16]byte) {
	t.Helper()
	out := btrfsCmd(t, "subvolume", "show", path)
	parse := func(v string) [16]byte {
		var u [16]byte
		b, err := hex.DecodeString(strings.ReplaceAll(v, "-", ""))
		if err == nil && len(b) == 16 {
			copy(u[:], b)
		}
		return u
	}
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(k) {
		case "UUID":
			uuid = parse(strings.TrimSpace(v))
		case "Received UUID":
			received = parse(strings.TrimSpace(v))
		case "Parent UUID":
			parent = parse(strings.TrimSpace(v))
		}
	}
	return
}

// victimVolume makes a ready volume holding a secret file.
func victimVolume(t *testing.T, p *btrfs.Pool, dir, id string) []byte {
	t.Helper()
	_, err := p.CreateVolume(context.Background(), pool.Volume{ID: id, CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	secret := bytes.Repeat([]byte("TOP SECRET of "+id+"\n"), 8192/len("TOP SECRET of "+id+"\n")+1)[:8192]
	must(t, os.WriteFile(filepath.Join(dir, "volumes", id, "secret"), secret, 0o600))
	syncFs(t, dir)
	return secret
}

// The encoder itself: a hand-built stream imports as a volume with what
// it wrote (so a failure elsewhere is the attack's, not the encoder's).
func TestAttackStreamEncoder(t *testing.T) {
	dst, dstDir := newPool(t, "")
	data := bytes.Repeat([]byte("abcd"), 30000)
	s := newStream(1).subvol("x", uuidOf(1), 7).mkfile("f").write("f", 0, data)
	must(t, importStream(t, dst, "enc", 16<<20, s.end()))
	got, err := os.ReadFile(filepath.Join(dstDir, "volumes/enc/f"))
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatalf("volume holds %d bytes, want the %d written", len(got), len(data))
	}
}

// FIXED, was WORKS (critical). A clone command names its source by a subvolume's
// received UUID and a path inside it; btrfs receive looks the UUID up on
// the whole filesystem and opens "<that subvolume's path from the
// filesystem's top>/<clone path>" relative to the filesystem's mount,
// which lies outside the --chroot. A clone path with ".." then reaches any
// file on the pool's filesystem: another tenant's volume included. The
// sender only needs one subvolume outside this import's directory whose
// received UUID it knows: the base of any earlier import it sent that is
// not yet attached (that UUID is its own snapshot's, or one it made up).
//
// Subtests "import" and "sync via another import" (a move's final sync
// whose clone names another import's base): WORK. Subtest "sync" (the
// clone source is the sync's own base, inside the chroot): HELD, as ".."
// stops at the chroot's root on the way up.
func TestAttackCloneEscapesImportDir(t *testing.T) {
	const escape = "../../../volumes/victim/secret" // from imports/<id>/<subvol>
	for _, flow := range []string{"import", "sync", "sync via another import"} {
		t.Run(flow, func(t *testing.T) {
			ctx := context.Background()
			dst, dstDir := newPool(t, "")
			secret := victimVolume(t, dst, dstDir, "victim")
			// An earlier, innocent-looking import by the same sender: its
			// received UUID is one the sender chose.
			baseUUID := uuidOf(0x40)
			must(t, importStream(t, dst, "a1", 16<<20, newStream(1).subvol("base", baseUUID, 5).mkfile("hello").end()))
			var target string
			switch flow {
			case "import":
				s := newStream(1).subvol("x", uuidOf(0x60), 9).mkfile("loot").
					clone("loot", 0, uint64(len(secret)), baseUUID, 5, escape, 0)
				if err := importStream(t, dst, "a2", 16<<20, s.end()); err != nil {
					t.Logf("import refused: %v", err)
					return
				}
				target = filepath.Join(dstDir, "volumes/a2/loot")
			case "sync", "sync via another import":
				from := baseUUID
				if flow != "sync" {
					from = uuidOf(0x48)
					must(t, importStream(t, dst, "a0", 16<<20, newStream(1).subvol("base", from, 5).mkfile("hello").end()))
				}
				st, err := dst.SyncTarget(ctx, "a1")
				must(t, err)
				s := newStream(1).snapshot("next", uuidOf(0x70), 6, baseUUID, 5).mkfile("loot").
					clone("loot", 0, uint64(len(secret)), from, 5, escape, 0)
				if err := receiveStream(ctx, st, s.end()); err != nil {
					t.Logf("sync refused: %v", err)
					return
				}
				if err := dst.FinishSync(ctx, "a1"); err != nil {
					t.Logf("sync refused: %v", err)
					return
				}
				target = filepath.Join(dstDir, "volumes/a1/loot")
			}
			got, err := os.ReadFile(target)
			if err == nil && bytes.Equal(got, secret) {
				t.Errorf("the %s stream cloned another volume's file (volumes/victim/secret) into the imported volume: %q...", flow, got[:24])
			}
		})
	}
}

// FIXED, was WORKS (lower: the sender must know a UUID on the receiver). A snapshot
// command names its parent by UUID; btrfs receive looks it up by received
// UUID, then by UUID, on the whole filesystem, and snapshots whatever it
// finds into the import directory. FinishImport takes the result (one
// read-only subvolume with a received UUID) although a whole stream never
// has a parent: the volume becomes a copy of a subvolume the stream never
// carried. UUIDs leak to senders: a snapshot this node sent (Send.ID is
// "<uuid>@<ctransid>"), or a base received from a third node.
func TestAttackSnapshotOfForeignSubvolume(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	secret := victimVolume(t, dst, dstDir, "victim")
	_, err := dst.CreateSnapshot(ctx, pool.Snapshot{ID: "victim-snap", SourceVolumeID: "victim"})
	must(t, err)
	// The node sent this snapshot once (a restore elsewhere): the
	// attacker learned its UUID from the send's ID or its stream.
	send, _, err := dst.SendSnapshot(ctx, "victim-snap")
	must(t, err)
	uuidHex, _, _ := strings.Cut(send.ID, "@")
	var victimUUID [16]byte
	b, err := hex.DecodeString(uuidHex)
	must(t, err)
	copy(victimUUID[:], b)
	s := newStream(1).snapshot("x", uuidOf(0x80), 3, victimUUID, 0)
	if err := importStream(t, dst, "stolen", 64<<20, s.end()); err != nil {
		t.Logf("refused: %v", err)
		return
	}
	got, err := os.ReadFile(filepath.Join(dstDir, "volumes/stolen/secret"))
	if err == nil && bytes.Equal(got, secret) {
		t.Errorf("a stream of two commands made volume 'stolen' a copy of snapshot victim-snap: FinishImport takes a received subvolume whose parent lies outside the import")
	}
}

// HELD. Paths in the stream cannot leave the import directory: btrfs
// receive runs chrooted there, so "..", absolute paths, symlinks written
// through, and a clone naming the stream's own subvolume stay inside;
// subvolume names with "/" or ".." are refused by the kernel; what lands
// next to the subvolume makes FinishImport refuse, and the next attempt
// or a delete removes it (a symlink there is removed, not followed).
func TestAttackPathEscapesHeld(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	secret := victimVolume(t, dst, dstDir, "victim")
	victimDir := filepath.Join(dstDir, "volumes/victim")
	before := tree(t, victimDir)
	outside := t.TempDir()
	must(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("keep"), 0o600))
	u := uuidOf(0x10)
	streams := map[string][]byte{
		"dotdot mkfile": newStream(1).subvol("x", u, 1).mkfile("../../../volumes/victim/pwned").end(),
		"absolute path": newStream(1).subvol("x", u, 1).mkfile("/" + dstDir + "/volumes/victim/pwned").end(),
		"write through absolute symlink": newStream(1).subvol("x", u, 1).
			cmd(cmdSymlink, aStr(attrPath, "l"), aU64(attrIno, 400), aStr(attrPathLink, victimDir)).
			write("l/secret", 0, []byte("overwritten")).end(),
		"write through relative symlink": newStream(1).subvol("x", u, 1).
			cmd(cmdSymlink, aStr(attrPath, "l"), aU64(attrIno, 400), aStr(attrPathLink, "../../../volumes/victim/secret")).
			write("l", 0, []byte("overwritten")).end(),
		"hardlink to outside": newStream(1).subvol("x", u, 1).
			cmd(cmdLink, aStr(attrPath, "h"), aStr(attrPathLink, "../../../volumes/victim/secret")).end(),
		"rename outside in": newStream(1).subvol("x", u, 1).
			cmd(cmdRename, aStr(attrPath, "../../../volumes/victim/secret"), aStr(attrPathTo, "stolen")).end(),
		"clone own subvolume with dotdot": newStream(1).subvol("x", u, 1).mkfile("loot").
			clone("loot", 0, 8192, u, 1, "../../../volumes/victim/secret", 0).end(),
		"subvolume named ..":   newStream(1).subvol("..", u, 1).end(),
		"subvolume with slash": newStream(1).subvol("../../volumes/evil", u, 1).end(),
		"symlink next to the subvolume": newStream(1).subvol("x", u, 1).
			cmd(cmdSymlink, aStr(attrPath, "../evil"), aU64(attrIno, 400), aStr(attrPathLink, outside)).end(),
		"second subvolume": newStream(1).subvol("x", u, 1).subvol("y", uuidOf(0x20), 1).end(),
		"no end command":   newStream(1).subvol("x", u, 1).mkfile("f").b.Bytes(),
		"end command cut":  func() []byte { b := newStream(1).subvol("x", u, 1).end(); return b[:len(b)-3] }(),
	}
	i := 0
	for name, b := range streams {
		i++
		id := fmt.Sprintf("p%d", i)
		err := importStream(t, dst, id, 16<<20, b)
		if err == nil {
			t.Logf("%s: imported (checking it took nothing from outside)", name)
			if got, err := os.ReadFile(filepath.Join(dstDir, "volumes", id, "loot")); err == nil && bytes.Contains(got, secret[:16]) {
				t.Errorf("%s: the volume holds the victim's secret", name)
			}
			if name == "second subvolume" || name == "no end command" || name == "end command cut" {
				t.Errorf("%s: FinishImport took it", name)
			}
		} else {
			t.Logf("%s: refused: %v", name, firstLine(err))
		}
		must(t, dst.DeleteVolume(ctx, id))
	}
	if after := tree(t, victimDir); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the victim volume changed: %v -> %v", before, after)
	}
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Errorf("a file outside the pool went: %v", err)
	}
	for _, p := range []string{"volumes/evil", "imports/pwned", "pwned"} {
		if _, err := os.Lstat(filepath.Join(dstDir, p)); err == nil {
			t.Errorf("%s exists", p)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dstDir, "imports")); len(ents) != 0 {
		t.Errorf("imports keeps %d entries after the deletes", len(ents))
	}
}

// firstLine is an error's first line, or the line of btrfs receive's
// error where it has one.
func firstLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	if i := strings.Index(err.Error(), "ERROR: "); i >= 0 {
		s, _, _ = strings.Cut(err.Error()[i:], "\n")
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

func freeBytes(t *testing.T, dir string) int64 {
	t.Helper()
	syncFs(t, dir)
	var fs unix.Statfs_t
	must(t, unix.Statfs(dir, &fs))
	return int64(fs.Bavail) * fs.Bsize
}

// FIXED, was WORKS (high: any sender fills the receiving pool). A version 2 stream
// may carry fallocate commands: a few hundred bytes make btrfs receive
// allocate any amount of real space. The stream's length bound (2 x
// capacity + 64 MiB) counts bytes of stream, not bytes on disk, and
// nothing bounds the import directory while it is received: here a
// 1 MiB volume takes 512 MiB of the pool, and FinishImport makes it a
// ready volume.
func TestAttackFallocateFillsPool(t *testing.T) {
	dst, dstDir := newPool(t, "")
	free := freeBytes(t, dstDir)
	const size = 512 << 20
	s := newStream(2).subvol("x", uuidOf(0x30), 1).mkfile("f").
		cmd(cmdFallocate, aStr(attrPath, "f"), aU32(attrFallocateMode, 0), aU64(attrFileOffset, 0), aU64(attrSize, size))
	b := s.end()
	err := importStream(t, dst, "fat", 1<<20, b)
	used := free - freeBytes(t, dstDir)
	t.Logf("stream of %d bytes; FinishImport: %v; pool space taken: %d MiB", len(b), err, used>>20)
	if used > 2*(1<<20)+64<<20 {
		t.Errorf("a %d-byte stream for a 1 MiB volume took %d MiB of the pool (finished: %v)", len(b), used>>20, err == nil)
	}
	if err == nil {
		st, err := dst.Stats(context.Background())
		must(t, err)
		t.Logf("Stats after: free %d MiB, committed %d MiB", st.FreeBytes>>20, st.CommittedBytes>>20)
	}
}

// FIXED, was WORKS (medium). A stream within its length bound may carry up to
// 2 x capacity + 64 MiB of data: FinishImport makes a volume that holds
// 3x its capacity here, and with simple quotas the data it received stays
// charged to the base it was received as, not to the volume's group, so
// Usage says nearly nothing is used.
func TestAttackImportOverCapacity(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	const capacity = 16 << 20
	data := bytes.Repeat([]byte{0xa5, 1, 2, 3}, 12<<20) // 48 MiB
	s := newStream(1).subvol("x", uuidOf(0x31), 1).mkfile("f").write("f", 0, data)
	if err := importStream(t, dst, "over", capacity, s.end()); err != nil {
		t.Logf("refused: %v", err)
		return
	}
	syncFs(t, dstDir)
	u, _, err := dst.Usage(ctx, "over")
	must(t, err)
	t.Logf("Usage: used %d MiB of %d MiB", u.UsedBytes>>20, u.TotalBytes>>20)
	t.Errorf("FinishImport made a %d MiB volume that holds %d MiB (Usage says %d MiB used)", capacity>>20, len(data)>>20, u.UsedBytes>>20)
}

// FIXED, was WORKS (high: a tenant's limit does not hold). With simple quotas the
// data a volume was received with stays charged to the base subvolume it
// was received as; Attach deletes that base, whose qgroup then lingers
// (the kernel keeps a deleted subvolume's qgroup while its extents live)
// outside the volume's group. The received data so counts against no
// volume's limit, ever: the tenant keeps it and writes its whole capacity
// on top.
func TestAttackReceivedDataUncounted(t *testing.T) {
	ctx := context.Background()
	src, srcDir, dst, dstDir := twoPools(t)
	const capacity = limit // 64 MiB
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	must(t, os.WriteFile(filepath.Join(srcDir, "volumes/vol/old"), bytes.Repeat([]byte{7, 1, 2, 3}, 12<<20), 0o644)) // 48 MiB
	_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "s", SourceVolumeID: "vol"})
	must(t, err)
	send, _, err := src.SendSnapshot(ctx, "s")
	must(t, err)
	target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "r", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "s"}})
	must(t, err)
	must(t, sendInto(t, send, target))
	v, err := dst.FinishImport(ctx, "r")
	must(t, err)
	view := tenantView(t, dst, "r") // Attach: the base goes
	if _, err := dst.Stats(ctx); err != nil {
		t.Fatal(err)
	}
	// 48 MiB are there; 48 more would make 96 MiB in a 64 MiB volume.
	out, werr := tenantWrite(filepath.Join(view, "new"), 48)
	syncFs(t, dstDir)
	u, _, err := dst.Usage(ctx, "r")
	must(t, err)
	q, _ := btrfs.ReadQgroups(dstDir, subvolOf(t, v))
	t.Logf("tenant's write: %v %s; Usage %d MiB of %d MiB; group referenced %d MiB", werr, strings.TrimSpace(out), u.UsedBytes>>20, u.TotalBytes>>20, q.Referenced>>20)
	if werr == nil {
		t.Errorf("a %d MiB volume holds 96 MiB: the 48 MiB it was received with count against no limit (Usage says %d MiB)", capacity>>20, u.UsedBytes>>20)
	}
}

// HELD. A sender tries to leave in the import directory what clearing it
// (os.RemoveAll of a plain directory) cannot remove, which would fail
// every new attempt, Attach and DeleteVolume from then on: a read-only
// subvolume inside a plain directory. The kernel refuses to move a
// read-only subvolume (EROFS), and btrfs receive makes a subvolume
// read-only only at its own path, at the chroot's top; a writable one
// moved into a directory is emptied and removed (rmdir deletes an empty
// subvolume).
func TestAttackUndeletableImportHeld(t *testing.T) {
	streams := map[string][]byte{
		"read-only subvolume moved": newStream(1).subvol("a", uuidOf(0x50), 1).mkfile("f").write("f", 0, []byte("x")).
			subvol("b", uuidOf(0x51), 1).mkdir("../d").
			cmd(cmdRename, aStr(attrPath, "../a"), aStr(attrPathTo, "../d/a")).end(),
		"writable subvolume moved": newStream(1).subvol("a", uuidOf(0x52), 1).mkfile("f").write("f", 0, []byte("x")).
			mkdir("../d").cmd(cmdRename, aStr(attrPath, "../a"), aStr(attrPathTo, "../d/a")).end(),
	}
	for name, b := range streams {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			dst, dstDir := newPool(t, "")
			target := beginImport(t, dst, "stuck", 16<<20)
			err := receiveStream(ctx, target, b)
			t.Logf("receive: %v", err)
			if _, err := dst.FinishImport(ctx, "stuck"); err == nil {
				t.Fatal("FinishImport took it")
			}
			if w, err := target.Receive(ctx); err != nil {
				t.Errorf("a new attempt of the import cannot start: %v", firstLine(err))
			} else {
				w.Close()
			}
			if err := dst.DeleteVolume(ctx, "stuck"); err != nil {
				t.Errorf("the volume cannot be deleted: %v", firstLine(err))
			}
			if _, err := os.Lstat(filepath.Join(dstDir, "imports/stuck")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("imports/stuck is left: %v", err)
			}
		})
	}
}

// FIXED, was WORKS (medium, needs a careless administrator or another bug): when
// <pool>/imports/<id> is a symlink, a receive attempt, Attach or a delete
// lists the symlink's target and deletes what it holds (os.ReadDir and
// os.RemoveAll follow it) before the check that it is a directory: here
// another volume's files.
func TestAttackImportDirSymlink(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	victimVolume(t, dst, dstDir, "victim")
	target := beginImport(t, dst, "x", 16<<20)
	link := filepath.Join(dstDir, "imports/x")
	_ = os.RemoveAll(link)
	must(t, os.Symlink(filepath.Join(dstDir, "volumes/victim"), link))
	w, err := target.Receive(ctx)
	t.Logf("receive: %v", err)
	if err == nil {
		_ = w.Close() // no stream: the attempt fails, and receive is gone
	}
	if _, err := os.Stat(filepath.Join(dstDir, "volumes/victim/secret")); err != nil {
		t.Errorf("a receive attempt with imports/x a symlink to volumes/victim deleted the victim's file: %v", err)
	}
	// The same through a delete.
	must(t, os.WriteFile(filepath.Join(dstDir, "volumes/victim/secret2"), []byte("s"), 0o600))
	_ = dst.DeleteVolume(ctx, "x")
	if _, err := os.Stat(filepath.Join(dstDir, "volumes/victim/secret2")); err != nil {
		t.Errorf("deleting volume x with imports/x a symlink to volumes/victim deleted the victim's file: %v", err)
	}
}

// FIXED, was WORKS (low, bounded by the transfer's idle timer): a stream can make
// btrfs receive block for ever: a clone whose source is a FIFO in the
// stream's own subvolume blocks in open(2). Close waits for the receive
// without a bound of its own, until the caller's context ends.
func TestAttackReceiveHangs(t *testing.T) {
	dst, _ := newPool(t, "")
	u := uuidOf(0x90)
	s := newStream(1).subvol("x", u, 1).mkfile("f").cmd(cmdMkfifo, aStr(attrPath, "p"), aU64(attrIno, 500)).
		clone("f", 0, 4096, u, 1, "p", 0)
	target := beginImport(t, dst, "hang", 16<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	start := time.Now()
	err := receiveStream(ctx, target, s.end())
	took := time.Since(start)
	t.Logf("receive ended after %v: %v", took.Round(time.Millisecond), err)
	if took > 5*time.Second {
		t.Errorf("Close of a %d-byte stream's receive blocked %v, until the context ended", s.b.Len(), took.Round(time.Second))
	}
	must(t, dst.DeleteVolume(context.Background(), "hang"))
}

// A move's sync stream and the state a crash leaves between FinishSync's
// steps, made by hand.
func syncedPools(t *testing.T) (src *btrfs.Pool, srcDir string, dst *btrfs.Pool, dstDir string, send func() pool.Send) {
	t.Helper()
	ctx := context.Background()
	src, srcDir, dst, dstDir = twoPools(t)
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	fill(t, filepath.Join(srcDir, "volumes/vol"), 'c')
	_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "s", SourceVolumeID: "vol"})
	must(t, err)
	full, _, err := src.SendSnapshot(ctx, "s")
	must(t, err)
	target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "m", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "s"}})
	must(t, err)
	must(t, sendInto(t, full, target))
	_, err = dst.FinishImport(ctx, "m")
	must(t, err)
	must(t, os.WriteFile(filepath.Join(srcDir, "volumes/vol/after"), []byte("after the snapshot"), 0o644))
	send = func() pool.Send {
		d, _, err := src.SendVolume(ctx, "vol", "s")
		must(t, err)
		t.Cleanup(d.Close)
		return d
	}
	return
}

// crashAfterSwap does FinishSync's steps up to the swap by hand: the
// volume's path holds the synced snapshot, .sync the old volume, and
// the record still names the old subvolume.
func crashAfterSwap(t *testing.T, dstDir string) {
	t.Helper()
	dir := filepath.Join(dstDir, "imports/m")
	ents, err := os.ReadDir(dir)
	must(t, err)
	vol := filepath.Join(dstDir, "volumes/m")
	_, _, base := subvolUUIDs(t, vol)
	next := ""
	for _, e := range ents {
		if _, _, parent := subvolUUIDs(t, filepath.Join(dir, e.Name())); parent == base {
			next = e.Name()
		}
	}
	if next == "" {
		t.Fatal("no synced subvolume to swap in")
	}
	btrfsCmd(t, "subvolume", "snapshot", filepath.Join(dir, next), vol+".sync")
	// Bounded as FinishSync bounds it, before the swap.
	sub, err := btrfs.SubvolID(vol + ".sync")
	must(t, err)
	g := fmt.Sprintf("1/%d", sub)
	btrfsCmd(t, "qgroup", "create", g, dstDir)
	btrfsCmd(t, "qgroup", "assign", fmt.Sprintf("0/%d", sub), g, dstDir)
	btrfsCmd(t, "qgroup", "limit", "67108864", g, dstDir)
	syncFs(t, dstDir)
	must(t, unix.Renameat2(unix.AT_FDCWD, vol+".sync", unix.AT_FDCWD, vol, unix.RENAME_EXCHANGE))
}

// Crashes between FinishSync's steps (the node restarts: the pool is
// opened again). "retry FinishSync": HELD. "retry the whole sync" (what
// node.Sync does: SyncTarget, the stream again, FinishSync): WORKS
// (medium-low): the crash made the synced subvolume look like the base,
// SyncTarget deletes the real base, and the stream (parent: the move's
// snapshot) no longer finds its parent, on every retry. "attach instead"
// (the move given up, the volume used here): WORKS (low-medium: only
// where something other than FinishSync comes next): the record
// names the old subvolume, now at .sync, which nothing deletes: its
// space is held outside any volume, and the volume's usage and expansion
// read and change the wrong group.
func TestAttackFinishSyncCrashAfterSwap(t *testing.T) {
	for _, next := range []string{"retry FinishSync", "retry the whole sync", "attach instead"} {
		t.Run(next, func(t *testing.T) {
			ctx := context.Background()
			_, srcDir, dst, dstDir, send := syncedPools(t)
			st, err := dst.SyncTarget(ctx, "m")
			must(t, err)
			must(t, sendInto(t, send(), st))
			crashAfterSwap(t, dstDir)
			dst = openPool(t, dstDir)
			switch next {
			case "retry FinishSync":
				must(t, dst.FinishSync(ctx, "m"))
			case "retry the whole sync":
				st, err := dst.SyncTarget(ctx, "m")
				if err == nil {
					err = sendInto(t, send(), st)
				}
				if err == nil {
					err = dst.FinishSync(ctx, "m")
				}
				if err != nil {
					t.Errorf("after a crash between the swap and the record, the retried sync fails: %v", firstLine(err))
					return
				}
			case "attach instead":
				_, err := dst.Attach(ctx, "m")
				must(t, err)
			}
			sameTree(t, "after the crash", filepath.Join(srcDir, "volumes/vol"), filepath.Join(dstDir, "volumes/m"))
			checkBound(t, dst, dstDir, "m", 64<<20)
			if _, err := os.Lstat(filepath.Join(dstDir, "volumes/m.sync")); err == nil {
				t.Errorf("volumes/m.sync (the volume before the sync, a whole copy) is left")
			}
		})
	}
}

// HELD. A crash inside FinishImport, at each step (snapshot made at
// .tmp; renamed but not yet bounded), is finished by FinishImport again,
// after the pool reopens; a delete during a half-done import removes
// what it received.
func TestAttackFinishImportCrashHeld(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	b := newStream(1).subvol("x", uuidOf(0x21), 1).mkfile("f").write("f", 0, []byte("data")).end()
	for _, step := range []string{"tmp made", "renamed, unbounded"} {
		id := strings.ReplaceAll(strings.ReplaceAll(step, " ", ""), ",", "")
		must(t, receiveStream(ctx, beginImport(t, dst, id, 16<<20), b))
		vol := filepath.Join(dstDir, "volumes", id)
		btrfsCmd(t, "subvolume", "snapshot", filepath.Join(dstDir, "imports", id, "x"), vol+".tmp")
		if step != "tmp made" {
			must(t, os.Rename(vol+".tmp", vol))
		}
		dst = openPool(t, dstDir)
		_, err := dst.FinishImport(ctx, id)
		must(t, err)
		checkBound(t, dst, dstDir, id, 16<<20)
		if got, err := os.ReadFile(filepath.Join(vol, "f")); err != nil || string(got) != "data" {
			t.Errorf("%s: volume holds %q, %v", step, got, err)
		}
	}
	// Deleted half way.
	target := beginImport(t, dst, "half", 16<<20)
	w, err := target.Receive(ctx)
	must(t, err)
	_, _ = w.Write(b[:len(b)/2])
	_ = w.Close()
	must(t, dst.DeleteVolume(ctx, "half"))
	if _, err := dst.FinishImport(ctx, "half"); err == nil {
		t.Error("a deleted import finished")
	}
	if _, err := os.Lstat(filepath.Join(dstDir, "imports/half")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("imports/half is left: %v", err)
	}
}

// HELD at the pool (what a tenant's volume holds arrives as it was and
// breaks nothing): setuid files, device nodes, FIFOs, hardlinks, xattrs,
// and a nested subvolume (btrfs send leaves it out). Mounts carry
// nodev,nosuid (pkg/node), which is what keeps the first two harmless;
// the pool neither strips nor refuses them.
func TestAttackTenantContentHeld(t *testing.T) {
	ctx := context.Background()
	src, srcDir, dst, dstDir := twoPools(t)
	_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs"})
	must(t, err)
	vol := filepath.Join(srcDir, "volumes/vol")
	must(t, os.WriteFile(filepath.Join(vol, "suid"), []byte("#!/bin/sh\n"), 0o755))
	must(t, os.Chmod(filepath.Join(vol, "suid"), 0o4755|os.ModeSetuid))
	must(t, unix.Mknod(filepath.Join(vol, "sda"), unix.S_IFBLK|0o666, int(unix.Mkdev(8, 0))))
	must(t, unix.Mkfifo(filepath.Join(vol, "fifo"), 0o600))
	must(t, os.WriteFile(filepath.Join(vol, "a"), []byte("a"), 0o600))
	must(t, os.Link(filepath.Join(vol, "a"), filepath.Join(vol, "b")))
	must(t, unix.Setxattr(filepath.Join(vol, "a"), "user.note", []byte("hello"), 0))
	must(t, exec.Command("btrfs", "subvolume", "create", filepath.Join(vol, "nested")).Run())
	must(t, os.WriteFile(filepath.Join(vol, "nested/inside"), []byte("n"), 0o600))
	_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "s", SourceVolumeID: "vol"})
	must(t, err)
	send, _, err := src.SendSnapshot(ctx, "s")
	must(t, err)
	target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "r", CapacityBytes: 64 << 20, Mode: pool.ModeFilesystem, FsType: "btrfs",
		Source: &pool.Source{Node: "a", SnapshotID: "s"}})
	must(t, err)
	must(t, sendInto(t, send, target))
	_, err = dst.FinishImport(ctx, "r")
	must(t, err)
	r := filepath.Join(dstDir, "volumes/r")
	var a, b unix.Stat_t
	must(t, unix.Stat(filepath.Join(r, "a"), &a))
	must(t, unix.Stat(filepath.Join(r, "b"), &b))
	if a.Ino != b.Ino {
		t.Error("hardlink lost")
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(r, "a"), "user.note", buf); err != nil || string(buf[:n]) != "hello" {
		t.Errorf("xattr: %q %v", buf[:max(n, 0)], err)
	}
	if ents, err := os.ReadDir(filepath.Join(r, "nested")); err == nil && len(ents) != 0 {
		t.Errorf("nested subvolume's content arrived: %v", ents)
	} else {
		t.Logf("nested subvolume: %v entries, %v (send leaves it out)", len(ents), err)
	}
	if st, err := os.Lstat(filepath.Join(r, "suid")); err == nil && st.Mode()&os.ModeSetuid != 0 {
		t.Logf("setuid file arrived setuid: %v", st.Mode())
	}
	var dev unix.Stat_t
	if err := unix.Lstat(filepath.Join(r, "sda"), &dev); err == nil {
		t.Logf("device node arrived: mode %o rdev %d:%d", dev.Mode, unix.Major(dev.Rdev), unix.Minor(dev.Rdev))
	}
	_, err = dst.Attach(ctx, "r")
	must(t, err)
	must(t, dst.DeleteVolume(ctx, "r"))
}

// FIXED, was WORKS (medium: a tenant makes its volume unmovable, which blocks a
// node's drain). The stream bound (2 x capacity + 64 MiB) is on the
// stream, which a tenant can make far larger than what its volume holds:
//   - "deep paths": a stream repeats a file's whole path in each command
//     about it (mkfile, rename, chown, chmod, utimes), so empty files deep
//     in a directory tree cost the volume ~1 KiB each and the stream ~15;
//   - "compressed zeros": a file's owner may turn compression on (the
//     btrfs.compression property, or chattr +c); zeros then take ~1/32 of
//     their size in the volume, and a version 1 stream carries them whole.
//
// Either way a 16 MiB volume, well within its limit, sends a stream past
// 96 MiB, which the receiver cut, on every attempt. FIXED for deep paths:
// the stream's length is bounded at 8 x capacity + 1 GiB, and its data on
// its own by the capacity. Compressed zeros: a volume whose files hold
// more data than its capacity cannot be received into a volume of that
// capacity (the receiving filesystem may not compress): refused with a
// clear error, and the move rolls back (docs/limitations.md).
func TestAttackTenantStreamBlowup(t *testing.T) {
	if testing.Short() {
		t.Skip("makes ~100 MiB streams")
	}
	const capacity = 16 << 20
	for name, fillVol := range map[string]func(t *testing.T, src *btrfs.Pool, vol string){
		"deep paths": func(t *testing.T, _ *btrfs.Pool, vol string) {
			deep, rel := vol, ""
			for len(rel) < 3500 {
				c := strings.Repeat("d", 240)
				deep, rel = filepath.Join(deep, c), filepath.Join(rel, c)
			}
			must(t, os.MkdirAll(deep, 0o755))
			for i := 0; i < 8000; i++ {
				f, err := os.Create(filepath.Join(deep, fmt.Sprintf("%0200d", i)))
				must(t, err)
				must(t, f.Close())
			}
		},
		"compressed zeros": func(t *testing.T, src *btrfs.Pool, _ string) {
			dir := filepath.Join(tenantView(t, src, "vol"), "z")
			tenantDo(t, "mkdir", dir)
			tenantDo(t, "chattr", "+c", dir) // the owner may; no privilege
			if out, err := asTenant("dd", "if=/dev/zero", "of="+filepath.Join(dir, "zeros"), "bs=1M", "count=160", "conv=fsync"); err != nil {
				t.Fatal(err, out)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			src, srcDir, dst, _ := twoPools(t)
			_, err := src.CreateVolume(ctx, pool.Volume{ID: "vol", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs"})
			must(t, err)
			fillVol(t, src, filepath.Join(srcDir, "volumes/vol"))
			_, err = src.CreateSnapshot(ctx, pool.Snapshot{ID: "s", SourceVolumeID: "vol"})
			must(t, err)
			syncFs(t, srcDir)
			u, _, err := src.Usage(ctx, "vol")
			must(t, err)
			send, _, err := src.SendSnapshot(ctx, "s")
			must(t, err)
			var n countWriter
			must(t, send.Run(ctx, &n))
			t.Logf("volume of %d MiB uses %d KiB; its stream is %d MiB", capacity>>20, u.UsedBytes>>10, n>>20)
			if u.UsedBytes >= capacity {
				t.Fatalf("the volume is full (%d bytes): not the attack", u.UsedBytes)
			}
			target, _, err := dst.BeginImport(ctx, pool.Volume{ID: "r", CapacityBytes: capacity, Mode: pool.ModeFilesystem, FsType: "btrfs",
				Source: &pool.Source{Node: "a", SnapshotID: "s"}})
			must(t, err)
			err = sendInto(t, send, target)
			if name == "compressed zeros" {
				if !errors.Is(err, pool.ErrInvalid) || !strings.Contains(err.Error(), "more data than the volume holds") {
					t.Errorf("a volume with 160 MiB of compressed zeros in 16 MiB: %v, want a clear refusal", err)
				}
				return
			}
			if err != nil {
				t.Errorf("a volume using %d KiB of its %d MiB cannot be moved: %v", u.UsedBytes>>10, capacity>>20, firstLine(err))
			}
		})
	}
}

// HELD. Huge sparse files: a stream of a few hundred bytes truncates a
// file to 1 EiB and writes 4 KiB at 1 TiB. The volume's files are that
// large in size only: the pool loses nothing, the import finishes, and
// the volume, sent on, makes a small stream (holes are not sent).
func TestAttackSparseHeld(t *testing.T) {
	ctx := context.Background()
	dst, dstDir := newPool(t, "")
	free := freeBytes(t, dstDir)
	s := newStream(1).subvol("x", uuidOf(0x33), 1).mkfile("huge").
		cmd(cmdTruncate, aStr(attrPath, "huge"), aU64(attrSize, 1<<60)).
		mkfile("far").write("far", 1<<40, bytes.Repeat([]byte("z"), 4096))
	must(t, importStream(t, dst, "sparse", 1<<20, s.end()))
	if used := free - freeBytes(t, dstDir); used > 16<<20 {
		t.Errorf("sparse files took %d MiB of the pool", used>>20)
	}
	st, err := os.Stat(filepath.Join(dstDir, "volumes/sparse/huge"))
	must(t, err)
	t.Logf("huge: %d bytes in size", st.Size())
	_, err = dst.CreateSnapshot(ctx, pool.Snapshot{ID: "ss", SourceVolumeID: "sparse"})
	must(t, err)
	send, _, err := dst.SendSnapshot(ctx, "ss")
	must(t, err)
	var n countWriter
	must(t, send.Run(ctx, &n))
	if n > 1<<20 {
		t.Errorf("the sparse volume sends %d bytes", n)
	}
}

type countWriter int64

func (c *countWriter) Write(p []byte) (int, error) { *c += countWriter(len(p)); return len(p), nil }

var _ io.Writer = (*countWriter)(nil)

// FIXED. With a path that stays inside, a clone from another subvolume
// than the stream's own (or a sync's base) is still refused: the source
// is found by UUID on the whole filesystem.
func TestAttackCloneFromForeignUUIDRefused(t *testing.T) {
	dst, dstDir := newPool(t, "")
	other := uuidOf(0x44)
	must(t, importStream(t, dst, "a1", 16<<20, newStream(1).subvol("base", other, 5).mkfile("hello").write("hello", 0, []byte("other's")).end()))
	s := newStream(1).subvol("x", uuidOf(0x64), 9).mkfile("loot").clone("loot", 0, 7, other, 5, "hello", 0)
	err := importStream(t, dst, "a2", 16<<20, s.end())
	if err == nil || !strings.Contains(err.Error(), "a clone from a subvolume that is neither") {
		t.Fatalf("a clone from another import's subvolume: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dstDir, "volumes/a2")); err == nil {
		t.Error("the volume was made")
	}
	// The checker's other refusals, each on its own.
	for name, b := range map[string][]byte{
		"second subvolume":  newStream(1).subvol("x", uuidOf(1), 1).subvol("y", uuidOf(2), 1).end(),
		"trusted xattr":     newStream(1).subvol("x", uuidOf(3), 1).mkfile("f").cmd(13, aStr(attrPath, "f"), aStr(13, "trusted.overlay.opaque"), tlv{14, []byte("y")}).end(),
		"after the end":     append(newStream(1).subvol("x", uuidOf(4), 1).end(), 0, 0, 0, 0),
		"no end":            newStream(1).subvol("x", uuidOf(5), 1).mkfile("f").b.Bytes(),
		"absolute path":     newStream(1).subvol("x", uuidOf(6), 1).mkfile("/etc/f").end(),
		"write to a fifo":   newStream(1).subvol("x", uuidOf(7), 1).cmd(cmdMkfifo, aStr(attrPath, "p"), aU64(attrIno, 9)).write("p", 0, []byte("x")).end(),
		"renamed fifo":      newStream(1).subvol("x", uuidOf(8), 1).mkdir("d").cmd(cmdMkfifo, aStr(attrPath, "d/p"), aU64(attrIno, 9)).cmd(cmdRename, aStr(attrPath, "d"), aStr(attrPathTo, "e")).write("e/p", 0, []byte("x")).end(),
		"not a send stream": []byte("tar archive, not a stream......"),
	} {
		if err := importStream(t, dst, "c", 16<<20, b); err == nil || !strings.Contains(err.Error(), "send stream") {
			t.Errorf("%s: %v, want a refused send stream", name, err)
		}
		must(t, dst.DeleteVolume(context.Background(), "c"))
	}
}
