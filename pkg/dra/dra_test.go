package dra

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/kubeletplugin"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/plinth-dev/plinth/pkg/device"
)

const driver = "plinth.example.com"

func fixture(t *testing.T, name string) string {
	t.Helper()
	return filepath.Join("..", "..", "testdata", "devices", name)
}

// gpuConfig is the default GPU resource, served through DRA.
func gpuConfig() device.Config {
	cfg := device.DefaultConfig()
	cfg.Resources[0].API = device.APIDRA
	cfg.Defaults()
	return cfg
}

// inventory scans a copy of the fixture's /dev (so a test may remove
// device nodes) and its sysfs and procfs in place.
func inventory(t *testing.T, name string, cfg device.Config) (*device.Inventory, string) {
	t.Helper()
	fx := fixture(t, name)
	dev := filepath.Join(t.TempDir(), "dev")
	if err := os.CopyFS(dev, os.DirFS(filepath.Join(fx, "dev"))); err != nil {
		t.Fatal(err)
	}
	inv := device.NewInventory(device.Host{Sysfs: filepath.Join(fx, "sys"), Dev: dev, Proc: filepath.Join(fx, "proc")}, cfg)
	if _, _, err := inv.Scan(); err != nil {
		t.Fatal(err)
	}
	return inv, dev
}

func newDriver(t *testing.T, inv *device.Inventory, cfg device.Config, state, cdi, dev string) *Driver {
	t.Helper()
	d, _ := newCountedDriver(t, inv, cfg, state, cdi, dev)
	return d
}

// newCountedDriver is newDriver with a count of the claims it prepares, as
// its metrics hear them (ObservePrepare: answers from the checkpoint do not
// count).
func newCountedDriver(t *testing.T, inv *device.Inventory, cfg device.Config, state, cdi, dev string) (*Driver, *atomic.Int64) {
	t.Helper()
	var res []device.Resource
	for _, r := range cfg.Resources {
		if r.DRA() {
			res = append(res, r)
		}
	}
	n := &atomic.Int64{}
	d, err := New(Config{DriverName: driver, NodeName: "node-a", StateDir: state, CDIDir: cdi, DevRoot: dev, Resources: res, Inventory: inv,
		ObservePrepare: func(int, time.Duration) { n.Add(1) }})
	if err != nil {
		t.Fatal(err)
	}
	return d, n
}

