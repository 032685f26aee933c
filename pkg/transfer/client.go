package transfer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	transferv1 "github.com/plinth-dev/plinth/proto/transfer/v1"
)

// Destination is where a receiver writes content: resumable (it knows
// what it has) and committed durably.
type Destination interface {
	// Format is how the destination takes content: FormatImage (a new
	// image) or FormatImageDelta (an image filled before, brought up to
	// date).
	Format() string
	Resume(contentID string, size int64) (int64, error)
	WriteAt(p []byte, off int64) error
	// Zero makes n bytes at off read as zeros (a sync only).
	Zero(off, n int64) error
	Commit(contentID string, size, through int64) error
}

// Progress is how far a transfer is.
type Progress struct {
	// DoneBytes of TotalBytes of data are in the destination (what an
	// earlier attempt wrote included).
	DoneBytes, TotalBytes int64
	// BytesPerSecond is the rate of this attempt so far.
	BytesPerSecond int64
}

// Client fills volumes from other nodes.
type Client struct {
	Identity *Identity
	Peers    Peers
	// Limit, when set, paces what this node receives (Server.Limit's
	// bucket, shared).
	Limit *rate.Limiter
	Meter Meter
	// CommitEvery is how much may be written between two commits (64 MiB
	// when 0); CommitInterval how long (2 s when 0).
	CommitEvery    int64
	CommitInterval time.Duration
	// IdleTimeout ends an attempt whose stream sends nothing this long
	// (a minute when 0).
	IdleTimeout time.Duration
}

// ErrCorrupt: chunks kept arriving that do not match their checksums.
var ErrCorrupt = errors.New("chunks do not match their checksums")

// maxBadChunks is how many mismatched chunks in a row end an attempt.
const maxBadChunks = 5

// Fill fills dst with the content node serves for volumeID, going on from
// what dst has. report, when set, hears the progress after each commit.
// It returns nil once all of the content is in dst, committed.
func (c *Client) Fill(ctx context.Context, node, volumeID string, dst Destination, report func(Progress)) error {
	conn, api, open, err := c.open(ctx, node, volumeID, dst.Format())
	if err != nil {
		return err
	}
	defer conn.Close()
	size, id := open.GetSize(), open.GetContentId()
	if size < 0 || id == "" {
		return fmt.Errorf("transfer from %s: bad answer: size %d, content %q", node, size, id)
	}
	through, err := dst.Resume(id, size)
	if err != nil {
		return err
	}
	logger := klog.FromContext(ctx).WithValues("node", node, "volumeID", volumeID, "content", id)
	logger.Info("Receiving", "size", size, "dataBytes", open.GetDataBytes(), "from", through)
	r := &receiver{c: c, api: api, dst: dst, volumeID: volumeID, id: id, size: size, through: through,
		total: open.GetDataBytes(), report: report, start: time.Now()}
	// What earlier attempts wrote counts as done: the data before through.
	r.done = min(r.total, r.doneBefore(through))
	for bad := 0; ; {
		err := r.read(ctx)
		if err == nil {
			logger.Info("Received", "bytes", r.sent, "seconds", time.Since(r.start).Seconds())
			return nil
		}
		if !errors.Is(err, errBadChunk) {
			return err
		}
		if bad++; bad >= maxBadChunks {
			return fmt.Errorf("transfer from %s: %w (%d times from %d)", node, ErrCorrupt, bad, r.through)
		}
		logger.Info("A chunk did not match its checksum; asking again", "from", r.through)
	}
}

// open connects to node's transfer service and opens the transfer for
// volumeID, which must come as format. The caller closes the connection.
func (c *Client) open(ctx context.Context, node, volumeID, format string) (*grpc.ClientConn, transferv1.TransferClient, *transferv1.OpenResponse, error) {
	conn, err := c.dial(ctx, node)
	if err != nil {
		return nil, nil, nil, err
	}
	api := transferv1.NewTransferClient(conn)
	open, err := api.Open(ctx, &transferv1.OpenRequest{VolumeId: volumeID})
	if err == nil && open.GetFormat() != format {
		err = fmt.Errorf("transfer from %s: %w: the content comes as %q, this destination takes %q", node, ErrUnsupported, open.GetFormat(), format)
	} else if err != nil {
		err = fmt.Errorf("open transfer from %s: %w", node, err)
	}
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	return conn, api, open, nil
}

