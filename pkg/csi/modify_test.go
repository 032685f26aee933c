package csi

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/plinth-dev/plinth/pkg/node"
	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/pool/file"
	"github.com/plinth-dev/plinth/pkg/volume"
)

const testTopologyKey = "topology.plinth.example.com/node"

// serveController serves the Controller service over one node, n1, with
// a real file pool "f" in poolDir, on a real unix socket (as Serve serves
// it to the CO), and returns a client of it and the volume.Controller
// behind it, whose records say what the calls changed.
func serveController(t *testing.T, poolDir string) (csi.ControllerClient, *volume.Controller) {
	t.Helper()
	if err := os.MkdirAll(poolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	p, err := file.New(file.Config{Name: "f", Dir: poolDir})
	if err != nil {
		t.Fatal(err)
	}
	local, err := node.NewLocal(p)
	if err != nil {
		t.Fatal(err)
	}
	vc := volume.NewController(map[string]volume.Node{"n1": local})
	sock := filepath.Join(t.TempDir(), "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, sock, Services{
			Identity:   NewIdentityServer("plinth.test", "v0", true, func(context.Context) error { return nil }),
			Controller: NewControllerServer(vc, testTopologyKey),
		}, 10*time.Second)
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	// Up once a call answers.
	callCtx, callCancel := context.WithTimeout(ctx, 10*time.Second)
	defer callCancel()
	if _, err := csi.NewIdentityClient(conn).GetPluginInfo(callCtx, &csi.GetPluginInfoRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("the CSI server does not answer: %v", err)
	}
	return csi.NewControllerClient(conn), vc
}

func blockCapability() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// createBlock asks CreateVolume for a block volume of size bytes in pool f.
func createBlock(t *testing.T, c csi.ControllerClient, name string, size int64, mutable map[string]string) (*csi.CreateVolumeResponse, error) {
	t.Helper()
	return c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name: name, CapacityRange: &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{blockCapability()},
		Parameters:         map[string]string{"pool": "f"},
		MutableParameters:  mutable,
	})
}

// attributes is what a volume's record says of its mutable attributes.
type attributes struct {
	Limits pool.IOLimits
	Thick  bool
}

func recordOf(t *testing.T, vc *volume.Controller, id string) attributes {
	t.Helper()
	p, err := vc.GetVolume(context.Background(), id)
	if err != nil {
		t.Fatalf("volume %s: %v", id, err)
	}
	a := attributes{Thick: p.Volume.Thick}
	if p.Volume.IOLimits != nil {
		a.Limits = *p.Volume.IOLimits
	}
	return a
}

