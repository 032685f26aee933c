// Package bench measures plinth standalone on real loop devices: full
// volume cycles (Create → Stage → Publish → Unpublish → Unstage → Delete)
// side by side with another CSI driver, and the data path with fio. Run by
// `make bench`; it prints tables with ratios against a baseline measured in
// the same run and asserts no time.
package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"

	"github.com/plinth-dev/plinth/pkg/app"
	"github.com/plinth-dev/plinth/test/testenv"
)

var (
	cycles    = flag.Int("cycles", 24, "volume cycles per configuration, driver and round")
	rounds    = flag.Int("rounds", 3, "interleaved rounds (plinth, then the other driver) per configuration")
	parallel  = flag.Int("parallel", 8, "workers in the parallel runs")
	against   = flag.String("against", "", "CSI endpoint (unix:///path/csi.sock) of a driver to compare plinth with; its node capabilities say whether it stages. Default: the csi-driver-host-path stand-in of test/bench/refdriver, run as a process of its own")
	plinthBin = flag.String("plinth", "", "a plinth binary, run as `plinth standalone` in a process of its own (make bench passes bin/plinth): its peak RSS is reported. Default: plinth in the test process")
	withFio   = flag.Bool("fio", true, "measure the data path with fio")
	fioTime   = flag.Duration("fio-time", 3*time.Second, "runtime of each fio job")
	fioRounds = flag.Int("fio-rounds", 5, "interleaved fio rounds over all targets (after one warm-up pass)")
	fioSize   = flag.Int64("fio-size", 512<<20, "bytes of each fio target")
)

const benchEnv = "PLINTH_BENCH"

var steps = []string{"Create", "Stage", "Publish", "Unpublish", "Unstage", "Delete"}

// driver is one CSI driver under test.
type driver struct {
	name  string
	c     *testenv.Client
	stage bool   // STAGE_UNSTAGE_VOLUME advertised
	pid   int    // its process, when it runs apart (for its RSS)
	scrap string // plinth's metrics address, for the programs it started
}

type result struct {
	mode        string
	concurrency int
	n           int
	elapsed     time.Duration
	lat         map[string][]time.Duration
}

func (r result) rate() float64 { return float64(r.n) / r.elapsed.Seconds() }

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func waitSocket(t *testing.T, sock string, cmd *exec.Cmd) {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		if cmd.ProcessState != nil {
			break
		}
	}
	t.Fatalf("%s did not listen on %s", cmd.Path, sock)
}

// stopProcess ends a driver process with SIGTERM (SIGKILL after 20 s).
func stopProcess(t *testing.T, cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Errorf("%s did not stop on SIGTERM", cmd.Path)
	}
}

// startPlinth runs plinth standalone with one file pool (ext4 by default)
// on backing: the real binary when -plinth names one, else in-process.
func startPlinth(t *testing.T, root, kubelet, backing string) *driver {
	pool := filepath.Join(backing, "pool")
	os.MkdirAll(pool, 0o700) // plinth refuses a missing pool directory
	sock, state, addr := filepath.Join(root, "plinth.sock"), filepath.Join(root, "state"), freeAddr(t)
	d := &driver{name: "plinth", stage: true, scrap: addr}
	if *plinthBin == "" {
		testenv.Standalone(t, app.StandaloneConfig{CSIConfig: app.CSIConfig{
			Endpoint: "unix://" + sock, Root: state, MetricsAddress: addr,
			Pools:        []app.PoolSpec{{Name: "bench", Backend: "file", Dir: pool, FsType: "ext4"}},
			AllowedPaths: []string{kubelet},
		}})
		d.name = "plinth (in-process)"
	} else {
		logf, err := os.Create(filepath.Join(root, "plinth.log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		cmd := exec.Command(*plinthBin, "standalone", "--root", state, "--endpoint", "unix://"+sock,
			"--pool", "name=bench,backend=file,dir="+pool+",fstype=ext4", "--allowed-path", kubelet,
			"--metrics-address", addr, "--node-id", "bench")
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopProcess(t, cmd) })
		waitSocket(t, sock, cmd)
		d.pid = cmd.Process.Pid
	}
	d.c = testenv.Dial(t, sock)
	return d
}