// dial connects to node's transfer service, which must present the
// certificate node published.
func (c *Client) dial(ctx context.Context, node string) (*grpc.ClientConn, error) {
	p, err := c.Peers.Peer(ctx, node)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", node, err)
	}
	if p.Address == "" {
		return nil, fmt.Errorf("node %s publishes no transfer address", node)
	}
	conn, err := grpc.NewClient("passthrough:///"+p.Address,
		grpc.WithTransportCredentials(credentials.NewTLS(clientTLS(c.Identity, c.Peers, node))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(8<<20)),
		grpc.WithInitialWindowSize(windowBytes), grpc.WithInitialConnWindowSize(windowBytes),
		grpc.WithReadBufferSize(1<<20))
	if err != nil {
		return nil, fmt.Errorf("transfer from %s (%s): %w", node, p.Address, err)
	}
	return conn, nil
}

// StartStream begins an attempt to take a stream content: what an earlier
// attempt left is dropped, and the stream is written to what it returns,
// whose Close says whether it took a whole, durable content. Cancelling
// ctx ends the attempt.
type StartStream func(ctx context.Context) (io.WriteCloser, error)

// FillStream takes the stream content node serves for volumeID
// (FormatStream), whole: an attempt that breaks (a chunk that does not
// match its checksum included) starts over from the stream's beginning.
// It returns nil once start's writer took the whole stream.
func (c *Client) FillStream(ctx context.Context, node, volumeID string, start StartStream, report func(Progress)) error {
	conn, api, open, err := c.open(ctx, node, volumeID, FormatStream)
	if err != nil {
		return err
	}
	defer conn.Close()
	logger := klog.FromContext(ctx).WithValues("node", node, "volumeID", volumeID, "content", open.GetContentId())
	logger.Info("Receiving a stream", "dataBytes", open.GetDataBytes())
	for bad := 0; ; {
		s := &streamReceiver{c: c, api: api, volumeID: volumeID, id: open.GetContentId(), total: open.GetDataBytes(), report: report, start: time.Now()}
		err := s.read(ctx, start)
		if err == nil {
			logger.Info("Received a stream", "bytes", s.got, "seconds", time.Since(s.start).Seconds())
			return nil
		}
		if !errors.Is(err, errBadChunk) {
			return err
		}
		if bad++; bad >= maxBadChunks {
			return fmt.Errorf("transfer from %s: %w (%d times)", node, ErrCorrupt, bad)
		}
		logger.Info("A chunk did not match its checksum; taking the stream again from its start", "at", s.got)
	}
}

type streamReceiver struct {
	c        *Client
	api      transferv1.TransferClient
	volumeID string
	id       string
	// got bytes of the stream are written; total is about what it carries.
	got, total int64
	report     func(Progress)
	start      time.Time
	lastReport time.Time
}

