package transfer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	transferv1 "github.com/plinth-dev/plinth/proto/transfer/v1"
	"github.com/plinth-dev/plinth/test/testfs"
)

// peerBook is the published certificates and addresses (the PlinthNodes).
type peerBook struct {
	mu sync.Mutex
	m  map[string]Peer
}

func (b *peerBook) Peer(_ context.Context, node string) (Peer, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	p, ok := b.m[node]
	if !ok {
		return Peer{}, fmt.Errorf("no PlinthNode %s", node)
	}
	return p, nil
}

func (b *peerBook) publish(t *testing.T, id *Identity, addr string) {
	t.Helper()
	der, err := ParseCertificatePEM(id.CertificatePEM())
	if err != nil {
		t.Fatal(err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.m[id.Node] = Peer{Address: addr, Cert: der}
}

// grants is the serving node's view of the volume objects: which node may
// read which image for which volume.
type grants struct {
	node string // the node a volume object names
	file string
	id   string
	base string // a sync's base image, when set
	// mapOnly opens the base write-only: its extents can be mapped, its
	// bytes not read.
	mapOnly bool
	// stream, when set, is served as a stream content (file unused);
	// streamErr ends it after the bytes with an error.
	stream    []byte
	streamErr error
}

func (g *grants) Content(_ context.Context, peer, volumeID string) (*Content, error) {
	if volumeID != "pv-target" {
		return nil, fmt.Errorf("%w: volume %s", ErrNoContent, volumeID)
	}
	if peer != g.node {
		return nil, fmt.Errorf("%w: volume %s is not node %s's", ErrDenied, volumeID, peer)
	}
	if g.stream != nil {
		return &Content{ID: g.id, Size: 1 << 30, DataBytes: int64(len(g.stream)), Stream: func(ctx context.Context, w io.Writer) error {
			if _, err := w.Write(g.stream); err != nil {
				return err
			}
			return g.streamErr
		}}, nil
	}
	f, err := os.Open(g.file)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	size := st.Size()
	if st.Mode()&os.ModeDevice != 0 {
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			f.Close()
			return nil, err
		}
	}
	c := &Content{ID: g.id, File: f, Size: size}
	if g.base != "" {
		flag := os.O_RDONLY
		if g.mapOnly {
			flag = os.O_WRONLY
		}
		if c.Base, err = os.OpenFile(g.base, flag, 0); err != nil {
			f.Close()
			return nil, err
		}
	}
	return c, nil
}

type world struct {
	book   *peerBook
	server *Server
	src    string
	a, b   *Identity
}

// newWorld serves src from node "a" to node "b" on 127.0.0.1.
func newWorld(t *testing.T, src string) *world {
	t.Helper()
	w := &world{book: &peerBook{m: map[string]Peer{}}, src: src}
	var err error
	if w.a, err = NewIdentity("a"); err != nil {
		t.Fatal(err)
	}
	if w.b, err = NewIdentity("b"); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	w.book.publish(t, w.a, lis.Addr().String())
	w.book.publish(t, w.b, "")
	w.server = &Server{Identity: w.a, Peers: w.book, Source: &grants{node: "b", file: src, id: "sn-1@1"}, ChunkBytes: 64 << 10}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.server.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return w
}

// image writes a sparse image of size bytes with data at the given
// offsets (each n bytes of a pattern) and a run of written zeros.
func image(t *testing.T, path string, size int64, at []int64, n int) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for i, off := range at {
		p := bytes.Repeat([]byte{byte(i + 1), 0xa5, byte(off)}, n/3+1)[:n]
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
	}
	// Allocated zeros: data to SEEK_DATA, nothing to send.
	if _, err := f.WriteAt(make([]byte, 1<<20), size/2); err != nil {
		t.Fatal(err)
	}
}

