// Package bench measures plinth standalone on real loop devices: full
// volume cycles (Create → Stage → Publish → Unpublish → Unstage → Delete)
// and the data path with fio. Run by `make bench`; it prints tables with
// ratios against a baseline measured in the same run and asserts no time.
package bench

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

var (
	cycles   = flag.Int("cycles", 40, "volume cycles per configuration")
	fioTime  = flag.Duration("fio-time", 8*time.Second, "runtime of each fio job")
	parallel = flag.Int("parallel", 8, "concurrent cycles in the parallel runs")
)

const benchEnv = "PLINTH_BENCH"

var steps = []string{"Create", "Stage", "Publish", "Unpublish", "Unstage", "Delete"}

type result struct {
	mode        string
	concurrency int
	n           int
	elapsed     time.Duration
	lat         map[string][]time.Duration
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func setup(t *testing.T) (*testenv.Client, string, string) {
	testenv.RequireHost(t, "fio")
	backing := testenv.Filesystem(t, "xfs", 16<<30)
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	os.MkdirAll(kubelet, 0o750)
	os.MkdirAll(filepath.Join(backing, "pool"), 0o700) // plinth refuses a missing pool directory
	sock := testenv.Standalone(t, app.StandaloneConfig{CSIConfig: app.CSIConfig{
		Endpoint: "unix://" + filepath.Join(root, "csi.sock"), Root: filepath.Join(root, "state"),
		Pools:        []app.PoolSpec{{Name: "bench", Backend: "file", Dir: filepath.Join(backing, "pool"), FsType: "ext4"}},
		AllowedPaths: []string{kubelet},
	}})
	return testenv.Dial(t, sock), kubelet, backing
}

func runCycles(t *testing.T, c *testenv.Client, dir, mode string, n, conc int) result {
	cap := testenv.MountCap("ext4")
	if mode == "block" {
		cap = testenv.BlockCap()
	}
	r := result{mode: mode, concurrency: conc, n: n, lat: map[string][]time.Duration{}}
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	ctx := context.Background()
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				name := fmt.Sprintf("%s-%d-%d", mode, conc, i)
				staging, target := filepath.Join(dir, name+"-s"), filepath.Join(dir, name+"-t")
				var id string
				calls := []func() error{
					func() error {
						resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
							VolumeCapabilities: []*csi.VolumeCapability{cap}})
						id = resp.GetVolume().GetVolumeId()
						return err
					},
					func() error {
						_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: cap})
						return err
					},
					func() error {
						_, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: cap})
						return err
					},
					func() error {
						_, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
						return err
					},
					func() error {
						_, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
						return err
					},
					func() error {
						_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
						return err
					},
				}
				for s, call := range calls {
					t0 := time.Now()
					if err := call(); err != nil {
						t.Errorf("%s %s: %v", steps[s], name, err)
						return
					}
					mu.Lock()
					r.lat[steps[s]] = append(r.lat[steps[s]], time.Since(t0))
					mu.Unlock()
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		work <- i
	}
	close(work)
	wg.Wait()
	r.elapsed = time.Since(start)
	return r
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d.Microseconds())/1000) }

