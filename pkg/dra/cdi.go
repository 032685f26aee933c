package dra

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	cdispec "tags.cncf.io/container-device-interface/specs-go"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/pool"
)

// claimDevice is a device being prepared for a claim, with its resource.
type claimDevice struct {
	res      device.Resource
	dev      device.Device
	name     string // in the slice
	requests []string
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

func (c cdiSpecs) write(uid types.UID, devs []claimDevice) error {
	b, err := json.Marshal(c.spec(uid, devs))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return fmt.Errorf("CDI directory: %w", err)
	}
	// Readable by the runtime, which may not run as root.
	return pool.WriteFileAtomic(c.path(uid), b, 0o644)
}

func (c cdiSpecs) exists(uid types.UID) bool {
	_, err := os.Stat(c.path(uid))
	return err == nil
}

func (c cdiSpecs) remove(uid types.UID) error {
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
		if _, ok := prepared[uid]; !ok {
			out = append(out, uid)
		}
	}
	return out, nil
}