// recorded is what d's checkpoint file lists as prepared.
func recorded(t *testing.T, d *Driver) map[types.UID]PreparedClaim {
	t.Helper()
	claims, err := d.cp.load()
	if err != nil {
		t.Fatal(err)
	}
	return claims
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// The slice of an 8-GPU machine: eight devices (not the BMC's VGA, whose
// driver is not a GPU driver), each with the attributes claims select on.
func TestSliceContents(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	d := newDriver(t, inv, cfg, t.TempDir(), t.TempDir(), dev)
	pool := d.resources().Pools["node-a"]
	if len(pool.Slices) != 1 {
		t.Fatalf("slices = %d, want 1", len(pool.Slices))
	}
	devs := pool.Slices[0].Devices
	if len(devs) != 8 {
		t.Fatalf("devices = %d, want 8", len(devs))
	}
	numa := map[int64]int{}
	roots := map[string]int{}
	for _, x := range devs {
		if !dnsLabel.MatchString(x.Name) {
			t.Errorf("device name %q is not a DNS label", x.Name)
		}
		a := x.Attributes
		for _, k := range []resourceapi.QualifiedName{AttrResource, AttrVendor, AttrDeviceID, AttrClass, AttrDriver, AttrIndex, AttrPCIeSwitch, AttrModel, AttrUUID,
			"resource.kubernetes.io/pciBusID", "resource.kubernetes.io/pcieRoot", "resource.kubernetes.io/numaNode"} {
			if _, ok := a[k]; !ok {
				t.Errorf("%s: no attribute %s", x.Name, k)
			}
		}
		if *a[AttrVendor].StringValue != "0x10de" || *a[AttrDriver].StringValue != "nvidia" || *a[AttrResource].StringValue != "example.com/gpu" {
			t.Errorf("%s: attributes %v", x.Name, a)
		}
		if want := "pci-" + strings.NewReplacer(":", "-", ".", "-").Replace(*a["resource.kubernetes.io/pciBusID"].StringValue); x.Name != want {
			t.Errorf("name %s, want %s", x.Name, want)
		}
		numa[*a["resource.kubernetes.io/numaNode"].IntValue]++
		roots[*a["resource.kubernetes.io/pcieRoot"].StringValue]++
		if len(x.Taints) != 0 {
			t.Errorf("%s: healthy device tainted: %v", x.Name, x.Taints)
		}
	}
	if numa[0] != 4 || numa[1] != 4 {
		t.Errorf("NUMA nodes %v, want 4 and 4", numa)
	}
	if len(roots) < 2 {
		t.Errorf("pcieRoots %v: the fixture's GPUs hang under several host bridges", roots)
	}
}

// The selectors of the shipped DeviceClass and of a claim asking for one
// NUMA node compile and pick what they say, with Kubernetes' own CEL
// environment for devices.
func TestCELSelectors(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	d := newDriver(t, inv, cfg, t.TempDir(), t.TempDir(), dev)
	devs := d.resources().Pools["node-a"].Slices[0].Devices
	count := func(expr string) int {
		t.Helper()
		r := cel.GetCompiler(cel.Features{}).CompileCELExpression(expr, cel.Options{})
		if r.Error != nil {
			t.Fatalf("%s: %v", expr, r.Error)
		}
		n := 0
		for _, x := range devs {
			ok, _, err := r.DeviceMatches(context.Background(), cel.Device{Driver: driver, Attributes: x.Attributes})
			if err != nil {
				t.Fatalf("%s on %s: %v", expr, x.Name, err)
			}
			if ok {
				n++
			}
		}
		return n
	}
	for expr, want := range map[string]int{
		ClassSelector(driver, cfg.Resources[0]):                                  8,
		`device.attributes["resource.kubernetes.io"].numaNode == 1`:              4,
		`device.attributes["plinth.example.com"].deviceID == "0x2330"`:           8,
		`device.attributes["plinth.example.com"].index < 2`:                      2,
		`device.attributes["resource.kubernetes.io"].pcieRoot == "pci0000:15"`:   2,
		`device.attributes["plinth.example.com"].resource == "example.com/fpga"`: 0,
	} {
		if got := count(expr); got != want {
			t.Errorf("%s selects %d devices, want %d", expr, got, want)
		}
	}
}

// A device whose node vanished is tainted NoSchedule with the reason, and
// the taint keeps its time while it lasts; healthy again, it is untainted.
func TestTaintFollowsHealth(t *testing.T) {
	cfg := gpuConfig()
	cfg.Health.RecoverAfter.Duration = 0
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	d := newDriver(t, inv, cfg, t.TempDir(), t.TempDir(), dev)
	if err := os.Rename(filepath.Join(dev, "nvidia3"), filepath.Join(dev, "gone")); err != nil {
		t.Fatal(err)
	}
	inv.Scan()
	tainted := func() map[string]resourceapi.DeviceTaint {
		out := map[string]resourceapi.DeviceTaint{}
		for _, x := range d.resources().Pools["node-a"].Slices[0].Devices {
			for _, tt := range x.Taints {
				out[x.Name] = tt
			}
		}
		return out
	}
	first := tainted()
	if len(first) != 1 {
		t.Fatalf("tainted %v, want one device", first)
	}
	for name, tt := range first {
		if tt.Key != TaintKey || tt.Value != TaintReason || tt.Effect != resourceapi.DeviceTaintEffectNoSchedule || tt.TimeAdded == nil {
			t.Errorf("%s: taint %+v", name, tt)
		}
		time.Sleep(1100 * time.Millisecond)
		if again := tainted()[name]; !again.TimeAdded.Equal(tt.TimeAdded) {
			t.Errorf("taint time moved from %v to %v while the device stayed unhealthy", tt.TimeAdded, again.TimeAdded)
		}
	}
	rep := d.health()
	bad := 0
	for _, h := range rep.Devices {
		if h.Health == kubeletplugin.HealthStatusUnhealthy {
			bad++
		}
	}
	if len(rep.Devices) != 8 || bad != 1 {
		t.Errorf("health report: %d devices, %d unhealthy; want 8 and 1", len(rep.Devices), bad)
	}
	os.Rename(filepath.Join(dev, "gone"), filepath.Join(dev, "nvidia3"))
	inv.Scan() // seen good
	inv.Scan() // recovered (recoverAfter 0)
	if got := tainted(); len(got) != 0 {
		t.Errorf("still tainted after recovery: %v", got)
	}
}

func claim(uid, name string, devices ...string) *resourceapi.ResourceClaim {
	c := &resourceapi.ResourceClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID(uid)}}
	c.Status.Allocation = &resourceapi.AllocationResult{}
	for i, dv := range devices {
		pool := "node-a"
		if p, n, ok := strings.Cut(dv, "/"); ok {
			pool, dv = p, n
		}
		c.Status.Allocation.Devices.Results = append(c.Status.Allocation.Devices.Results, resourceapi.DeviceRequestAllocationResult{
			Request: "gpus", Driver: driver, Pool: pool, Device: dv})
		_ = i
	}
	return c
}

