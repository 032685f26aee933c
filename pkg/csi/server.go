package csi

import (
	"context"
	"fmt"
	"strings"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// CallObserver hears every CSI call (metrics).
type CallObserver interface {
	ObserveCall(method string, code codes.Code, d time.Duration)
}

// logCalls logs every call with its duration and code, and tells obs;
// requests are not logged whole, so secrets never reach the log.
func logCalls(obs CallObserver) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		method := info.FullMethod[strings.LastIndex(info.FullMethod, "/")+1:]
		logger := klog.FromContext(ctx).WithValues("method", method)
		if v, ok := req.(interface{ GetVolumeId() string }); ok && v.GetVolumeId() != "" {
			logger = logger.WithValues("volumeID", v.GetVolumeId())
		}
		resp, err := handler(klog.NewContext(ctx, logger), req)
		took := time.Since(start)
		if err != nil {
			logger.Info("CSI call failed", "code", status.Code(err).String(), "err", status.Convert(err).Message(), "duration", took)
		} else {
			logger.V(4).Info("CSI call", "duration", took)
		}
		if obs != nil {
			obs.ObserveCall(method, status.Code(err), took)
		}
		return resp, err
	}
}

// Services are the CSI services one server serves; nil ones are left out.
type Services struct {
	Identity   csi.IdentityServer
	Controller csi.ControllerServer
	Node       csi.NodeServer
	// Observer, when set, hears every call.
	Observer CallObserver
}

// Serve serves svcs on the unix socket at path until ctx is cancelled, then
// stops gracefully (forcibly after grace) and removes the socket. A stale
// socket at path is replaced; one a live server answers on is refused
// (unixsock.ErrInUse), and the socket is removed on exit only if it is
// still the one Serve created. The socket is for owner and group only.
func Serve(ctx context.Context, path string, svcs Services, grace time.Duration) error {
	l, err := unixsock.Listen(path, 0o660)
	if err != nil {
		return err
	}
	defer l.Close() // removes the socket, if it is still ours
	srv := grpc.NewServer(grpc.UnaryInterceptor(logCalls(svcs.Observer)))
	csi.RegisterIdentityServer(srv, svcs.Identity)
	if svcs.Controller != nil {
		csi.RegisterControllerServer(srv, svcs.Controller)
	}
	if svcs.Node != nil {
		csi.RegisterNodeServer(srv, svcs.Node)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	klog.InfoS("Serving CSI", "endpoint", "unix://"+path, "controller", svcs.Controller != nil, "node", svcs.Node != nil)
	select {
	case err := <-errc:
		return fmt.Errorf("serve CSI: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() { srv.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(grace):
		srv.Stop()
	}
	l.Close()
	klog.InfoS("CSI server stopped", "endpoint", "unix://"+path)
	return nil
}
