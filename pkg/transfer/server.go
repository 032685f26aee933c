package transfer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"

	transferv1 "github.com/plinth-dev/plinth/proto/transfer/v1"
)

// windowBytes is the flow-control window of a transfer stream and its
// connection, both ways.
const windowBytes = 16 << 20

// DefaultChunkBytes is the most data one chunk carries.
const DefaultChunkBytes = 1 << 20

// Server serves the transfer service.
type Server struct {
	Identity *Identity
	Peers    Peers
	Source   Source
	// Limit, when set, paces what this node sends and receives (one bucket
	// for both).
	Limit *rate.Limiter
	// ChunkBytes is the most data per chunk (DefaultChunkBytes when 0).
	ChunkBytes int
	// Meter counts what is sent; nil counts nothing.
	Meter Meter

	// alter, in tests only, changes a chunk after its checksum is taken.
	alter func(*transferv1.Chunk)

	transferv1.UnimplementedTransferServer
}

// Meter counts bytes sent and received (plinth_transfer_bytes_total).
type Meter interface {
	Sent(n int)
	Received(n int)
}

// Serve serves on lis until ctx ends.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	srv := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(serverTLS(s.Identity, s.Peers))),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 20 * time.Second}),
		grpc.MaxConcurrentStreams(64),
		// Wide flow-control windows: a stream of 1 MiB chunks is not held
		// back by the 64 KiB defaults.
		grpc.InitialWindowSize(windowBytes),
		grpc.InitialConnWindowSize(windowBytes),
		grpc.WriteBufferSize(1<<20),
		grpc.ConnectionTimeout(10*time.Second),
	)
	transferv1.RegisterTransferServer(srv, s)
	go func() {
		<-ctx.Done()
		srv.Stop()
	}()
	klog.FromContext(ctx).Info("Serving transfers", "address", lis.Addr().String())
	if err := srv.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("transfer service: %w", err)
	}
	return nil
}

// caller is the node on the other end: the common name of the certificate
// the handshake matched against what that node published.
func caller(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) != 1 {
		return "", status.Error(codes.Unauthenticated, "no peer certificate")
	}
	return info.State.PeerCertificates[0].Subject.CommonName, nil
}

func (s *Server) chunkBytes() int {
	if s.ChunkBytes > 0 {
		return s.ChunkBytes
	}
	return DefaultChunkBytes
}

func (s *Server) content(ctx context.Context, volumeID string) (*Content, string, error) {
	node, err := caller(ctx)
	if err != nil {
		return nil, "", err
	}
	if volumeID == "" {
		return nil, node, status.Error(codes.InvalidArgument, "volume_id is empty")
	}
	c, err := s.Source.Content(ctx, node, volumeID)
	switch {
	case errors.Is(err, ErrDenied):
		klog.FromContext(ctx).Info("Transfer refused", "peer", node, "volumeID", volumeID, "err", err)
		return nil, node, status.Error(codes.PermissionDenied, err.Error())
	case errors.Is(err, ErrNoContent):
		return nil, node, status.Error(codes.NotFound, err.Error())
	case err != nil:
		return nil, node, status.Error(codes.Unavailable, err.Error())
	}
	return c, node, nil
}

// Open says what the transfer for the caller's volume carries.
func (s *Server) Open(ctx context.Context, req *transferv1.OpenRequest) (*transferv1.OpenResponse, error) {
	c, _, err := s.content(ctx, req.GetVolumeId())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if c.Stream != nil {
		return &transferv1.OpenResponse{Format: FormatStream, Size: c.Size, DataBytes: c.DataBytes, ContentId: c.ID,
			ChunkBytes: int32(s.chunkBytes())}, nil
	}
	// What a whole transfer carries at most (for a sync where the bytes
	// are compared: the data of either, an estimate).
	seq, _, err := c.ranges(0)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	var data int64
	for r, err := range seq {
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		data += r.Len
	}
	return &transferv1.OpenResponse{Format: c.format(), Size: c.Size, DataBytes: data, ContentId: c.ID,
		ChunkBytes: int32(s.chunkBytes())}, nil
}