func readSpec(t *testing.T, path string) cdispec.Spec {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var s cdispec.Spec
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// Prepare writes one CDI spec per claim with each device's own nodes,
// the shared nodes once and the configured environment; it answers a
// second time, and after a restart, from its checkpoint without preparing
// again; Unprepare removes both, and is not an error for an unknown claim.
func TestPrepareUnprepare(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	state, cdiDir := t.TempDir(), t.TempDir()
	d, prepared := newCountedDriver(t, inv, cfg, state, cdiDir, dev)
	ctx := context.Background()
	c := claim("uid-1", "two", "pci-0000-18-00-0", "pci-0000-1a-00-0")
	res, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if err != nil || res["uid-1"].Err != nil {
		t.Fatalf("prepare: %v %v", err, res["uid-1"].Err)
	}
	got := res["uid-1"].Devices
	if len(got) != 2 || got[0].CDIDeviceIDs[0] != "plinth.example.com/claim=uid-1-pci-0000-18-00-0" || got[0].PoolName != "node-a" {
		t.Fatalf("result %+v", got)
	}
	spec := readSpec(t, filepath.Join(cdiDir, "plinth.example.com-claim_uid-1.json"))
	if spec.Kind != "plinth.example.com/claim" || len(spec.Devices) != 2 {
		t.Fatalf("spec %+v", spec)
	}
	var own []string
	for _, sd := range spec.Devices {
		for _, n := range sd.ContainerEdits.DeviceNodes {
			own = append(own, n.Path)
			if !strings.HasPrefix(n.HostPath, dev) {
				t.Errorf("host path %s is not under the dev root %s", n.HostPath, dev)
			}
		}
	}
	var shared []string
	for _, n := range spec.ContainerEdits.DeviceNodes {
		shared = append(shared, n.Path)
	}
	slices.Sort(own)
	if !slices.Equal(own, []string{"/dev/nvidia0", "/dev/nvidia1"}) {
		t.Errorf("own nodes %v", own)
	}
	if !slices.Contains(shared, "/dev/nvidiactl") || len(shared) != len(slices.Compact(slices.Sorted(slices.Values(shared)))) {
		t.Errorf("shared nodes %v: nvidiactl once", shared)
	}
	if !slices.Contains(spec.ContainerEdits.Env, "PLINTH_GPU_DEVICES=0000:18:00.0,0000:1a:00.0") {
		t.Errorf("env %v", spec.ContainerEdits.Env)
	}
	if h := d.Held([]string{"example.com/gpu", "example.com/accel"}); !slices.Equal(h, []string{"example.com/gpu"}) {
		t.Errorf("Held = %v", h)
	}
	// A driver of a node whose resource went back to the device plugin
	// still runs while its claim is prepared.
	if off, err := New(Config{DriverName: driver, NodeName: "node-a", StateDir: state, CDIDir: cdiDir, DevRoot: dev, Inventory: inv}); err != nil || !off.Needed() {
		t.Errorf("with a claim prepared and no DRA resource: Needed %v, %v", off != nil && off.Needed(), err)
	}
	// Asked again (a kubelet restart), and by a new process: the same answer, nothing prepared.
	again, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	d2, prepared2 := newCountedDriver(t, inv, cfg, state, cdiDir, dev)
	third, _ := d2.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	if prepared.Load() != 1 || prepared2.Load() != 0 || len(again["uid-1"].Devices) != 2 || len(third["uid-1"].Devices) != 2 {
		t.Errorf("preparations %d and %d, answers %+v %+v", prepared.Load(), prepared2.Load(), again, third)
	}
	// The spec file gone (a cleared CDI directory) is written again.
	os.Remove(filepath.Join(cdiDir, "plinth.example.com-claim_uid-1.json"))
	if r, _ := d2.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c}); r["uid-1"].Err != nil {
		t.Fatal(r["uid-1"].Err)
	}
	readSpec(t, filepath.Join(cdiDir, "plinth.example.com-claim_uid-1.json"))

	un, err := d2.UnprepareResourceClaims(ctx, []kubeletplugin.NamespacedObject{{UID: "uid-1"}, {UID: "never"}})
	if err != nil || un["uid-1"] != nil || un["never"] != nil {
		t.Fatalf("unprepare: %v %v", err, un)
	}
	if _, err := os.Stat(filepath.Join(cdiDir, "plinth.example.com-claim_uid-1.json")); !os.IsNotExist(err) {
		t.Errorf("spec still there: %v", err)
	}
	if p := recorded(t, newDriver(t, inv, cfg, state, cdiDir, dev)); len(p) != 0 {
		t.Errorf("checkpoint still lists %v", p)
	}
	if off, _ := New(Config{DriverName: driver, NodeName: "node-a", StateDir: state, CDIDir: cdiDir, DevRoot: dev, Inventory: inv}); off.Needed() {
		t.Error("Needed with no DRA resource and nothing prepared")
	}
}