// read takes the stream whole in one attempt.
func (s *streamReceiver) read(ctx context.Context, start StartStream) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := start(ctx)
	if err != nil {
		return err
	}
	finished := false
	defer func() {
		if !finished {
			cancel()
			_ = w.Close()
		}
	}()
	stream, err := s.api.Read(ctx, &transferv1.ReadRequest{VolumeId: s.volumeID, ContentId: s.id})
	if err != nil {
		return err
	}
	idle := time.AfterFunc(s.c.idle(), cancel)
	defer idle.Stop()
	s.lastReport = time.Now()
	for {
		ch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			// The server ends a stream cleanly only after the whole of it;
			// the writer checks that it is whole too (btrfs receive -e
			// wants the stream's end command).
			finished = true
			if err := w.Close(); err != nil {
				return fmt.Errorf("take the stream (%d bytes): %w", s.got, err)
			}
			s.progress(max(s.total, s.got))
			return nil
		}
		if err != nil {
			return err
		}
		idle.Reset(s.c.idle())
		data := ch.GetData()
		if ch.GetOffset() != s.got || len(data) == 0 || ch.GetSentThrough() != s.got+int64(len(data)) || ch.GetZeroBytes() != 0 {
			return fmt.Errorf("transfer: stream chunk at %d (%d bytes, through %d, %d zeros) out of order (have %d)",
				ch.GetOffset(), len(data), ch.GetSentThrough(), ch.GetZeroBytes(), s.got)
		}
		if ch.Crc32C == nil || checksum(data) != ch.GetCrc32C() {
			return errBadChunk
		}
		if s.c.Limit != nil {
			if err := waitN(ctx, s.c.Limit, len(data)); err != nil {
				return err
			}
		}
		if _, err := w.Write(data); err != nil {
			return fmt.Errorf("take the stream at %d: %w", s.got, err)
		}
		s.got += int64(len(data))
		if s.c.Meter != nil {
			s.c.Meter.Received(len(data))
		}
		if time.Since(s.lastReport) >= s.c.commitInterval() {
			s.progress(min(s.got, max(s.total, s.got)))
		}
	}
}

func (s *streamReceiver) progress(done int64) {
	s.lastReport = time.Now()
	if s.report == nil {
		return
	}
	rate := int64(0)
	if sec := time.Since(s.start).Seconds(); sec > 0 {
		rate = int64(float64(s.got) / sec)
	}
	s.report(Progress{DoneBytes: done, TotalBytes: max(s.total, done), BytesPerSecond: rate})
}

// ErrUnsupported: the content is carried in a way this plinth cannot write.
var ErrUnsupported = errors.New("unsupported transfer")

var errBadChunk = errors.New("chunk does not match its checksum")

type receiver struct {
	c        *Client
	api      transferv1.TransferClient
	dst      Destination
	volumeID string
	id       string
	size     int64
	// through: all before it is committed in dst.
	through int64
	// done of total data bytes are in dst; sent is this run's.
	done, total, sent int64
	report            func(Progress)
	start             time.Time
	lastCommit        time.Time
	pending           int64
}

// doneBefore estimates the data bytes before off for the progress shown
// after a resume (the offset stands in for it: holes are unknown here).
func (r *receiver) doneBefore(off int64) int64 {
	if r.size == 0 {
		return 0
	}
	return int64(float64(r.total) * float64(off) / float64(r.size))
}

func (r *receiver) read(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := r.api.Read(ctx, &transferv1.ReadRequest{VolumeId: r.volumeID, ContentId: r.id, Offset: r.through})
	if err != nil {
		return err
	}
	r.lastCommit = time.Now()
	// One goroutine receives and checks the chunks while another writes
	// and commits them: the disk and the network overlap.
	pieces := make(chan piece, writeAhead)
	wrote := make(chan writeResult, 1)
	go func() { wrote <- r.write(pieces, cancel) }()
	recvErr := r.receive(ctx, cancel, stream, pieces)
	close(pieces)
	w := <-wrote
	if w.err != nil {
		return w.err
	}
	if recvErr == nil {
		return r.commit(r.size)
	}
	// What is written so far is kept for the next attempt.
	if cerr := r.commit(w.written); cerr != nil {
		return cerr
	}
	return recvErr
}

// writeAhead is how many received chunks may wait for the writer.
const writeAhead = 8

// piece is a checked chunk on its way to the destination: data at off, or
// zero bytes made zeros there; all before through is then written.
type piece struct {
	off     int64
	data    []byte
	zero    int64
	through int64
}

type writeResult struct {
	// written: all before it is written (committed or not).
	written int64
	err     error
}