// A plugin that implements ControllerModifyVolume advertises it.
func TestControllerCapabilitiesListModifyVolume(t *testing.T) {
	c, _ := serveController(t, filepath.Join(t.TempDir(), "f"))
	resp, err := c.ControllerGetCapabilities(context.Background(), &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range resp.GetCapabilities() {
		if cp.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_MODIFY_VOLUME {
			return
		}
	}
	t.Errorf("capabilities %v lack MODIFY_VOLUME", resp.GetCapabilities())
}

// ControllerModifyVolume answers by the CSI spec's table: no volume ID is
// INVALID_ARGUMENT, a volume that does not exist NOT_FOUND, parameters the
// plugin does not support INVALID_ARGUMENT with nothing applied; supported
// parameters are applied (the record holds them) and the same request again
// is OK and changes nothing.
func TestControllerModifyVolumeCodes(t *testing.T) {
	c, vc := serveController(t, filepath.Join(t.TempDir(), "f"))
	ctx := context.Background()
	made, err := createBlock(t, c, "pvc-modify", 16<<20, map[string]string{"readIOPS": "100"})
	if err != nil {
		t.Fatal(err)
	}
	id := made.GetVolume().GetVolumeId()
	start := attributes{Limits: pool.IOLimits{ReadIOPS: 100}}
	if d := cmp.Diff(start, recordOf(t, vc, id)); d != "" {
		t.Fatalf("created with mutable_parameters: record (-want +got):\n%s", d)
	}
	gold := map[string]string{"readIOPS": "1000", "writeIOPS": "500", "readBytesPerSecond": "100Mi", "writeBytesPerSecond": "50Mi"}
	goldRecord := attributes{Limits: pool.IOLimits{ReadIOPS: 1000, WriteIOPS: 500, ReadBytesPerSecond: 100 << 20, WriteBytesPerSecond: 50 << 20}}
	steps := []struct {
		name   string
		req    *csi.ControllerModifyVolumeRequest
		code   codes.Code
		record attributes // of id, afterwards
	}{
		{"no volume ID", &csi.ControllerModifyVolumeRequest{MutableParameters: gold}, codes.InvalidArgument, start},
		{"unknown volume", &csi.ControllerModifyVolumeRequest{VolumeId: "pv-0123456789abcdef", MutableParameters: gold}, codes.NotFound, start},
		{"unknown key", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"readIOPS": "1000", "XXX_FakeKey": "1"}}, codes.InvalidArgument, start},
		{"value not a number", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"writeIOPS": "many"}}, codes.InvalidArgument, start},
		{"negative value", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"readBytesPerSecond": "-1Mi"}}, codes.InvalidArgument, start},
		{"provisioning neither thin nor thick", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"provisioning": "lazy"}}, codes.InvalidArgument, start},
		{"valid", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: gold}, codes.OK, goldRecord},
		{"same again", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: gold}, codes.OK, goldRecord},
		{"thick", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"provisioning": "thick",
			"readIOPS": "1000", "writeIOPS": "500", "readBytesPerSecond": "100Mi", "writeBytesPerSecond": "50Mi"}}, codes.OK, attributes{goldRecord.Limits, true}},
		{"thick again", &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"provisioning": "thick",
			"readIOPS": "1000", "writeIOPS": "500", "readBytesPerSecond": "100Mi", "writeBytesPerSecond": "50Mi"}}, codes.OK, attributes{goldRecord.Limits, true}},
	}
	for _, s := range steps {
		_, err := c.ControllerModifyVolume(ctx, s.req)
		if status.Code(err) != s.code {
			t.Errorf("%s: %v, want code %s", s.name, err, s.code)
		}
		if d := cmp.Diff(s.record, recordOf(t, vc, id)); d != "" {
			t.Errorf("%s: record (-want +got):\n%s", s.name, d)
		}
	}
	// ControllerGetVolume still finds it, where it was.
	got, err := c.ControllerGetVolume(ctx, &csi.ControllerGetVolumeRequest{VolumeId: id})
	if err != nil || got.GetVolume().GetCapacityBytes() != 16<<20 {
		t.Errorf("ControllerGetVolume after the changes: %v, %v", got, err)
	}
}

// The CSI spec on ControllerModifyVolume's mutable_parameters: "SPs MUST
// NOT modify volumes based on the absence of keys, only keys that are
// specified should result in modifications to the volume." A request
// naming one limit changes that limit and leaves the others; one naming
// none changes nothing.
func TestControllerModifyVolumeAbsentKeysUnchanged(t *testing.T) {
	c, vc := serveController(t, filepath.Join(t.TempDir(), "f"))
	ctx := context.Background()
	made, err := createBlock(t, c, "pvc-absent", 16<<20, map[string]string{"readIOPS": "100", "writeIOPS": "50"})
	if err != nil {
		t.Fatal(err)
	}
	id := made.GetVolume().GetVolumeId()
	if _, err := c.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{"writeIOPS": "60"}}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(attributes{Limits: pool.IOLimits{ReadIOPS: 100, WriteIOPS: 60}}, recordOf(t, vc, id)); d != "" {
		t.Errorf("after naming writeIOPS only: record (-want +got):\n%s", d)
	}
	if _, err := c.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id, MutableParameters: map[string]string{}}); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(attributes{Limits: pool.IOLimits{ReadIOPS: 100, WriteIOPS: 60}}, recordOf(t, vc, id)); d != "" {
		t.Errorf("after naming no key: record (-want +got):\n%s", d)
	}
}