func sum(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

type meter struct{ sent, received atomic.Int64 }

func (m *meter) Sent(n int)     { m.sent.Add(int64(n)) }
func (m *meter) Received(n int) { m.received.Add(int64(n)) }

func dest(dir string) *FileDestination {
	return &FileDestination{Image: filepath.Join(dir, "pv-target.img.part"), Progress: filepath.Join(dir, "pv-target.progress.json")}
}

func TestFillSendsOnlyData(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 64<<20, []int64{0, 5 << 20, 40<<20 + 12345}, 300<<10)
	w := newWorld(t, src)
	m := &meter{}
	w.server.Meter = m
	d := dest(dir)
	defer d.Close()
	var last Progress
	c := &Client{Identity: w.b, Peers: w.book, Meter: m}
	if err := c.Fill(context.Background(), "a", "pv-target", d, func(p Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if sum(t, src) != sum(t, d.Image) {
		t.Fatal("the copy differs from the source")
	}
	// The data, no holes and no chunk of zeros; a chunk that holds the
	// end of a data region carries the rest of its filesystem block.
	if got, want := m.received.Load(), int64(3*300<<10); got < want || got > want+3*4096 || m.sent.Load() != got {
		t.Errorf("sent %d, received %d bytes; want %d (the data, no holes, no zeros)", m.sent.Load(), got, want)
	}
	if last.DoneBytes != last.TotalBytes || last.TotalBytes == 0 {
		t.Errorf("last progress %+v, want done = total", last)
	}
	// Sparse on the receiver too: about the data, not the size.
	var st = mustStat(t, d.Image)
	if st > 8<<20 {
		t.Errorf("the copy allocates %d bytes for about 1 MiB of data", st)
	}
}

func mustStat(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return allocatedBytes(fi)
}

// A transfer cut off mid-way goes on from what the receiver committed, and
// sends less the second time.
func TestFillResumes(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 32<<20, []int64{0, 8 << 20, 16 << 20, 24 << 20}, 2<<20)
	w := newWorld(t, src)
	m := &meter{}
	w.server.Meter = m
	d := dest(dir)
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{Identity: w.b, Peers: w.book, CommitEvery: 256 << 10}
	err := c.Fill(ctx, "a", "pv-target", &cutAfter{FileDestination: d, n: 40, cancel: cancel}, nil)
	if err == nil {
		t.Fatal("the cut-off transfer reported success")
	}
	d.Close()
	first := m.sent.Load()
	var p progress
	if err := ProgressRecords.Read(d.Progress, &p); err != nil || p.Through == 0 {
		t.Fatalf("progress after the cut: %+v, %v; want some committed", p, err)
	}
	d2 := dest(dir)
	defer d2.Close()
	if err := c.Fill(context.Background(), "a", "pv-target", d2, nil); err != nil {
		t.Fatal(err)
	}
	if sum(t, src) != sum(t, d2.Image) {
		t.Fatal("the resumed copy differs from the source")
	}
	if second := m.sent.Load() - first; second >= 8<<20 {
		t.Errorf("the resumed transfer sent %d bytes, all of the data again", second)
	}
}

// cutAfter cancels the transfer after n writes.
type cutAfter struct {
	*FileDestination
	n      int
	cancel func()
}

func (c *cutAfter) WriteAt(p []byte, off int64) error {
	if c.n--; c.n <= 0 {
		c.cancel()
		return errors.New("cut off") // as a receiver killed here
	}
	return c.FileDestination.WriteAt(p, off)
}

// Content that changed since the receiver began (another content ID) is
// received from the start, never mixed with what it had.
func TestFillStartsOverForOtherContent(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 8<<20, []int64{0}, 1<<20)
	w := newWorld(t, src)
	d := dest(dir)
	// A partial image of other content, committed to the end.
	if err := os.WriteFile(d.Image, bytes.Repeat([]byte{0xff}, 8<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := ProgressRecords.Write(d.Progress, progress{Schema: 1, ContentID: "sn-old@1", Size: 8 << 20, Through: 8 << 20}); err != nil {
		t.Fatal(err)
	}
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if sum(t, src) != sum(t, d.Image) {
		t.Fatal("the copy keeps bytes of other content")
	}
}

// A chunk altered after its checksum was taken is caught and sent again.
func TestFillCatchesAlteredChunk(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 8<<20, []int64{0, 6 << 20}, 1<<20)
	w := newWorld(t, src)
	var altered atomic.Int32
	w.server.alter = func(ch *transferv1.Chunk) {
		if len(ch.Data) > 0 && ch.Offset >= 6<<20 && altered.Add(1) == 1 {
			ch.Data = append([]byte{}, ch.Data...)
			ch.Data[7] ^= 1
		}
	}
	d := dest(dir)
	defer d.Close()
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
		t.Fatal(err)
	}
	if altered.Load() < 2 {
		t.Fatal("the altered chunk was not asked for again")
	}
	if sum(t, src) != sum(t, d.Image) {
		t.Fatal("an altered chunk was written")
	}
}