// startPeer dials -against, or runs the host-path stand-in
// (test/bench/refdriver) in a process of its own: this test binary, asked
// by refdriverEnv.
func startPeer(t *testing.T, root, backing string) *driver {
	d := &driver{name: "host-path stand-in"}
	sock := ""
	if *against != "" {
		var ok bool
		if sock, ok = strings.CutPrefix(*against, "unix://"); !ok {
			t.Fatalf("-against %q: only unix:// endpoints", *against)
		}
		d.name = *against
		d.pid = peerPID(t, sock) // for its memory
	} else {
		sock = filepath.Join(root, "ref.sock")
		logf, err := os.Create(filepath.Join(root, "ref.log"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { logf.Close() })
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), refdriverEnv+"="+sock+"|"+filepath.Join(backing, "ref"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { stopProcess(t, cmd) })
		waitSocket(t, sock, cmd)
		d.pid = cmd.Process.Pid
	}
	d.c = testenv.Dial(t, sock)
	caps, err := d.c.NodeGetCapabilities(context.Background(), &csi.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("%s: NodeGetCapabilities: %v", d.name, err)
	}
	for _, c := range caps.GetCapabilities() {
		if c.GetRpc().GetType() == csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME {
			d.stage = true
		}
	}
	return d
}

// peerPID is the process listening on the unix socket sock, from the
// kernel's credentials of a connection to it (SO_PEERCRED); 0 if unknown.
func peerPID(t *testing.T, sock string) int {
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatalf("dial %s: %v", sock, err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0
	}
	pid := 0
	_ = raw.Control(func(fd uintptr) {
		if cred, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED); err == nil {
			pid = int(cred.Pid)
		}
	})
	return pid
}

func capability(mode string) *csi.VolumeCapability {
	if mode == "block" {
		return testenv.BlockCap()
	}
	return testenv.MountCap("ext4")
}

// runCycles runs n volume cycles of mode on d with conc workers; after,
// when set, is called after each step (used with one worker).
func runCycles(t *testing.T, d *driver, dir, tag, mode string, n, conc int, after func(step string)) result {
	cap := capability(mode)
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
				name := fmt.Sprintf("%s-%s-%d-%d", tag, mode, conc, i)
				staging, target := filepath.Join(dir, name+"-s"), filepath.Join(dir, name+"-t")
				var id string
				calls := map[string]func() error{
					"Create": func() error {
						resp, err := d.c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: 64 << 20},
							VolumeCapabilities: []*csi.VolumeCapability{cap}})
						id = resp.GetVolume().GetVolumeId()
						return err
					},
					"Stage": func() error {
						_, err := d.c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: cap})
						return err
					},
					"Publish": func() error {
						req := &csi.NodePublishVolumeRequest{VolumeId: id, TargetPath: target, VolumeCapability: cap}
						if d.stage {
							req.StagingTargetPath = staging
						}
						_, err := d.c.NodePublishVolume(ctx, req)
						return err
					},
					"Unpublish": func() error {
						_, err := d.c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
						return err
					},
					"Unstage": func() error {
						_, err := d.c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
						return err
					},
					"Delete": func() error {
						_, err := d.c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
						return err
					},
				}
				for _, s := range steps {
					if !d.stage && (s == "Stage" || s == "Unstage") {
						continue
					}
					t0 := time.Now()
					if err := calls[s](); err != nil {
						t.Errorf("%s: %s %s: %v", d.name, s, name, err)
						return
					}
					mu.Lock()
					r.lat[s] = append(r.lat[s], time.Since(t0))
					mu.Unlock()
					if after != nil {
						after(s)
					}
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

// load is the machine's load average and the CPU time (user+system) spent
// by everything on it since the previous call, in CPUs busy.
type load struct {
	at    time.Time
	ticks uint64
}

func readLoad() (load, string) {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	s, _ := os.ReadFile("/proc/stat")
	var ticks uint64
	if line, _, ok := strings.Cut(string(s), "\n"); ok {
		for i, v := range strings.Fields(line)[1:] {
			if i == 3 || i == 4 { // idle, iowait
				continue
			}
			n, _ := strconv.ParseUint(v, 10, 64)
			ticks += n
		}
	}
	avg := ""
	if len(f) >= 3 {
		avg = strings.Join(f[:3], " ")
	}
	return load{at: time.Now(), ticks: ticks}, avg
}

func (l load) busy(now load) float64 {
	return float64(now.ticks-l.ticks) / 100 / now.at.Sub(l.at).Seconds() // USER_HZ is 100
}

func TestBench(t *testing.T) {
	if os.Getenv(benchEnv) == "" {
		t.Skip("benchmarks run with `make bench` (" + benchEnv + "=1)")
	}
	testenv.RequireHost(t, "fio", "losetup", "fallocate", "mount", "umount")
	backing := testenv.Filesystem(t, "xfs", 16<<30)
	root := t.TempDir()
	kubelet := filepath.Join(root, "kubelet")
	os.MkdirAll(kubelet, 0o750)
	plinth := startPlinth(t, root, kubelet, backing)
	peer := startPeer(t, root, backing)
	var b strings.Builder
	l0, avg0 := readLoad()
	fmt.Fprintf(&b, "\nMachine: %d CPUs, load average %s at start\n", runtimeCPUs(), avg0)
	b.WriteString(cycleTables(t, plinth, peer, kubelet))
	l1, avg1 := readLoad()
	fmt.Fprintf(&b, "Cycles took %s; the machine's CPUs were %.2f busy on average (all processes, this bench included); load average %s at the end\n",
		l1.at.Sub(l0.at).Round(time.Second), l0.busy(l1), avg1)
	b.WriteString(programTable(t, plinth, kubelet))
	b.WriteString(rssTable(plinth, peer))
	if *withFio {
		b.WriteString(fioTable(t, plinth.c, kubelet, backing))
		l2, avg2 := readLoad()
		fmt.Fprintf(&b, "fio took %s; CPUs %.2f busy on average; load average %s at the end\n", l2.at.Sub(l1.at).Round(time.Second), l1.busy(l2), avg2)
	}
	fmt.Print(b.String())
}

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "\nprocessor") + 1
}