// Read streams the content's data from the offset asked on.
func (s *Server) Read(req *transferv1.ReadRequest, stream grpc.ServerStreamingServer[transferv1.Chunk]) error {
	ctx := stream.Context()
	c, node, err := s.content(ctx, req.GetVolumeId())
	if err != nil {
		return err
	}
	defer c.Close()
	if c.Stream != nil {
		return s.readStream(ctx, c, node, req, stream)
	}
	if req.GetContentId() != c.ID {
		return status.Errorf(codes.FailedPrecondition, "content %q is now %q: open the transfer again", req.GetContentId(), c.ID)
	}
	if req.GetOffset() < 0 || req.GetOffset() > c.Size {
		return status.Errorf(codes.OutOfRange, "offset %d is outside the content (%d bytes)", req.GetOffset(), c.Size)
	}
	seq, compare, err := c.ranges(req.GetOffset())
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	var base []byte
	if compare {
		base = make([]byte, s.chunkBytes())
	}
	logger := klog.FromContext(ctx).WithValues("peer", node, "volumeID", req.GetVolumeId(), "content", c.ID)
	logger.V(2).Info("Sending", "from", req.GetOffset())
	// One goroutine reads, compares and checksums the chunks ahead while
	// this one sends them: reading the disk overlaps the network.
	type item struct {
		ch  *transferv1.Chunk
		buf []byte
		err error
	}
	const depth = 4
	free := make(chan []byte, depth)
	for range depth {
		free <- make([]byte, s.chunkBytes())
	}
	ready := make(chan item, depth)
	pctx, stop := context.WithCancel(ctx)
	produced := make(chan struct{})
	defer func() {
		// The reader is done with the files before they are closed.
		stop()
		<-produced
	}()
	go func() {
		defer close(produced)
		defer close(ready)
		put := func(it item) bool {
			select {
			case ready <- it:
				return true
			case <-pctx.Done():
				return false
			}
		}
		fail := func(err error) { put(item{err: err}) }
		// The ranges are walked as the stream goes, never listed: memory
		// does not grow with the extents a tenant's writes make.
		for r, err := range seq {
			if err != nil {
				fail(status.Error(codes.Internal, err.Error()))
				return
			}
			for off, end := r.Off, r.End(); off < end; {
				var buf []byte
				select {
				case buf = <-free:
				case <-pctx.Done():
					return
				}
				n := int(min(int64(len(buf)), end-off))
				p := buf[:n]
				if err := readFull(c.File, p, off); err != nil {
					fail(status.Error(codes.Internal, err.Error()))
					return
				}
				ch := &transferv1.Chunk{Offset: off, SentThrough: off + int64(n)}
				if compare {
					if err := readBase(c.Base, base[:n], off); err != nil {
						fail(status.Error(codes.Internal, err.Error()))
						return
					}
				}
				data := false
				switch {
				case compare && bytes.Equal(p, base[:n]):
					// the same: nothing to send
				case allZero(p):
					if c.Base != nil {
						// A sync: the receiver makes it read as zeros.
						ch.ZeroBytes = int64(n)
					}
				default:
					data = true
				}
				if data {
					ch.Data, ch.Crc32C = p, proto.Uint32(checksum(p))
					if err := s.wait(pctx, n); err != nil {
						fail(err)
						return
					}
				} else {
					free <- buf
					buf = nil
				}
				if !put(item{ch: ch, buf: buf}) {
					return
				}
				off += int64(n)
			}
		}
	}()
	for it := range ready {
		if it.err != nil {
			return it.err
		}
		if s.alter != nil {
			s.alter(it.ch)
		}
		if err := stream.Send(it.ch); err != nil {
			return err
		}
		if s.Meter != nil {
			s.Meter.Sent(len(it.ch.Data))
		}
		if it.buf != nil {
			free <- it.buf // sent: Send has copied it out
		}
	}
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	// The end: everything up to the size is sent (what is left is a hole).
	return stream.Send(&transferv1.Chunk{Offset: c.Size, SentThrough: c.Size})
}

// readStream sends a stream content whole, in chunks at the offsets they
// have in the stream. A stream is not resumed: a read from anywhere but 0
// is refused, and a receiver that broke off asks again from 0. (The
// content ID is not checked: a receiver keeps nothing of a broken stream,
// and a stream made anew, such as one of a held volume's snapshot taken
// for it, has a new ID each time.)
func (s *Server) readStream(ctx context.Context, c *Content, node string, req *transferv1.ReadRequest, stream grpc.ServerStreamingServer[transferv1.Chunk]) error {
	if req.GetOffset() != 0 {
		return status.Errorf(codes.OutOfRange, "content %s is a stream, sent whole: read it from 0, not %d", c.ID, req.GetOffset())
	}
	logger := klog.FromContext(ctx).WithValues("peer", node, "volumeID", req.GetVolumeId(), "content", c.ID)
	logger.V(2).Info("Sending a stream")
	pctx, stop := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	produced := make(chan error, 1)
	go func() {
		err := c.Stream(pctx, pw)
		pw.CloseWithError(err)
		produced <- err
	}()
	defer func() {
		// The producer is done before the content is released.
		stop()
		pr.CloseWithError(context.Canceled)
		<-produced
	}()
	buf := make([]byte, s.chunkBytes())
	var off int64
	for {
		n, err := io.ReadFull(pr, buf)
		if n > 0 {
			p := buf[:n]
			if err := s.wait(ctx, n); err != nil {
				return err
			}
			ch := &transferv1.Chunk{Offset: off, Data: p, Crc32C: proto.Uint32(checksum(p)), SentThrough: off + int64(n)}
			if s.alter != nil {
				s.alter(ch)
			}
			if err := stream.Send(ch); err != nil {
				return err
			}
			if s.Meter != nil {
				s.Meter.Sent(n)
			}
			off += int64(n)
		}
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			// The producer closed the pipe with its answer: a stream
			// ends cleanly only when it ran to its end.
			logger.V(2).Info("Sent a stream", "bytes", off)
			return nil
		case err != nil:
			if cerr := ctx.Err(); cerr != nil {
				return status.FromContextError(cerr).Err()
			}
			return status.Errorf(codes.Unavailable, "stream of %s: %v", c.ID, err)
		}
	}
}

// readBase reads the base at off; what lies beyond its end reads as zeros.
func readBase(f *os.File, p []byte, off int64) error {
	n, err := f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if errors.Is(err, io.EOF) {
		clear(p[n:])
		return nil
	}
	return fmt.Errorf("read base %s at %d: %w", f.Name(), off, err)
}

func (s *Server) wait(ctx context.Context, n int) error {
	if s.Limit == nil {
		return nil
	}
	return waitN(ctx, s.Limit, n)
}

// waitN takes n tokens, in pieces no larger than the bucket.
func waitN(ctx context.Context, l *rate.Limiter, n int) error {
	for n > 0 {
		take := min(n, max(l.Burst(), 1))
		if err := l.WaitN(ctx, take); err != nil {
			return status.FromContextError(err).Err()
		}
		n -= take
	}
	return nil
}