// What Prepare refuses, changing nothing: a device held by another claim,
// a device of another node's pool, a device this node does not have, an
// unallocated claim, an unhealthy device.
func TestPrepareRefuses(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	cdiDir := t.TempDir()
	d := newDriver(t, inv, cfg, t.TempDir(), cdiDir, dev)
	ctx := context.Background()
	if r, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim("a", "a", "pci-0000-18-00-0")}); r["a"].Err != nil {
		t.Fatal(r["a"].Err)
	}
	unalloc := claim("e", "e")
	unalloc.Status.Allocation = nil
	os.Remove(filepath.Join(dev, "nvidia7"))
	inv.Scan()
	for _, tc := range []struct {
		c    *resourceapi.ResourceClaim
		want string
	}{
		{claim("b", "b", "pci-0000-1a-00-0", "pci-0000-18-00-0"), "in use by claim ns/a"},
		{claim("c", "c", "node-b/pci-0000-1a-00-0"), "another node's pool"},
		{claim("d", "d", "pci-0000-99-00-0"), "not a device of this node"},
		{unalloc, "not allocated"},
		{claim("f", "f", "pci-0000-bd-00-0"), "unhealthy"}, // nvidia7
	} {
		c := tc.c
		r, err := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
		if err != nil || r[c.UID].Err == nil || !strings.Contains(r[c.UID].Err.Error(), tc.want) {
			t.Errorf("claim %s: %v %+v, want an error saying %q", c.Name, err, r[c.UID], tc.want)
		}
		if _, err := os.Stat(filepath.Join(cdiDir, "plinth.example.com-claim_"+string(c.UID)+".json")); !os.IsNotExist(err) {
			t.Errorf("claim %s left a spec", c.Name)
		}
	}
	if p := recorded(t, d); len(p) != 1 {
		t.Errorf("prepared %v", p)
	}
	// Admin access may use a device in use.
	admin := claim("g", "g", "pci-0000-18-00-0")
	admin.Status.Allocation.Devices.Results[0].AdminAccess = ptr.To(true)
	if r, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{admin}); r["g"].Err != nil {
		t.Errorf("admin access refused: %v", r["g"].Err)
	}
}