// cycleTables runs, per mode and worker count, rounds of plinth then the
// peer, and prints cycles/s, the per-round ratios and their median, and
// each step's latency.
func cycleTables(t *testing.T, plinth, peer *driver, dir string) string {
	var b strings.Builder
	stages := "stages"
	if !peer.stage {
		stages = "does not stage"
	}
	fmt.Fprintf(&b, "\nVolume cycles (Create → Stage → Publish → Unpublish → Unstage → Delete), 64 MiB volumes, both drivers on one xfs (reflink) on a loop device;\n"+
		"plinth: file pool, ext4 on filesystem volumes; B = %s (%s). %d cycles per driver, configuration and round; rounds interleaved A B.\n", peer.name, stages, *cycles)
	fmt.Fprintf(&b, "%-10s %5s %14s %14s %-24s %8s\n", "mode", "conc", "plinth cyc/s", "B cyc/s", "ratio per round", "median")
	type cfg struct {
		mode string
		conc int
	}
	var cfgs []cfg
	for _, m := range []string{"filesystem", "block"} {
		for _, c := range []int{1, *parallel} {
			cfgs = append(cfgs, cfg{m, c})
		}
	}
	lat := map[string]map[cfg]map[string][]time.Duration{plinth.name: {}, peer.name: {}}
	var lines []string
	rates := map[cfg][2][]float64{}
	for r := 0; r < *rounds; r++ {
		for _, c := range cfgs {
			rr := rates[c]
			for i, d := range []*driver{plinth, peer} {
				res := runCycles(t, d, dir, fmt.Sprintf("r%d", r), c.mode, *cycles, c.conc, nil)
				rr[i] = append(rr[i], res.rate())
				if lat[d.name][c] == nil {
					lat[d.name][c] = map[string][]time.Duration{}
				}
				for s, v := range res.lat {
					lat[d.name][c][s] = append(lat[d.name][c][s], v...)
				}
			}
			rates[c] = rr
		}
	}
	for _, c := range cfgs {
		var ratios []float64
		var per []string
		for r := range rates[c][0] {
			ratios = append(ratios, rates[c][0][r]/rates[c][1][r])
			per = append(per, fmt.Sprintf("%.2f", ratios[r]))
		}
		lines = append(lines, fmt.Sprintf("%-10s %5d %14.1f %14.1f %-24s %7.2fx", c.mode, c.conc, median(rates[c][0]), median(rates[c][1]), strings.Join(per, " "), median(ratios)))
	}
	b.WriteString(strings.Join(lines, "\n") + "\n")
	fmt.Fprintf(&b, "\nStep latency p50 / p99 ms (all rounds)\n%-20s %-10s %5s", "driver", "mode", "conc")
	for _, s := range steps {
		fmt.Fprintf(&b, " %16s", s)
	}
	b.WriteString("\n")
	for _, d := range []*driver{plinth, peer} {
		for _, c := range cfgs {
			fmt.Fprintf(&b, "%-20.20s %-10s %5d", d.name, c.mode, c.conc)
			for _, s := range steps {
				v := lat[d.name][c][s]
				cell := "-"
				if len(v) > 0 {
					cell = ms(pct(v, 0.5)) + " / " + ms(pct(v, 0.99))
				}
				fmt.Fprintf(&b, " %16s", cell)
			}
			b.WriteString("\n")
		}
	}
	return b.String()
}

