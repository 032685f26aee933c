package app

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/leaderelection"
)

// TestRunElectedReleasesOnCancel stops a leading controller as SIGTERM
// does: the work the Lease guards finishes first, still under the Lease
// (another replica must not act while it does), then the Lease is handed
// over (holderIdentity cleared) before runElected returns, so the next
// leader takes over at once instead of after the lease duration.
func TestRunElectedReleasesOnCancel(t *testing.T) {
	core := fake.NewClientset()
	c := ControllerConfig{DriverName: "plinth.example.com", Namespace: "plinth", LeaseDuration: 2 * time.Second}
	holder := func() string { return leaseHolder(t, core, c) }

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	leading := make(chan string, 1)
	var releasedEarly, leadFinished atomic.Bool
	leadDone := make(chan struct{})
	lead := func(ctx context.Context) error {
		defer close(leadDone)
		leading <- holder()
		<-ctx.Done()
		// Work still in flight when the stop came: it must finish while
		// this replica still holds the Lease.
		for end := time.Now().Add(300 * time.Millisecond); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if holder() == "" {
				releasedEarly.Store(true)
			}
		}
		leadFinished.Store(true)
		return nil
	}
	done := make(chan error, 1)
	go func() {
		done <- runElected(ctx, c, core, lead, leaderelection.NewLeaderHealthzAdaptor(c.LeaseDuration), nil)
	}()
	select {
	case id := <-leading:
		if id == "" {
			t.Fatal("leading with no holder in the Lease")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not leading after 10s")
	}
	cancel() // SIGTERM
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("runElected: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runElected did not return 10s after cancel")
	}
	if !leadFinished.Load() {
		t.Error("runElected returned while the work under the Lease was still running")
	}
	<-leadDone
	if releasedEarly.Load() {
		t.Error("the Lease was released while the work under it was still running")
	}
	if h := holder(); h != "" {
		t.Errorf("Lease holder after runElected returned: %q, want none (released)", h)
	}
}

// A controller loop that fails ends runElected with its error (and hands
// the Lease over), rather than leaving the process leading and idle.
func TestRunElectedLeadError(t *testing.T) {
	core := fake.NewClientset()
	c := ControllerConfig{DriverName: "plinth.example.com", Namespace: "plinth", LeaseDuration: 2 * time.Second}
	broken := errors.New("informers never synced")
	done := make(chan error, 1)
	go func() {
		done <- runElected(context.Background(), c, core, func(context.Context) error { return broken }, nil, nil)
	}()
	select {
	case err := <-done:
		if !errors.Is(err, broken) {
			t.Errorf("runElected: %v, want %v", err, broken)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runElected still running 10s after its work failed")
	}
	if h := leaseHolder(t, core, c); h != "" {
		t.Errorf("Lease holder after the work failed: %q, want none", h)
	}
}

// leaseHolder is the holderIdentity of the controller's Lease.
func leaseHolder(t *testing.T, core kubernetes.Interface, c ControllerConfig) string {
	l, err := core.CoordinationV1().Leases(c.Namespace).Get(context.Background(), "plinth-controller-"+leaseSuffix(c.DriverName), metav1.GetOptions{})
	if err != nil {
		t.Errorf("get Lease: %v", err)
		return "?"
	}
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}
