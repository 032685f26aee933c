package app

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/time/rate"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/metrics"
	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/reconcile"
	"github.com/plinth-dev/plinth/pkg/transfer"
)

// TransferConfig is the node's transfer service (pkg/transfer): where it
// listens, what it publishes for its peers, how fast it may go.
type TransferConfig struct {
	// Address is host:port to listen on ("" turns the service off: the
	// node neither sends nor receives volumes).
	Address string
	// Advertise is host:port its peers dial ("": the listen host when it
	// is not a wildcard, else the Node's InternalIP, with the listen port).
	Advertise string
	// Bandwidth is the most bytes per second the node sends and receives
	// together, a quantity ("200Mi"); "" or "0": no limit.
	Bandwidth string

	bytesPerSecond int64
}

func (c *TransferConfig) flags(fs interface {
	StringVar(*string, string, string, string)
}) {
	fs.StringVar(&c.Address, "transfer-address", ":7460", "host:port of the node-to-node transfer service (TLS, on the host network; empty: off, the node neither sends nor receives volumes)")
	fs.StringVar(&c.Advertise, "transfer-advertise-address", "", "host or host:port other nodes dial for transfers (the pod's IP off the host network); without a port, the --transfer-address port (default: the listen host, or the Node's InternalIP)")
	fs.StringVar(&c.Bandwidth, "transfer-bandwidth", "", "most bytes per second this node's transfers send and receive together, as a quantity (200Mi); empty or 0: no limit")
}

func (c *TransferConfig) validate() error {
	var errs []error
	if c.Address != "" {
		if _, port, err := net.SplitHostPort(c.Address); err != nil {
			errs = append(errs, fmt.Errorf("--transfer-address %q: %w", c.Address, err))
		} else if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
			errs = append(errs, fmt.Errorf("--transfer-address %q: the port must be a number from 0 to 65535", c.Address))
		}
	}
	if c.Advertise != "" {
		host, port, err := net.SplitHostPort(c.Advertise)
		if err != nil {
			host, port = c.Advertise, "" // a host alone (an IPv6 address too)
		}
		if host == "" || strings.ContainsAny(host, "/ ") || port == "0" {
			errs = append(errs, fmt.Errorf("--transfer-advertise-address %q must be a host or host:port", c.Advertise))
		}
	}
	if c.Bandwidth != "" {
		q, err := resource.ParseQuantity(c.Bandwidth)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--transfer-bandwidth %q: %w", c.Bandwidth, err))
		case q.Sign() < 0:
			errs = append(errs, fmt.Errorf("--transfer-bandwidth %q must not be negative", c.Bandwidth))
		default:
			c.bytesPerSecond = q.Value()
			if c.bytesPerSecond > 0 && c.bytesPerSecond < 64<<10 {
				errs = append(errs, fmt.Errorf("--transfer-bandwidth %q: at least 64Ki bytes per second (or 0 for no limit)", c.Bandwidth))
			}
		}
	}
	return errors.Join(errs...)
}

// limiter is the node's one bucket for transfers (nil: no limit).
func (c *TransferConfig) limiter() *rate.Limiter {
	if c.bytesPerSecond <= 0 {
		return nil
	}
	burst := int(min(c.bytesPerSecond, math.MaxInt32, 4<<20))
	return rate.NewLimiter(rate.Limit(c.bytesPerSecond), burst)
}

// transferService is the node's part of moving volumes between nodes: the
// server for its snapshots, the client that fills its volumes, and what it
// publishes for its peers.
type transferService struct {
	endpoint *v1alpha1.TransferEndpoint
	client   *transfer.Client
	serve    func(context.Context) error
}

// newTransfer makes the node's identity and its transfer server and client.
// Nothing listens until serve runs.
func newTransfer(ctx context.Context, c TransferConfig, nodeName string, core kubernetes.Interface, plinth versioned.Interface, local *node.Local, m *metrics.Metrics) (*transferService, error) {
	id, err := transfer.NewIdentity(nodeName)
	if err != nil {
		return nil, err
	}
	adv, err := advertise(ctx, c, nodeName, core)
	if err != nil {
		return nil, err
	}
	peers := &reconcile.Peers{Plinth: plinth}
	limit := c.limiter()
	var meter transfer.Meter
	if m != nil {
		tm := metrics.NewTransferMeter()
		if err := m.Register(tm); err != nil {
			return nil, err
		}
		meter = tm
	}
	srv := &transfer.Server{Identity: id, Peers: peers, Limit: limit, Meter: meter,
		Source: &reconcile.TransferSource{NodeName: nodeName, Plinth: plinth, Local: local}}
	return &transferService{
		endpoint: &v1alpha1.TransferEndpoint{Address: adv, Certificate: id.CertificatePEM()},
		client:   &transfer.Client{Identity: id, Peers: peers, Limit: limit, Meter: meter},
		serve: func(ctx context.Context) error {
			lis, err := listenWhenFree(ctx, c.Address)
			if err != nil {
				return err
			}
			return srv.Serve(ctx, lis)
		},
	}, nil
}

// listenWhenFree listens on addr; an address still held (by the pod this
// one replaces, in a rolling update) is tried again for a while.
func listenWhenFree(ctx context.Context, addr string) (net.Listener, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		lis, err := net.Listen("tcp", addr)
		if err == nil {
			return lis, nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, fmt.Errorf("transfer service: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// advertise is the address peers dial: the flag, the listen host, or the
// Node's InternalIP, with the listen port.
func advertise(ctx context.Context, c TransferConfig, nodeName string, core kubernetes.Interface) (string, error) {
	host, port, err := net.SplitHostPort(c.Address)
	if err != nil {
		return "", err
	}
	if c.Advertise != "" {
		if _, _, err := net.SplitHostPort(c.Advertise); err == nil {
			return c.Advertise, nil
		}
		if port == "0" {
			return "", errors.New("--transfer-address with port 0 needs a port in --transfer-advertise-address")
		}
		return net.JoinHostPort(c.Advertise, port), nil
	}
	if port == "0" {
		return "", errors.New("--transfer-address with port 0 needs --transfer-advertise-address")
	}
	if ip := net.ParseIP(host); host != "" && (ip == nil || !ip.IsUnspecified()) {
		return c.Address, nil
	}
	n, err := core.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("read Node %s for its address (or set --transfer-advertise-address): %w", nodeName, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == v1.NodeInternalIP {
			return net.JoinHostPort(a.Address, port), nil
		}
	}
	klog.FromContext(ctx).Info("Node has no InternalIP; peers dial its name", "node", nodeName)
	return net.JoinHostPort(nodeName, port), nil
}
