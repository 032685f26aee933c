package metrics

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"
	"k8s.io/klog/v2"

	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// Metrics holds plinth's collectors on a registry of its own.
type Metrics struct {
	reg *prometheus.Registry

	csiCalls     *prometheus.CounterVec
	csiDuration  *prometheus.HistogramVec
	allocations  *prometheus.CounterVec
	allocLatency *prometheus.HistogramVec
	registered   *prometheus.CounterVec
	draPrepare   prometheus.Histogram

	// The controller's own, registered by RegisterController.
	ops        *prometheus.CounterVec
	opDuration *prometheus.HistogramVec
	leader     prometheus.Gauge

	// Profiling, when set before Serve, also serves Go's profiles
	// (/debug/pprof/, net/http/pprof) on the metrics address: what
	// `--profiling` asks for. The address is 127.0.0.1 unless the
	// operator chose otherwise; a CPU profile costs the process while it
	// runs and nothing after.
	Profiling bool

	mu     sync.Mutex
	checks map[string]func(context.Context) error
	live   map[string]func(context.Context) error
}

// New returns Metrics with Go and process collectors registered.
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry(), checks: map[string]func(context.Context) error{}, live: map[string]func(context.Context) error{}}
	m.csiCalls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_csi_operations_total", Help: "CSI calls served, by method and gRPC code.",
	}, []string{"method", "code"})
	m.csiDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "plinth_csi_operation_duration_seconds", Help: "Duration of CSI calls, by method and gRPC code.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 12),
	}, []string{"method", "code"})
	m.allocations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_device_allocations_total", Help: "Device-plugin Allocate calls, by resource and result.",
	}, []string{"resource", "result"})
	m.allocLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "plinth_device_allocate_duration_seconds", Help: "Duration of device-plugin Allocate calls.",
		Buckets: prometheus.ExponentialBuckets(0.00002, 2.5, 12),
	}, []string{"resource"})
	m.registered = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_kubelet_registrations_total", Help: "Successful registrations with the kubelet, by kind (csi, device plugin resource).",
	}, []string{"kind"})
	m.draPrepare = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "plinth_dra_claim_prepare_duration_seconds", Help: "Duration of preparing one ResourceClaim (its CDI spec and checkpoint written); claims answered from the checkpoint are not counted.",
		Buckets: prometheus.ExponentialBuckets(0.00005, 2.5, 12),
	})
	m.reg.MustRegister(m.csiCalls, m.csiDuration, m.allocations, m.allocLatency, m.registered, m.draPrepare,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.ops = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_controller_operations_total",
		Help: "Operations plinth controller finished on claims and volumes, by operation (provision, delete, expand) and result (success, error; for provision also in_progress, reschedule).",
	}, []string{"operation", "result"})
	m.opDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "plinth_controller_operation_duration_seconds", Help: "Duration of plinth controller's operations, by operation and result.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2.5, 12),
	}, []string{"operation", "result"})
	m.leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "plinth_controller_leader", Help: "1 while this plinth controller holds the leader Lease (or runs without leader election), 0 otherwise.",
	})
	return m
}