// launched reads plinth_programs_launched_total from plinth's metrics.
func launched(addr string) (map[string]float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `plinth_programs_launched_total{program="`)
		if !ok {
			continue
		}
		name, val, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		n, err := strconv.ParseFloat(val, 64)
		if err != nil {
			return nil, err
		}
		out[name] = n
	}
	return out, sc.Err()
}

// metric reads one unlabelled sample from plinth's metrics.
func metric(addr, name string) (float64, error) {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("no %s in the metrics", name)
}

// programTable runs one cycle per mode with one worker and reads, after
// each step, which programs plinth started during it.
func programTable(t *testing.T, plinth *driver, dir string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nPrograms plinth started per step of one cycle (plinth_programs_launched_total)\n%-10s", "mode")
	for _, s := range steps {
		fmt.Fprintf(&b, " %-14s", s)
	}
	fmt.Fprintf(&b, " %s\n", "cycle")
	for _, mode := range []string{"filesystem", "block"} {
		prev, err := launched(plinth.scrap)
		if err != nil {
			return fmt.Sprintf("\nPrograms per step: metrics not readable: %v\n", err)
		}
		cells := map[string]string{}
		total := 0.0
		runCycles(t, plinth, dir, "programs", mode, 1, 1, func(step string) {
			now, err := launched(plinth.scrap)
			if err != nil {
				t.Error(err)
				return
			}
			var names []string
			for name, n := range now {
				if d := n - prev[name]; d > 0 {
					names = append(names, fmt.Sprintf("%s×%.0f", name, d))
					total += d
				}
			}
			sort.Strings(names)
			cells[step] = strings.Join(names, ",")
			if cells[step] == "" {
				cells[step] = "0"
			}
			prev = now
		})
		fmt.Fprintf(&b, "%-10s", mode)
		for _, s := range steps {
			fmt.Fprintf(&b, " %-14s", cells[s])
		}
		fmt.Fprintf(&b, " %.0f\n", total)
	}
	return b.String()
}

// rssTable reports the peak and current resident memory of each driver
// that runs in a process of its own.
func rssTable(ds ...*driver) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\nMemory of the serving processes after the cycles (/proc/PID/status; Go heap in use from plinth's metrics)\n%-24s %12s %12s %12s %12s %12s\n",
		"process", "VmHWM", "VmRSS", "RssAnon", "RssFile", "Go heap")
	for _, d := range ds {
		if d.pid == 0 {
			fmt.Fprintf(&b, "%-24.24s %12s\n", d.name, "in-process")
			continue
		}
		heap := "-"
		if d.scrap != "" {
			if v, err := metric(d.scrap, "go_memstats_heap_inuse_bytes"); err == nil {
				heap = fmt.Sprintf("%.0f kB", v/1024)
			}
		}
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid))
		val := map[string]string{}
		for _, line := range strings.Split(string(st), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok {
				val[k] = strings.TrimSpace(v)
			}
		}
		fmt.Fprintf(&b, "%-24.24s %12s %12s %12s %12s %12s\n", d.name, val["VmHWM"], val["VmRSS"], val["RssAnon"], val["RssFile"], heap)
	}
	return b.String()
}