// A spec written by a process that crashed before recording the claim is
// removed at the next start; a spec of another driver is left alone.
func TestOrphanSpecsRemoved(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	cdiDir := t.TempDir()
	orphan := filepath.Join(cdiDir, "plinth.example.com-claim_lost.json")
	other := filepath.Join(cdiDir, "vendor.com-gpu.json")
	odd := filepath.Join(cdiDir, "plinth.example.com-claim_a.b.json")
	for _, p := range []string{orphan, other, odd} {
		os.WriteFile(p, []byte("{}"), 0o644)
	}
	newDriver(t, inv, cfg, t.TempDir(), cdiDir, dev)
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("orphan spec kept")
	}
	if _, err := os.Stat(odd); err != nil {
		t.Errorf("a file plinth never writes removed: %v", err)
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("another driver's spec removed: %v", err)
	}
}

// A checkpoint of a newer version is refused, not guessed at: the driver
// does not start (plinth node's start fails with the error), with the
// file, its version and the newest this plinth reads named, and the file
// as it was. So is one that says version 0.
func TestCheckpointVersion(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	for _, tc := range []struct{ content, says string }{
		{`{"version":9,"claims":{}}`, "is version 9, and this plinth reads versions up to 1"},
		{`{"version":0,"claims":{}}`, "version 0"},
	} {
		state := t.TempDir()
		os.MkdirAll(filepath.Join(state, "dra"), 0o700)
		path := filepath.Join(state, "dra", "prepared.json")
		os.WriteFile(path, []byte(tc.content), 0o600)
		_, err := New(Config{DriverName: driver, NodeName: "n", StateDir: state, CDIDir: t.TempDir(), DevRoot: dev, Resources: cfg.Resources, Inventory: inv})
		if err == nil || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: err = %v", tc.content, err)
		}
	}
}