// RegisterController adds plinth controller's own metrics: its operations
// and whether it leads. Only the controller registers them.
func (m *Metrics) RegisterController() error {
	for _, c := range []prometheus.Collector{m.ops, m.opDuration, m.leader} {
		if err := m.reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// ObserveOperation records one finished controller operation.
func (m *Metrics) ObserveOperation(operation, result string, d time.Duration) {
	m.ops.WithLabelValues(operation, result).Inc()
	m.opDuration.WithLabelValues(operation, result).Observe(d.Seconds())
}

// SetLeader records whether this controller leads.
func (m *Metrics) SetLeader(leading bool) {
	if leading {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
	}
}

// Register adds a collector (pools, devices) to plinth's registry.
func (m *Metrics) Register(c prometheus.Collector) error { return m.reg.Register(c) }

// ObserveCall records one CSI call.
func (m *Metrics) ObserveCall(method string, code codes.Code, d time.Duration) {
	m.csiCalls.WithLabelValues(method, code.String()).Inc()
	m.csiDuration.WithLabelValues(method, code.String()).Observe(d.Seconds())
}

// ObserveAllocate records one device-plugin Allocate.
func (m *Metrics) ObserveAllocate(resource string, err error, d time.Duration) {
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.allocations.WithLabelValues(resource, result).Inc()
	m.allocLatency.WithLabelValues(resource).Observe(d.Seconds())
}

// ObservePrepare records one ResourceClaim prepared by the DRA driver.
func (m *Metrics) ObservePrepare(_ int, d time.Duration) { m.draPrepare.Observe(d.Seconds()) }

// Registered records a successful registration with the kubelet.
func (m *Metrics) Registered(kind string) { m.registered.WithLabelValues(kind).Inc() }

// AddReadyCheck adds a named check that /readyz runs.
func (m *Metrics) AddReadyCheck(name string, check func(context.Context) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checks[name] = check
}

// AddLiveCheck adds a named check that /healthz runs (the liveness probe:
// a failure means the process should be restarted, e.g. a gRPC socket that
// no longer answers).
func (m *Metrics) AddLiveCheck(name string, check func(context.Context) error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.live[name] = check
}

// Handler serves /metrics, /healthz (every live check passes) and /readyz
// (every ready check passes); failures are listed.
func (m *Metrics) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg}))
	mux.Handle("/", m.healthHandler())
	if m.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	return mux
}

// healthHandler serves /healthz and /readyz only.
func (m *Metrics) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", m.runChecks(func() map[string]func(context.Context) error { return m.live }))
	mux.HandleFunc("/readyz", m.runChecks(func() map[string]func(context.Context) error { return m.checks }))
	return mux
}

// runChecks answers ok when every check of the set passes, 503 listing the
// failures otherwise.
func (m *Metrics) runChecks(set func() map[string]func(context.Context) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		m.mu.Lock()
		checks := maps.Clone(set())
		m.mu.Unlock()
		var failed []error
		for name, check := range checks {
			if err := check(ctx); err != nil {
				failed = append(failed, fmt.Errorf("%s: %w", name, err))
			}
		}
		if err := errors.Join(failed...); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
}

// Serve serves Handler on addr (host:port) until ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	return m.serve(ctx, l, m.Handler(), "Serving metrics and health")
}

// ServeWhenFree is Serve for an address another process may still hold
// (the pod this one replaces, on the host network): while it is in use it
// tries again every 100 ms until ctx ends. Once handedOver is closed (the
// other process has stopped) an address still in use for 2 s is another
// program's, and an error.
func (m *Metrics) ServeWhenFree(ctx context.Context, addr string, handedOver <-chan struct{}) error {
	var since time.Time // when handedOver was first seen closed
	for logged := false; ; {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			return m.serve(ctx, l, m.Handler(), "Serving metrics and health")
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("metrics listen on %s: %w", addr, err)
		}
		select {
		case <-handedOver:
			if since.IsZero() {
				since = time.Now()
			} else if time.Since(since) > 2*time.Second {
				return fmt.Errorf("metrics listen on %s: still in use after the process this one replaces stopped: %w", addr, err)
			}
		default:
		}
		if !logged {
			klog.InfoS("Metrics address in use: trying again until the process that holds it stops", "address", addr)
			logged = true
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// ServeUnix serves /healthz and /readyz (not /metrics) on a unix socket
// at path (mode 0600) until ctx ends: health checks that reach this
// process only, for exec probes. The socket's directory is made 0750 if
// missing, and must be plinth's own and writable by no one else: whoever
// could write there could answer the probes in plinth's place.
func (m *Metrics) ServeUnix(ctx context.Context, path string) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("health socket %s: %w", path, err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("health socket %s: %w", path, err)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !fi.IsDir() || !ok || int(st.Uid) != os.Geteuid() || fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("health socket %s: its directory must be a directory of plinth's own that no one else may write (mode %v)", path, fi.Mode())
	}
	l, err := unixsock.Listen(path, 0o600)
	if err != nil {
		return fmt.Errorf("health socket %s: %w", path, err)
	}
	return m.serve(ctx, l, m.healthHandler(), "Serving health on a unix socket")
}

func (m *Metrics) serve(ctx context.Context, l net.Listener, h http.Handler, msg string) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	klog.InfoS(msg, "address", l.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	// Serve closes the listener (a unix socket's file goes with it) before
	// it returns, also when Shutdown came first.
	<-errc
	return err
}