// fioTable compares 4k random I/O (libaio, direct, iodepth 32) on a raw
// file of the pool's own filesystem (the baseline) with thin and thick
// block volumes and a file in thick ext4 and xfs volumes: one warm-up pass
// (fill, then each job once), then interleaved rounds over all targets;
// ratios are per round against the raw file, and their median is printed.
func fioTable(t *testing.T, c *testenv.Client, dir, backing string) string {
	ctx := context.Background()
	size := *fioSize
	type target struct{ name, label, path string }
	targets := []target{{name: "raw", label: "raw file (baseline)", path: filepath.Join(backing, "raw-baseline.dat")}}
	t.Cleanup(func() { os.Remove(targets[0].path) })
	for _, v := range []struct {
		name, label, fsType string
		thick               bool
	}{
		{"block-thin", "block volume, thin", "", false},
		{"block-thick", "block volume, thick", "", true},
		{"ext4-thick", "file in ext4 volume, thick", "ext4", true},
		{"xfs-thick", "file in xfs volume, thick", "xfs", true},
	} {
		cap := testenv.BlockCap()
		volSize := size
		if v.fsType != "" {
			// The test file plus the filesystem's own metadata.
			cap, volSize = testenv.MountCap(v.fsType), max(2*size, 1<<30)
		}
		params := map[string]string{}
		if v.thick {
			params["provisioning"] = "thick"
		}
		resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "fio-" + v.name, CapacityRange: &csi.CapacityRange{RequiredBytes: volSize},
			VolumeCapabilities: []*csi.VolumeCapability{cap}, Parameters: params})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetVolume().GetVolumeId()
		staging, tpath := filepath.Join(dir, "fio-"+v.name+"-s"), filepath.Join(dir, "fio-"+v.name+"-t")
		if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: cap}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: tpath, VolumeCapability: cap}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if _, err := c.NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: tpath}); err != nil {
				t.Error(err)
			}
			if _, err := c.NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
				t.Error(err)
			}
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
				t.Error(err)
			}
		})
		file := tpath
		if v.fsType != "" {
			file = filepath.Join(tpath, "fio.dat")
		}
		targets = append(targets, target{v.name, v.label, file})
	}
	// Warm-up: fill each target (reads of never-written blocks return
	// zeros without touching the disk), then run each job once, untimed.
	for _, tg := range targets {
		if out, err := exec.Command("fio", "--name=fill", "--filename="+tg.path, "--rw=write", "--bs=1M", "--ioengine=libaio",
			"--direct=1", "--iodepth=8", fmt.Sprintf("--size=%d", size)).CombinedOutput(); err != nil {
			t.Fatalf("fio fill %s: %v: %s", tg.path, err, out)
		}
		for _, rw := range []string{"randread", "randwrite"} {
			fio(t, tg.path, rw, size, time.Second)
		}
	}
	iops := map[string][2][]float64{}
	for r := 0; r < *fioRounds; r++ {
		for _, tg := range targets {
			v := iops[tg.name]
			for i, rw := range []string{"randread", "randwrite"} {
				v[i] = append(v[i], fio(t, tg.path, rw, size, *fioTime))
			}
			iops[tg.name] = v
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "\nData path: fio 4k random I/O, libaio, direct=1, iodepth=32, %s per job, %d MiB; baseline = a raw file on the pool's xfs;\n"+
		"one warm-up pass, then %d rounds interleaved over the targets: median IOPS, and the median of the per-round ratios to raw\n", *fioTime, size>>20, *fioRounds)
	fmt.Fprintf(&b, "%-28s %12s %8s %12s %8s\n", "target", "read IOPS", "vs raw", "write IOPS", "vs raw")
	raw := iops["raw"]
	for _, tg := range targets {
		v := iops[tg.name]
		var ratio [2][]float64
		for i := range 2 {
			for r := range v[i] {
				ratio[i] = append(ratio[i], v[i][r]/raw[i][r])
			}
		}
		fmt.Fprintf(&b, "%-28s %12.0f %7.2fx %12.0f %7.2fx\n", tg.label, median(v[0]), median(ratio[0]), median(v[1]), median(ratio[1]))
	}
	return b.String()
}

func fio(t *testing.T, target, rw string, size int64, runtime time.Duration) float64 {
	out, err := exec.Command("fio", "--name=bench", "--filename="+target, "--rw="+rw, "--bs=4k", "--ioengine=libaio",
		"--direct=1", "--iodepth=32", fmt.Sprintf("--size=%d", size), fmt.Sprintf("--runtime=%dms", runtime.Milliseconds()),
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
