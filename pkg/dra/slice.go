package dra

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	resourceapi "k8s.io/api/resource/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/dynamic-resource-allocation/deviceattribute"
	"k8s.io/utils/ptr"

	"github.com/plinth-dev/plinth/pkg/device"
)

// The taint an unhealthy device carries in its ResourceSlice: new claims
// do not get it (NoSchedule); pods already using it keep running.
const (
	TaintKey    = "plinth.example.com/unhealthy"
	TaintReason = "DeviceNodeMissing"
)

// Attribute names in the driver's own domain (written unqualified in the
// slice; CEL reads them as device.attributes["<driver>"].<name>).
const (
	AttrResource   = "resource"   // the DeviceConfig resource, "example.com/gpu"
	AttrKind       = "kind"       // "pci" or "glob"
	AttrVendor     = "vendor"     // "0x10de"
	AttrDeviceID   = "deviceID"   // "0x2330"
	AttrClass      = "pciClass"   // "0x030200"
	AttrDriver     = "driver"     // the kernel driver, "nvidia"
	AttrIndex      = "index"      // the driver's number (NVIDIA minor)
	AttrPCIeSwitch = "pcieSwitch" // the switch port above the device
	AttrIOMMUGroup = "iommuGroup"
	AttrModel      = "model" // the driver's model name, "NVIDIA H100 80GB HBM3"
	AttrUUID       = "uuid"  // the driver's UUID, "GPU-…"
)

var notDNS = regexp.MustCompile(`[^a-z0-9]+`)

// DeviceName is the device's name in a ResourceSlice, a DNS label made
// from its ID: "pci-0000-18-00-0", "dev-ttyusb0".
func DeviceName(d device.Device) string {
	prefix := "pci-"
	if d.Kind != "pci" {
		prefix = "dev-"
	}
	n := prefix + strings.Trim(notDNS.ReplaceAllString(strings.ToLower(d.ID), "-"), "-")
	if len(n) > 63 {
		n = strings.TrimRight(n[:63], "-")
	}
	return n
}

// Devices is what a ResourceSlice says of the units of res: one device
// per unit (DRA resources have one unit per device), its attributes, and
// for an unhealthy device a NoSchedule taint added at unhealthySince.
func Devices(res device.Resource, units []device.UnitStatus, unhealthySince func(name string) time.Time) []resourceapi.Device {
	out := make([]resourceapi.Device, 0, len(units))
	for _, u := range units {
		d := u.Device
		dev := resourceapi.Device{Name: DeviceName(d), Attributes: Attributes(res, d)}
		if !u.Healthy {
			t := metav1.NewTime(unhealthySince(dev.Name).Truncate(time.Second))
			dev.Taints = []resourceapi.DeviceTaint{{Key: TaintKey, Value: TaintReason, Effect: resourceapi.DeviceTaintEffectNoSchedule, TimeAdded: &t}}
		}
		out = append(out, dev)
	}
	return out
}

// Attributes are what claims select on: the resource, the PCI identity,
// the kernel driver, and where the device sits (Kubernetes' standard
// pciBusID, pcieRoot and numaNode, and the switch above it).
func Attributes(res device.Resource, d device.Device) map[resourceapi.QualifiedName]resourceapi.DeviceAttribute {
	a := map[resourceapi.QualifiedName]resourceapi.DeviceAttribute{
		AttrResource: {StringValue: ptr.To(res.Name)},
		AttrKind:     {StringValue: ptr.To(d.Kind)},
	}
	str := func(name resourceapi.QualifiedName, v string) {
		if v != "" {
			a[name] = resourceapi.DeviceAttribute{StringValue: ptr.To(v)}
		}
	}
	str(AttrVendor, d.Vendor)
	str(AttrDeviceID, d.DeviceID)
	str(AttrClass, d.Class)
	str(AttrDriver, d.Driver)
	str(AttrPCIeSwitch, d.Switch())
	str(AttrIOMMUGroup, d.IOMMUGroup)
	str(AttrModel, truncate(d.Model, resourceapi.DeviceAttributeMaxValueLength))
	str(AttrUUID, truncate(d.UUID, resourceapi.DeviceAttributeMaxValueLength))
	if d.Index >= 0 {
		a[AttrIndex] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.Index))}
	}
	if d.Kind == "pci" {
		str(deviceattribute.StandardDeviceAttributePCIBusID, d.ID)
		str(deviceattribute.StandardDeviceAttributePCIeRoot, d.PCIeRoot)
	}
	if d.NUMANode >= 0 {
		a[deviceattribute.StandardDeviceAttributeNUMANode] = resourceapi.DeviceAttribute{IntValue: ptr.To(int64(d.NUMANode))}
	}
	return a
}

// ClassSelector is the CEL selector of res's DeviceClass: the driver's
// devices of that resource.
func ClassSelector(driver string, res device.Resource) string {
	return fmt.Sprintf("device.driver == %q && device.attributes[%q].%s == %q", driver, driver, AttrResource, res.Name)
}

// DeviceClass is the class pods and claims ask res by: its selector, and
// extendedResourceName so that `resources.limits: {<res>: N}` is served
// through DRA on nodes that do not offer res through a device plugin.
func DeviceClass(driver string, res device.Resource) *resourceapi.DeviceClass {
	return &resourceapi.DeviceClass{
		TypeMeta:   metav1.TypeMeta{APIVersion: "resource.k8s.io/v1", Kind: "DeviceClass"},
		ObjectMeta: metav1.ObjectMeta{Name: device.DeviceClassName(res)},
		Spec: resourceapi.DeviceClassSpec{
			Selectors:            []resourceapi.DeviceSelector{{CEL: &resourceapi.CELDeviceSelector{Expression: ClassSelector(driver, res)}}},
			ExtendedResourceName: ptr.To(res.Name),
		},
	}
}

// truncate cuts s to n bytes (a slice's string attribute holds at most 64).
func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