// A server that keeps altering chunks fails the transfer; nothing bad is
// committed.
func TestFillGivesUpOnCorruption(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 4<<20, []int64{1 << 20}, 1<<20)
	w := newWorld(t, src)
	w.server.alter = func(ch *transferv1.Chunk) {
		if len(ch.Data) > 0 {
			ch.Data = append([]byte{}, ch.Data...)
			ch.Data[0] ^= 0x80
		}
	}
	d := dest(dir)
	defer d.Close()
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Fill = %v, want ErrCorrupt", err)
	}
	b, _ := os.ReadFile(d.Image)
	if !allZero(b) {
		t.Error("bytes of an altered chunk were written")
	}
}

// A third node with a valid certificate of its own, published, is not the
// node the volume object names: refused.
func TestUnnamedNodeRefused(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 4<<20, []int64{0}, 1<<20)
	w := newWorld(t, src)
	c3, err := NewIdentity("c")
	if err != nil {
		t.Fatal(err)
	}
	w.book.publish(t, c3, "")
	d := dest(dir)
	defer d.Close()
	c := &Client{Identity: c3, Peers: w.book}
	err = c.Fill(context.Background(), "a", "pv-target", d, nil)
	if status.Code(errors.Unwrap(err)) != codes.PermissionDenied && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Fill by an unnamed node = %v, want PermissionDenied", err)
	}
	if _, err := os.Stat(d.Image); err == nil {
		t.Error("the unnamed node's refused transfer made an image")
	}
}

// A client that presents a certificate other than the one its node
// published (an impostor with the node's name), or none, gets nothing.
func TestImpostorRefused(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 4<<20, []int64{0}, 1<<20)
	w := newWorld(t, src)
	fake, err := NewIdentity("b") // b's name, not b's published certificate
	if err != nil {
		t.Fatal(err)
	}
	c := &Client{Identity: fake, Peers: w.book}
	d := dest(dir)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Fill(ctx, "a", "pv-target", d, nil); err == nil {
		t.Fatal("an impostor's certificate was accepted")
	}
	if _, err := os.Stat(d.Image); err == nil {
		t.Error("the impostor's refused transfer made an image")
	}
}

// The receiver checks the server against what the node it asks published:
// a server with another certificate is not that node.
func TestServerPinned(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 4<<20, []int64{0}, 1<<20)
	w := newWorld(t, src)
	other, err := NewIdentity("a")
	if err != nil {
		t.Fatal(err)
	}
	// a's entry now carries another certificate than the server presents.
	addr := w.book.m["a"].Address
	w.book.publish(t, other, addr)
	c := &Client{Identity: w.b, Peers: w.book}
	d := dest(dir)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Fill(ctx, "a", "pv-target", d, nil); err == nil {
		t.Fatal("a server that is not the node's published certificate was trusted")
	}
}

func TestParseCertificatePEM(t *testing.T) {
	id, err := NewIdentity("n")
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "junk", id.CertificatePEM() + id.CertificatePEM(),
		"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := ParseCertificatePEM(bad); err == nil {
			t.Errorf("ParseCertificatePEM(%.30q) accepted", bad)
		}
	}
	if _, err := ParseCertificatePEM(id.CertificatePEM()); err != nil {
		t.Error(err)
	}
}