// A thin volume that cannot become thick because its pool's filesystem
// lacks the room: the volume cannot support the parameters, which the
// spec's table answers INVALID_ARGUMENT, "The SP MUST NOT have applied any
// modification to the volume as part of this specific call": the limits
// asked in the same call are not recorded either.
func TestControllerModifyVolumeThickWithoutRoom(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a small tmpfs for the pool")
	}
	small := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(small, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", small, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(small, 0) })
	c, vc := serveController(t, filepath.Join(small, "f"))
	ctx := context.Background()
	made, err := createBlock(t, c, "pvc-thick", 32<<20, map[string]string{"readIOPS": "100"})
	if err != nil {
		t.Fatal(err)
	}
	id := made.GetVolume().GetVolumeId()
	// Something outside plinth fills the filesystem.
	if err := os.WriteFile(filepath.Join(small, "filler"), make([]byte, 40<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = c.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"provisioning": "thick", "readIOPS": "7"}})
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("thick without room: %v, want code InvalidArgument", err)
	}
	if d := cmp.Diff(attributes{Limits: pool.IOLimits{ReadIOPS: 100}}, recordOf(t, vc, id)); d != "" {
		t.Errorf("record after the refusal (-want +got):\n%s", d)
	}
	// With room again, the same request is applied.
	if err := os.Remove(filepath.Join(small, "filler")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ControllerModifyVolume(ctx, &csi.ControllerModifyVolumeRequest{VolumeId: id,
		MutableParameters: map[string]string{"provisioning": "thick", "readIOPS": "7"}}); err != nil {
		t.Fatalf("thick with room: %v", err)
	}
	if d := cmp.Diff(attributes{Limits: pool.IOLimits{ReadIOPS: 7}, Thick: true}, recordOf(t, vc, id)); d != "" {
		t.Errorf("record after thick with room (-want +got):\n%s", d)
	}
}

// CreateVolume's mutable_parameters: the volume is made with them (they
// take precedence over parameters, per the spec), a retry of the same
// request is OK with the same volume, and one the plugin does not support
// is INVALID_ARGUMENT with nothing made.
func TestCreateVolumeMutableParameters(t *testing.T) {
	c, vc := serveController(t, filepath.Join(t.TempDir(), "f"))
	ctx := context.Background()
	mutable := map[string]string{"readIOPS": "300", "writeBytesPerSecond": "20Mi", "provisioning": "thick"}
	req := &csi.CreateVolumeRequest{
		Name: "pvc-with-class", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 << 20},
		VolumeCapabilities: []*csi.VolumeCapability{blockCapability()},
		Parameters:         map[string]string{"pool": "f", "provisioning": "thin"},
		MutableParameters:  mutable,
	}
	made, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	id := made.GetVolume().GetVolumeId()
	want := attributes{Limits: pool.IOLimits{ReadIOPS: 300, WriteBytesPerSecond: 20 << 20}, Thick: true}
	if d := cmp.Diff(want, recordOf(t, vc, id)); d != "" {
		t.Errorf("record (-want +got):\n%s", d)
	}
	again, err := c.CreateVolume(ctx, req)
	if err != nil || again.GetVolume().GetVolumeId() != id {
		t.Errorf("the same request again: %v, %v; want OK with %s", again, err, id)
	}
	if d := cmp.Diff(want, recordOf(t, vc, id)); d != "" {
		t.Errorf("record after the retry (-want +got):\n%s", d)
	}

	refused := map[string]map[string]string{
		"unknown key":        {"XXX_FakeKey": "1"},
		"unknown beside one": {"readIOPS": "10", "XXX_FakeKey": "1"},
		"bad value":          {"writeIOPS": "1.5"},
	}
	for name, m := range refused {
		_, err := createBlock(t, c, "pvc-refused", 16<<20, m)
		if status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want code InvalidArgument", name, err)
		}
	}
	all, err := vc.ListVolumes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 1 || all[0].Volume.ID != id {
		t.Errorf("volumes after the refusals: %d, want only %s", len(all), id)
	}
}
