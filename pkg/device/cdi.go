package device

import (
	"path/filepath"
	"strings"

	cdispec "tags.cncf.io/container-device-interface/specs-go"
)

// CDIKind is the CDI kind of a resource: its name ("example.com/gpu").
func CDIKind(r Resource) string { return r.Name }

// CDIName is the fully qualified CDI name of a device of r.
func CDIName(r Resource, deviceID string) string { return CDIKind(r) + "=" + deviceID }

// CDISpec describes the devices of r for container runtimes: each device's
// own nodes, and the nodes every device needs at spec level. Host paths are
// under devRoot; container paths under /dev.
func CDISpec(r Resource, devs []Device, devRoot string) *cdispec.Spec {
	spec := &cdispec.Spec{Version: cdispec.CurrentVersion, Kind: CDIKind(r)}
	shared := map[string]bool{}
	for _, d := range devs {
		cd := cdispec.Device{Name: d.ID}
		for _, n := range d.Nodes {
			cd.ContainerEdits.DeviceNodes = append(cd.ContainerEdits.DeviceNodes, cdiNode(n, devRoot))
		}
		for _, n := range d.SharedNodes {
			if !shared[n.Path] {
				shared[n.Path] = true
				spec.ContainerEdits.DeviceNodes = append(spec.ContainerEdits.DeviceNodes, cdiNode(n, devRoot))
			}
		}
		spec.Devices = append(spec.Devices, cd)
	}
	return spec
}

func cdiNode(n Node, devRoot string) *cdispec.DeviceNode {
	return &cdispec.DeviceNode{Path: "/dev/" + n.Path, HostPath: filepath.Join(devRoot, n.Path), Permissions: n.Permissions}
}

// CDISpecName is the file name of r's spec ("example.com-gpu.yaml").
func CDISpecName(r Resource) string {
	return strings.ReplaceAll(CDIKind(r), "/", "-") + ".yaml"
}
