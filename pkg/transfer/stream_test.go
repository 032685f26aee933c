package transfer

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	transferv1 "github.com/plinth-dev/plinth/proto/transfer/v1"
)

// streamSink is a stream destination: each attempt writes into a buffer of
// its own; an attempt counts as whole only when it is closed without its
// context cancelled (as btrfs receive, killed on a cancel, never finishes).
type streamSink struct {
	mu       sync.Mutex
	attempts int
	whole    [][]byte
}

type sinkWriter struct {
	s   *streamSink
	ctx context.Context
	buf bytes.Buffer
}

func (s *streamSink) start(ctx context.Context) (io.WriteCloser, error) {
	s.mu.Lock()
	s.attempts++
	s.mu.Unlock()
	return &sinkWriter{s: s, ctx: ctx}, nil
}

func (w *sinkWriter) Write(p []byte) (int, error) { return w.buf.Write(p) }

func (w *sinkWriter) Close() error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	w.s.whole = append(w.s.whole, w.buf.Bytes())
	return nil
}

func streamWorld(t *testing.T, data []byte) (*world, *grants) {
	t.Helper()
	w := newWorld(t, "")
	g := w.server.Source.(*grants)
	g.stream = data
	return w, g
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// A stream content arrives whole, once, in order.
func TestFillStreamWhole(t *testing.T) {
	data := randomBytes(t, 5<<20+123)
	w, _ := streamWorld(t, data)
	m := &meter{}
	w.server.Meter = m
	var sink streamSink
	var last Progress
	c := &Client{Identity: w.b, Peers: w.book, Meter: m}
	if err := c.FillStream(context.Background(), "a", "pv-target", sink.start, func(p Progress) { last = p }); err != nil {
		t.Fatal(err)
	}
	if sink.attempts != 1 || len(sink.whole) != 1 || !bytes.Equal(sink.whole[0], data) {
		t.Fatalf("%d attempts, %d whole; the stream arrived intact: %v", sink.attempts, len(sink.whole), len(sink.whole) == 1 && bytes.Equal(sink.whole[0], data))
	}
	if m.sent.Load() != int64(len(data)) || m.received.Load() != int64(len(data)) {
		t.Errorf("sent %d, received %d, want %d", m.sent.Load(), m.received.Load(), len(data))
	}
	if last.DoneBytes != int64(len(data)) || last.TotalBytes != int64(len(data)) {
		t.Errorf("last progress %+v", last)
	}
}

// A chunk altered in flight: the attempt is dropped unfinished and the
// stream taken again from its start.
func TestFillStreamCatchesAlteredChunk(t *testing.T) {
	data := randomBytes(t, 2<<20)
	w, _ := streamWorld(t, data)
	var altered atomic.Int32
	w.server.alter = func(ch *transferv1.Chunk) {
		if ch.Offset >= 1<<20 && altered.Add(1) == 1 {
			ch.Data = append([]byte{}, ch.Data...)
			ch.Data[3] ^= 1
		}
	}
	var sink streamSink
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.FillStream(context.Background(), "a", "pv-target", sink.start, nil); err != nil {
		t.Fatal(err)
	}
	if sink.attempts != 2 || len(sink.whole) != 1 || !bytes.Equal(sink.whole[0], data) {
		t.Fatalf("%d attempts, %d whole: want the stream taken again, once whole", sink.attempts, len(sink.whole))
	}
}

// A server that alters every chunk: the fill gives up, nothing whole.
func TestFillStreamGivesUpOnCorruption(t *testing.T) {
	w, _ := streamWorld(t, randomBytes(t, 256<<10))
	w.server.alter = func(ch *transferv1.Chunk) {
		ch.Data = append([]byte{}, ch.Data...)
		ch.Data[0] ^= 0x80
	}
	var sink streamSink
	c := &Client{Identity: w.b, Peers: w.book}
	if err := c.FillStream(context.Background(), "a", "pv-target", sink.start, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("FillStream = %v, want ErrCorrupt", err)
	}
	if len(sink.whole) != 0 {
		t.Fatal("an altered stream was taken as whole")
	}
}

// A stream whose sender fails part-way (btrfs send exits non-zero) is
// never taken as whole: the server does not end it cleanly.
func TestFillStreamSenderFails(t *testing.T) {
	w, g := streamWorld(t, randomBytes(t, 300<<10))
	g.streamErr = errors.New("btrfs send: exit status 1")
	var sink streamSink
	c := &Client{Identity: w.b, Peers: w.book}
	err := c.FillStream(context.Background(), "a", "pv-target", sink.start, nil)
	if err == nil || len(sink.whole) != 0 {
		t.Fatalf("FillStream = %v with %d whole, want an error and nothing whole", err, len(sink.whole))
	}
	if status.Code(err) != codes.Unavailable {
		t.Errorf("code %v, want Unavailable", status.Code(err))
	}
}

// A stream is sent whole: a read from elsewhere than 0 is refused, and an
// image destination does not take a stream.
func TestStreamReadOnlyFromStart(t *testing.T) {
	w, _ := streamWorld(t, randomBytes(t, 100<<10))
	c := &Client{Identity: w.b, Peers: w.book}
	conn, err := c.dial(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	rs, err := transferv1.NewTransferClient(conn).Read(context.Background(), &transferv1.ReadRequest{VolumeId: "pv-target", Offset: 4096})
	if err == nil {
		_, err = rs.Recv()
	}
	if status.Code(err) != codes.OutOfRange {
		t.Fatalf("read from 4096 = %v, want OutOfRange", err)
	}
	d := dest(t.TempDir())
	defer d.Close()
	if err := c.Fill(context.Background(), "a", "pv-target", d, nil); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Fill of an image from a stream = %v, want ErrUnsupported", err)
	}
}

// A node the volume object does not name gets no stream either.
func TestFillStreamUnnamedNodeRefused(t *testing.T) {
	w, _ := streamWorld(t, randomBytes(t, 100<<10))
	c3, err := NewIdentity("c")
	if err != nil {
		t.Fatal(err)
	}
	w.book.publish(t, c3, "")
	var sink streamSink
	c := &Client{Identity: c3, Peers: w.book}
	err = c.FillStream(context.Background(), "a", "pv-target", sink.start, nil)
	if status.Code(errors.Unwrap(err)) != codes.PermissionDenied && status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FillStream by an unnamed node = %v, want PermissionDenied", err)
	}
	if sink.attempts != 0 {
		t.Error("a refused stream started a receive")
	}
}
