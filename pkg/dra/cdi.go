package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/plinth-dev/plinth/pkg/device"
)

// claimDevice is a device being prepared for a claim, with its resource.
type claimDevice struct {
	res      device.Resource
	dev      device.Device
	name     string // in the slice
	requests []string
	admin    bool
}

// cdiSpecs writes and removes the CDI spec of each prepared claim: one
// file per claim, kind "<driver>/claim", a device "<claim UID>-<device>"
// per allocated device. Device names never repeat across claims, so a
// runtime's cache of an older spec cannot answer for a newer claim.
type cdiSpecs struct {
	dir, driver, devRoot string
}

func (c cdiSpecs) kind() string { return c.driver + "/claim" }

func (c cdiSpecs) prefix() string { return strings.ReplaceAll(c.kind(), "/", "-") + "_" }

// uidRE is what a claim UID may look like before it becomes part of a
// file name: the API server's UIDs are UUIDs; anything with a separator or
// a dot is refused.
var uidRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,127}$`)

func checkUID(uid types.UID) error {
	if !uidRE.MatchString(string(uid)) {
		return fmt.Errorf("claim UID %q is not a UID", uid)
	}
	return nil
}

func (c cdiSpecs) path(uid types.UID) string {
	return filepath.Join(c.dir, c.prefix()+string(uid)+".json")
}

func (c cdiSpecs) deviceID(uid types.UID, name string) string {
	return c.kind() + "=" + string(uid) + "-" + name
}

// spec is the claim's CDI spec: each device its own nodes, the nodes a
// driver's devices share (nvidiactl) once at spec level, and per resource
// the environment its DeviceConfig names, over all the claim's devices.
func (c cdiSpecs) spec(uid types.UID, devs []claimDevice) *cdispec.Spec {
	spec := &cdispec.Spec{Version: cdispec.CurrentVersion, Kind: c.kind()}
	shared := map[string]bool{}
	type envVals struct{ ids, indexes, paths []string }
	env := map[string]*envVals{}
	var resources []device.Resource
	for _, cd := range devs {
		d := cdispec.Device{Name: string(uid) + "-" + cd.name}
		ev := env[cd.res.Name]
		if ev == nil {
			ev = &envVals{}
			env[cd.res.Name] = ev
			resources = append(resources, cd.res)
		}
		ev.ids = append(ev.ids, cd.dev.ID)
		if cd.dev.Index >= 0 {
			ev.indexes = append(ev.indexes, strconv.Itoa(cd.dev.Index))
		}
		for _, n := range cd.dev.Nodes {
			d.ContainerEdits.DeviceNodes = append(d.ContainerEdits.DeviceNodes, c.node(n))
			ev.paths = append(ev.paths, "/dev/"+n.Path)
		}
		for _, n := range cd.dev.SharedNodes {
			if !shared[n.Path] {
				shared[n.Path] = true
				spec.ContainerEdits.DeviceNodes = append(spec.ContainerEdits.DeviceNodes, c.node(n))
			}
		}
		spec.Devices = append(spec.Devices, d)
	}
	for _, r := range resources {
		ev := env[r.Name]
		names := make([]string, 0, len(r.Env))
		for name := range r.Env {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			var v []string
			switch r.Env[name] {
			case "ids":
				v = ev.ids
			case "indexes":
				v = ev.indexes
			case "paths":
				v = ev.paths
			}
			spec.ContainerEdits.Env = append(spec.ContainerEdits.Env, name+"="+strings.Join(v, ","))
		}
	}
	return spec
}

func (c cdiSpecs) node(n device.Node) *cdispec.DeviceNode {
	return &cdispec.DeviceNode{Path: "/dev/" + n.Path, HostPath: filepath.Join(c.devRoot, n.Path), Permissions: n.Permissions}
}

// write puts the claim's spec in place with a rename, so that a runtime
// never reads half a spec. It is not fsynced: the checkpoint written next
// is the durable record, and a spec a crash lost or truncated is written
// again from it (valid) when the kubelet prepares the claim again.
func (c cdiSpecs) write(uid types.UID, devs []claimDevice) error {
	if err := checkUID(uid); err != nil {
		return err
	}
	b, err := json.Marshal(c.spec(uid, devs))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("CDI directory: %w", err)
	}
	tmp, err := os.CreateTemp(c.dir, ".claim-*.tmp")
	if err != nil {
		return fmt.Errorf("CDI spec of claim %s: %w", uid, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	_, err = tmp.Write(b)
	if err == nil {
		// Readable by the runtime, which may not run as root.
		err = tmp.Chmod(0o644)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), c.path(uid))
	}
	if err != nil {
		return fmt.Errorf("CDI spec of claim %s: %w", uid, err)
	}
	return nil
}

// valid reports whether the claim's spec is in place and whole.
func (c cdiSpecs) valid(uid types.UID) bool {
	b, err := os.ReadFile(c.path(uid))
	if err != nil {
		return false
	}
	var s cdispec.Spec
	return json.Unmarshal(b, &s) == nil && s.Kind == c.kind() && len(s.Devices) > 0
}

func (c cdiSpecs) remove(uid types.UID) error {
	if err := checkUID(uid); err != nil {
		return err
	}
	if err := os.Remove(c.path(uid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove CDI spec of claim %s: %w", uid, err)
	}
	return nil
}

// orphans are the claims with a spec file of this driver but no entry in
// prepared: a crash between writing the spec and the checkpoint.
func (c cdiSpecs) orphans(prepared map[types.UID]PreparedClaim) ([]types.UID, error) {
	entries, err := os.ReadDir(c.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []types.UID
	for _, e := range entries {
		name := e.Name()
		if !strings.HasPrefix(name, c.prefix()) || !strings.HasSuffix(name, ".json") {
			continue
		}
		uid := types.UID(strings.TrimSuffix(strings.TrimPrefix(name, c.prefix()), ".json"))
		if checkUID(uid) != nil {
			continue // not a name plinth writes
		}
		if _, ok := prepared[uid]; !ok {
			out = append(out, uid)
		}
	}
	return out, nil
}