// A sync sends only what differs from the base the receiver holds: changed
// bytes, and ranges that are zeros now where the base had data.
// A sync sends what changed since the base. Where the live image is a
// reflink copy of the base (xfs), the extent maps say what changed and the
// base's bytes are never read; elsewhere (no reflink) the bytes are
// compared.
func TestSyncSendsOnlyChanges(t *testing.T) {
	for _, fs := range []string{"tmp", "xfs"} {
		t.Run(fs, func(t *testing.T) {
			dir := t.TempDir()
			if fs == "xfs" {
				testfs.RequireHost(t, "mkfs.xfs")
				dir = testfs.Filesystem(t, "xfs", 320<<20)
			}
			testSync(t, dir, fs == "xfs")
		})
	}
}

func testSync(t *testing.T, dir string, reflink bool) {
	base := filepath.Join(dir, "base.img")
	image(t, base, 32<<20, []int64{0, 8 << 20, 20 << 20}, 2<<20)
	now := filepath.Join(dir, "now.img")
	args := []string{"--sparse=always", "--reflink=never", base, now}
	if reflink {
		args = []string{"--reflink=always", base, now}
	}
	if out, err := exec.Command("cp", args...).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	f, err := os.OpenFile(now, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Changed: 100 KiB at 8 MiB + 5; zeroed: the region at 20 MiB (a
	// hole now); new: 300 KiB at 30 MiB.
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 100<<10), 8<<20+5); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 20<<20, 2<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x77}, 300<<10), 30<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	w := newWorld(t, now)
	g := w.server.Source.(*grants)
	g.base, g.mapOnly = base, reflink
	m := &meter{}
	w.server.Meter = m
	// The receiver holds a copy of the base.
	held := filepath.Join(dir, "held.img")
	if err := exec.Command("cp", "--sparse=always", "--reflink=never", base, held).Run(); err != nil {
		t.Fatal(err)
	}
	d := &SyncDestination{Image: held, Progress: filepath.Join(dir, "sync.json")}
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); err != nil {
		t.Fatal(err)
	}
	d.Close()
	if sum(t, now) != sum(t, held) {
		t.Fatal("the synced image differs from the source")
	}
	// Whole chunks (64 KiB here) around each change; from the extent
	// maps, whole 4 KiB blocks.
	limit := int64(600 << 10)
	if reflink {
		limit = (100<<10 + 2*4096) + 300<<10
	}
	if got := m.sent.Load(); got > limit {
		t.Errorf("a sync of about 400 KiB of changes sent %d bytes, more than %d", got, limit)
	}
	// A new image destination refuses a delta.
	nd := dest(t.TempDir())
	defer nd.Close()
	if err := c.Fill(context.Background(), "a", "pv-target", nd, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("a delta into a new image: %v, want ErrUnsupported", err)
	}
}

// A destination that fails (a full disk) ends the attempt with its error
// at once: the stream is not left running, nor the receiver waiting.
func TestFillStopsOnWriteError(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	image(t, src, 64<<20, []int64{0}, 48<<20)
	w := newWorld(t, src)
	d := dest(dir)
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	full := errors.New("no space left on device")
	err := (&Client{Identity: w.b, Peers: w.book}).Fill(ctx, "a", "pv-target", &failAfter{FileDestination: d, n: 3, err: full}, nil)
	if !errors.Is(err, full) {
		t.Fatalf("Fill = %v; want the destination's error", err)
	}
	if ctx.Err() != nil {
		t.Fatal("Fill returned only at the deadline")
	}
}

// failAfter fails every write after n.
type failAfter struct {
	*FileDestination
	n   int
	err error
}

func (f *failAfter) WriteAt(p []byte, off int64) error {
	if f.n--; f.n < 0 {
		return f.err
	}
	return f.FileDestination.WriteAt(p, off)
}