// The shipped DRA overlay's DeviceClass is the one DeviceClass makes for
// the resource its DeviceConfig serves through DRA.
func TestShippedDeviceClass(t *testing.T) {
	dir := filepath.Join("..", "..", "deploy", "overlays", "dra")
	cfg, err := device.LoadConfig(filepath.Join(dir, "devices.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "deviceclass.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var shipped resourceapi.DeviceClass
	if err := yaml.UnmarshalStrict(b, &shipped); err != nil {
		t.Fatal(err)
	}
	if len(cfg.Resources) != 1 || !cfg.Resources[0].DRA() {
		t.Fatalf("devices.yaml: %+v, want one resource with api: dra", cfg.Resources)
	}
	want := DeviceClass(driver, cfg.Resources[0])
	if shipped.Name != want.Name || !equality.Semantic.DeepEqual(shipped.Spec, want.Spec) {
		t.Errorf("deviceclass.yaml:\n%+v\nwant\n%+v", shipped, *want)
	}
}

// A claim UID that is not a UID never becomes a path: Unprepare of
// "../../victim" removes nothing and says why.
func TestUnprepareRefusesPathUIDs(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	base := t.TempDir()
	cdiDir := filepath.Join(base, "a", "cdi")
	os.MkdirAll(cdiDir, 0o755)
	victim := filepath.Join(base, "victim.json")
	os.WriteFile(victim, []byte("{}"), 0o644)
	d := newDriver(t, inv, cfg, t.TempDir(), cdiDir, dev)
	for _, uid := range []types.UID{"../../victim", "a/b", "..", ""} {
		out, err := d.UnprepareResourceClaims(context.Background(), []kubeletplugin.NamespacedObject{{UID: uid}})
		if err != nil || out[uid] == nil {
			t.Errorf("unprepare %q: %v %v, want a per-claim error", uid, err, out[uid])
		}
		r, _ := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{claim(string(uid), "x", "pci-0000-18-00-0")})
		if r[uid].Err == nil {
			t.Errorf("prepare %q accepted", uid)
		}
	}
	if _, err := os.Stat(victim); err != nil {
		t.Errorf("a file outside the CDI directory went: %v", err)
	}
}

// Admin access holds nothing: a normal claim may take a device an admin
// claim was prepared with, in either order.
func TestAdminAccessHoldsNothing(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	d := newDriver(t, inv, cfg, t.TempDir(), t.TempDir(), dev)
	admin := claim("adm", "adm", "pci-0000-18-00-0")
	admin.Status.Allocation.Devices.Results[0].AdminAccess = ptr.To(true)
	ctx := context.Background()
	for _, c := range []*resourceapi.ResourceClaim{admin, claim("n1", "n1", "pci-0000-18-00-0")} {
		if r, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c}); r[c.UID].Err != nil {
			t.Errorf("claim %s: %v", c.Name, r[c.UID].Err)
		}
	}
	if r, _ := d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{claim("n2", "n2", "pci-0000-18-00-0")}); r["n2"].Err == nil {
		t.Error("a second normal claim got the device n1 holds")
	}
}

// A spec a crash truncated is written again when the kubelet prepares the
// recorded claim again.
func TestTruncatedSpecRewritten(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	state, cdiDir := t.TempDir(), t.TempDir()
	d := newDriver(t, inv, cfg, state, cdiDir, dev)
	c := claim("uid-t", "t", "pci-0000-18-00-0")
	ctx := context.Background()
	d.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c})
	path := filepath.Join(cdiDir, "plinth.example.com-claim_uid-t.json")
	os.WriteFile(path, nil, 0o644)
	d2, prepared := newCountedDriver(t, inv, cfg, state, cdiDir, dev)
	if r, _ := d2.PrepareResourceClaims(ctx, []*resourceapi.ResourceClaim{c}); r["uid-t"].Err != nil {
		t.Fatal(r["uid-t"].Err)
	}
	if s := readSpec(t, path); len(s.Devices) != 1 || prepared.Load() != 0 {
		t.Errorf("spec %+v, preparations %d", s, prepared.Load())
	}
}

// A claim with none of this driver's devices is answered empty, with no
// spec and no record.
func TestPrepareOtherDriversClaim(t *testing.T) {
	cfg := gpuConfig()
	inv, dev := inventory(t, "nvidia-8gpu", cfg)
	cdiDir := t.TempDir()
	d := newDriver(t, inv, cfg, t.TempDir(), cdiDir, dev)
	c := claim("o", "o", "pci-0000-18-00-0")
	c.Status.Allocation.Devices.Results[0].Driver = "gpu.vendor.example"
	r, _ := d.PrepareResourceClaims(context.Background(), []*resourceapi.ResourceClaim{c})
	if p := recorded(t, d); r["o"].Err != nil || len(r["o"].Devices) != 0 || len(p) != 0 {
		t.Errorf("got %+v, prepared %v", r["o"], p)
	}
	if entries, _ := os.ReadDir(cdiDir); len(entries) != 0 {
		t.Errorf("CDI dir holds %v", entries)
	}
}