func TestBench(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("benchmarks run with `make bench` (" + benchEnv + "=1)")
	}
	c, dir, backing := setup(t)
	var b strings.Builder
	fmt.Fprintf(&b, "\nVolume cycles (Create → Stage → Publish → Unpublish → Unstage → Delete), 64 MiB volumes, file pool on xfs (reflink), ext4 on the volume\n")
	fmt.Fprintf(&b, "%-10s %5s %6s %9s %8s", "mode", "conc", "cycles", "cycles/s", "vs seq")
	for _, s := range steps {
		fmt.Fprintf(&b, " %18s", s+" p50/p99 ms")
	}
	b.WriteString("\n")
	for _, mode := range []string{"filesystem", "block"} {
		seq := runCycles(t, c, dir, mode, *cycles, 1)
		par := runCycles(t, c, dir, mode, *cycles, *parallel)
		base := float64(seq.n) / seq.elapsed.Seconds()
		for _, r := range []result{seq, par} {
			rate := float64(r.n) / r.elapsed.Seconds()
			fmt.Fprintf(&b, "%-10s %5d %6d %9.1f %7.2fx", r.mode, r.concurrency, r.n, rate, rate/base)
			for _, s := range steps {
				fmt.Fprintf(&b, " %18s", ms(pct(r.lat[s], 0.5))+" / "+ms(pct(r.lat[s], 0.99)))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString(fioTable(t, c, dir, backing))
	fmt.Print(b.String())
}

// fioTable compares 4k random I/O (libaio, direct, iodepth 32) on a block
// volume, on a file inside a filesystem volume, and on a raw file of the
// same size on the pool's own filesystem (the baseline).
func fioTable(t *testing.T, c *testenv.Client, dir, backing string) string {
	ctx := context.Background()
	const size = 1 << 30
	targets := map[string]string{}
	for _, mode := range []string{"block", "filesystem"} {
		cap := testenv.MountCap("ext4")
		if mode == "block" {
			cap = testenv.BlockCap()
		}
		name := "fio-" + mode
		// A filesystem volume holds the 1 GiB test file plus ext4's own
		// metadata; the block volume is exactly the test size.
		volSize := int64(size)
		if mode == "filesystem" {
			volSize = 2 * size
		}
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: volSize},
			VolumeCapabilities: []*csi.VolumeCapability{cap}, Parameters: map[string]string{"provisioning": "thick"}})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetVolume().GetVolumeId()
		staging, target := filepath.Join(dir, name+"-s"), filepath.Join(dir, name+"-t")
		if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: cap}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: cap}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
				t.Error(err)
			}
			if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Error(err)
			}
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Error(err)
			}
		})
		targets[mode] = target
		if mode == "filesystem" {
			targets[mode] = filepath.Join(target, "fio.dat")
		}
	}
	targets["raw file"] = filepath.Join(backing, "raw-baseline.dat")
	t.Cleanup(func() { os.Remove(targets["raw file"]) })

	var b strings.Builder
	fmt.Fprintf(&b, "\nData path: fio 4k random I/O, libaio, direct=1, iodepth=32, %s per job, 1 GiB; baseline = a raw file on the pool's xfs\n", *fioTime)
	fmt.Fprintf(&b, "%-22s %12s %8s %12s %8s\n", "target", "read IOPS", "vs raw", "write IOPS", "vs raw")
	iops := map[string][2]float64{}
	for _, name := range []string{"raw file", "block", "filesystem"} {
		// Fill the target first: reads of never-written (fallocated or
		// sparse) blocks return zeros without touching the disk.
		if out, err := exec.Command("fio", "--name=fill", "--filename="+targets[name], "--rw=write", "--bs=1M", "--ioengine=libaio",
			"--direct=1", "--iodepth=8", fmt.Sprintf("--size=%d", size)).CombinedOutput(); err != nil {
			t.Fatalf("fio fill %s: %v: %s", targets[name], err, out)
		}
		for i, rw := range []string{"randread", "randwrite"} {
			v := iops[name]
			v[i] = fio(t, targets[name], rw, size)
			iops[name] = v
		}
	}
	base := iops["raw file"]
	for _, name := range []string{"raw file", "block", "filesystem"} {
		v := iops[name]
		label := map[string]string{"raw file": "raw file (baseline)", "block": "block volume (loop)", "filesystem": "file in ext4 volume"}[name]
		fmt.Fprintf(&b, "%-22s %12.0f %7.2fx %12.0f %7.2fx\n", label, v[0], v[0]/base[0], v[1], v[1]/base[1])
	}
	return b.String()
}

func fio(t *testing.T, target, rw string, size int64) float64 {
	out, err := exec.Command("fio", "--name=bench", "--filename="+target, "--rw="+rw, "--bs=4k", "--ioengine=libaio",
		"--direct=1", "--iodepth=32", fmt.Sprintf("--size=%d", size), fmt.Sprintf("--runtime=%d", int(fioTime.Seconds())),
		"--time_based", "--output-format=json").CombinedOutput()
	if err != nil {
		t.Fatalf("fio %s on %s: %v: %s", rw, target, err, out)
	}
	var res struct {
		Jobs []struct {
			Read, Write struct {
				IOPS float64 `json:"iops"`
			}
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		t.Fatalf("fio output: %v", err)
	}
	if strings.HasSuffix(rw, "read") {
		return res.Jobs[0].Read.IOPS
	}
	return res.Jobs[0].Write.IOPS
}
