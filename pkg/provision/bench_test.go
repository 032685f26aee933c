package provision

import (
	"context"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// TestBenchProvisionLock measures PV creation through Provisioner.Provision
// for 200 PVCs (WaitForFirstConsumer, spread over 10 nodes, 16 at a time:
// plinth controller's default --threads) with the create lock of before
// issue 11 (one for every node, held across the volume object's API write)
// and with today's (per node, let go before the write), in alternate
// rounds of the same run. The API server is the fake client with a fixed
// delay on each volume object's create standing in for the round trip
// (PLINTH_BENCH_API_MS, default 5), and nodes answer at once: the figures
// show what the lock costs, not what a real cluster does. It prints a
// table; it asserts nothing about time.
//
//	PLINTH_BENCH=1 go test -count=1 -run TestBenchProvisionLock -v ./pkg/provision/
func TestBenchProvisionLock(t *testing.T) {
	if os.Getenv("PLINTH_BENCH") == "" {
		t.Skip("a benchmark: PLINTH_BENCH=1 runs it")
	}
	const pvcs, nodeCount, threads, rounds = 200, 10, 16, 3
	apiDelay := 5 * time.Millisecond
	if ms := os.Getenv("PLINTH_BENCH_API_MS"); ms != "" {
		d, err := time.ParseDuration(ms + "ms")
		if err != nil {
			t.Fatal(err)
		}
		apiDelay = d
	}
	var nodes []runtime.Object
	for i := range nodeCount {
		nodes = append(nodes, plinthNode(fmt.Sprintf("n%02d", i), poolStatus("fast", 1<<40)))
	}
	wffc := storagev1.VolumeBindingWaitForFirstConsumer
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "sc"}, Provisioner: "plinth.example.com", VolumeBindingMode: &wffc}

	run := func(serial bool, round int) (time.Duration, error) {
		c, _ := fakeClusterOf(t, nodes, withHook(func(v *v1alpha1.PlinthVolume) {
			time.Sleep(apiDelay)
			markReady(v)
		}), nil)
		c.serialCreates = serial
		c.Wait = 30 * time.Second
		p := &Provisioner{Driver: "plinth.example.com", TopologyKey: "topology.plinth.example.com/node", Controller: volume.NewControllerOver(c)}
		work := make(chan int)
		var wg sync.WaitGroup
		var mu sync.Mutex
		var first error
		start := time.Now()
		for range threads {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range work {
					opts := controller.ProvisionOptions{StorageClass: sc, PVName: fmt.Sprintf("pvc-%d-%d", round, i), PVC: claimOf("1Gi"),
						SelectedNodeName: fmt.Sprintf("n%02d", i%nodeCount)}
					if _, _, err := p.Provision(context.Background(), opts); err != nil {
						mu.Lock()
						first = err
						mu.Unlock()
					}
				}
			}()
		}
		for i := range pvcs {
			work <- i
		}
		close(work)
		wg.Wait()
		return time.Since(start), first
	}

	results := map[string][]float64{}
	for round := range rounds {
		for _, serial := range []bool{true, false} {
			d, err := run(serial, round)
			if err != nil {
				t.Fatal(err)
			}
			name := "per node, before the write"
			if serial {
				name = "one for all nodes, across the write"
			}
			results[name] = append(results[name], float64(pvcs)/d.Seconds())
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\n%d PVCs, %d nodes, %d threads, API write %s, %d rounds interleaved\n", pvcs, nodeCount, threads, apiDelay, rounds)
	fmt.Fprintf(&b, "%-38s %12s %12s\n", "create lock", "PVs/s median", "rounds")
	names := make([]string, 0, len(results))
	for n := range results {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		r := append([]float64(nil), results[n]...)
		sort.Float64s(r)
		var each []string
		for _, v := range results[n] {
			each = append(each, fmt.Sprintf("%.0f", v))
		}
		fmt.Fprintf(&b, "%-38s %12.0f %12s\n", n, r[len(r)/2], strings.Join(each, " "))
	}
	t.Log(b.String())
}
