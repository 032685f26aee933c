package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// /healthz runs the live checks and /readyz the ready ones; a failing
// check answers 503 and names itself.
func TestHealthAndReadiness(t *testing.T) {
	m := New()
	alive, ready := true, false
	m.AddLiveCheck("csi-grpc", func(context.Context) error {
		if !alive {
			return errors.New("socket does not answer")
		}
		return nil
	})
	m.AddReadyCheck("kubelet-registration", func(context.Context) error {
		if !ready {
			return errors.New("not registered")
		}
		return nil
	})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz with a live gRPC socket: %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "kubelet-registration: not registered") {
		t.Errorf("/readyz before registration: %d %q", code, body)
	}
	alive, ready = false, true
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "csi-grpc: socket does not answer") {
		t.Errorf("/healthz with a dead socket: %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz after registration: %d", code)
	}
}

// An empty pool's volume and snapshot counts are 0 in every state, not
// missing; a state the pool reports is kept.
func TestEmptyPoolCountsZero(t *testing.T) {
	c := NewPoolCollector(func(context.Context) ([]PoolSample, error) {
		return []PoolSample{{Name: "empty", Backend: "file"}, {Name: "busy", Backend: "btrfs", Volumes: map[string]int{"ready": 2}}}, nil
	})
	want := `
# HELP plinth_pool_volumes Volumes in the pool, by state.
# TYPE plinth_pool_volumes gauge
plinth_pool_volumes{backend="btrfs",pool="busy",state="creating"} 0
plinth_pool_volumes{backend="btrfs",pool="busy",state="deleting"} 0
plinth_pool_volumes{backend="btrfs",pool="busy",state="ready"} 2
plinth_pool_volumes{backend="file",pool="empty",state="creating"} 0
plinth_pool_volumes{backend="file",pool="empty",state="deleting"} 0
plinth_pool_volumes{backend="file",pool="empty",state="ready"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "plinth_pool_volumes"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "plinth_pool_snapshots"); n != 6 {
		t.Errorf("%d snapshot series for two pools, want 3 states each", n)
	}
}

// Every pool says whether it runs degraded, 0 when it does not.
func TestPoolDegraded(t *testing.T) {
	c := NewPoolCollector(func(context.Context) ([]PoolSample, error) {
		return []PoolSample{{Name: "whole", Backend: "file"}, {Name: "mirror", Backend: "btrfs", Degraded: true}}, nil
	})
	want := `
# HELP plinth_pool_degraded 1 while the pool serves with less redundancy than it was made with (a raid1 pool with a disk gone), else 0.
# TYPE plinth_pool_degraded gauge
plinth_pool_degraded{backend="btrfs",pool="mirror"} 1
plinth_pool_degraded{backend="file",pool="whole"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "plinth_pool_degraded"); err != nil {
		t.Error(err)
	}
}

// The controller's own series: its operations by result and whether it
// leads; a node agent, which does not register them, exports neither.
func TestControllerMetrics(t *testing.T) {
	node := New()
	if n, err := testutil.GatherAndCount(node.reg, "plinth_controller_leader", "plinth_controller_operations_total"); err != nil || n != 0 {
		t.Errorf("a node agent exports %d controller series (%v)", n, err)
	}
	m := New()
	if err := m.RegisterController(); err != nil {
		t.Fatal(err)
	}
	m.SetLeader(true)
	m.ObserveOperation("provision", "success", 20*time.Millisecond)
	m.ObserveOperation("provision", "error", time.Second)
	m.ObserveOperation("provision", "success", 30*time.Millisecond)
	want := `
# HELP plinth_controller_leader 1 while this plinth controller holds the leader Lease (or runs without leader election), 0 otherwise.
# TYPE plinth_controller_leader gauge
plinth_controller_leader 1
# HELP plinth_controller_operations_total Operations plinth controller finished on claims and volumes, by operation (provision, delete, expand) and result (success, error; for provision also in_progress, reschedule).
# TYPE plinth_controller_operations_total counter
plinth_controller_operations_total{operation="provision",result="error"} 1
plinth_controller_operations_total{operation="provision",result="success"} 2
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want), "plinth_controller_leader", "plinth_controller_operations_total"); err != nil {
		t.Error(err)
	}
	if n, err := testutil.GatherAndCount(m.reg, "plinth_controller_operation_duration_seconds"); err != nil || n != 2 {
		t.Errorf("duration series: %d (%v), want 2", n, err)
	}
	m.SetLeader(false)
	if v := testutil.ToFloat64(m.leader); v != 0 {
		t.Errorf("leader after losing the Lease: %v", v)
	}
}