// receive reads the stream, checks each chunk and hands it to the writer.
// It returns nil once the whole content has been handed on, errBadChunk
// for a chunk that does not match its checksum, or why the stream ended.
func (r *receiver) receive(ctx context.Context, cancel func(), stream grpc.ServerStreamingClient[transferv1.Chunk], pieces chan<- piece) error {
	received := r.through // all before it is checked and handed on
	// A stream that sends nothing for a while ends this attempt; the
	// caller tries again from what is committed.
	idle := time.AfterFunc(r.idle(), cancel)
	defer idle.Stop()
	for {
		ch, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			if received != r.size {
				return status.Errorf(codes.Unavailable, "the stream ended at %d of %d bytes", received, r.size)
			}
			return nil
		}
		if err != nil {
			return err
		}
		off, data, end, zero := ch.GetOffset(), ch.GetData(), ch.GetSentThrough(), ch.GetZeroBytes()
		idle.Reset(r.idle())
		// Every chunk moves sent_through on, but the one end marker at
		// the size: a stream that makes no progress is a broken one.
		stalled := end <= received && !(end == r.size && received == r.size && len(data) == 0 && zero == 0)
		if off < received || end < off+int64(len(data)) || end > r.size || off > end || zero < 0 || end < off+zero || stalled ||
			(zero > 0 && (len(data) > 0 || r.dst.Format() != FormatImageDelta)) {
			return fmt.Errorf("transfer: chunk at %d (%d bytes, %d zeros, through %d) out of order or outside the content (written to %d of %d)",
				off, len(data), zero, end, received, r.size)
		}
		if len(data) > 0 {
			if ch.Crc32C == nil || checksum(data) != ch.GetCrc32C() {
				return errBadChunk
			}
			if r.c.Limit != nil {
				if err := waitN(ctx, r.c.Limit, len(data)); err != nil {
					return err
				}
			}
		}
		select {
		case pieces <- piece{off: off, data: data, zero: zero, through: end}:
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		}
		received = end
	}
}

// write writes and commits the pieces in order until they end; on an
// error it cancels the stream and stops.
func (r *receiver) write(pieces <-chan piece, cancel func()) writeResult {
	written := r.through
	for p := range pieces {
		err := r.writePiece(p)
		if err == nil {
			written = p.through
			if r.pending >= r.commitEvery() || time.Since(r.lastCommit) >= r.commitInterval() {
				err = r.commit(written)
			}
		}
		if err != nil {
			cancel()
			for range pieces {
				// drained: the receiver stops on the cancel
			}
			return writeResult{written: written, err: err}
		}
	}
	return writeResult{written: written}
}

func (r *receiver) writePiece(p piece) error {
	if p.zero > 0 {
		if err := r.dst.Zero(p.off, p.zero); err != nil {
			return err
		}
	}
	if len(p.data) == 0 {
		return nil
	}
	if err := r.dst.WriteAt(p.data, p.off); err != nil {
		return err
	}
	r.done += int64(len(p.data))
	r.sent += int64(len(p.data))
	r.pending += int64(len(p.data))
	if r.c.Meter != nil {
		r.c.Meter.Received(len(p.data))
	}
	return nil
}

// idle is how long a stream may send nothing before the attempt ends.
func (c *Client) idle() time.Duration {
	if c.IdleTimeout > 0 {
		return c.IdleTimeout
	}
	return time.Minute
}

func (r *receiver) idle() time.Duration { return r.c.idle() }

func (r *receiver) commitEvery() int64 {
	if r.c.CommitEvery > 0 {
		return r.c.CommitEvery
	}
	return 64 << 20
}

func (c *Client) commitInterval() time.Duration {
	if c.CommitInterval > 0 {
		return c.CommitInterval
	}
	return 2 * time.Second
}

func (r *receiver) commitInterval() time.Duration { return r.c.commitInterval() }

func (r *receiver) commit(through int64) error {
	if through < r.through {
		return nil
	}
	if err := r.dst.Commit(r.id, r.size, through); err != nil {
		return err
	}
	r.through, r.pending, r.lastCommit = through, 0, time.Now()
	if r.report != nil {
		rate := int64(0)
		if s := time.Since(r.start).Seconds(); s > 0 {
			rate = int64(float64(r.sent) / s)
		}
		done := r.done
		if through == r.size {
			done = r.total
		}
		r.report(Progress{DoneBytes: min(done, r.total), TotalBytes: r.total, BytesPerSecond: rate})
	}
	return nil
}
