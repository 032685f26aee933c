package device

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	good := `
apiVersion: plinth.example.com/v1alpha1
kind: DeviceConfig
health: {interval: 2s, recoverAfter: 5s}
resources:
- name: example.com/gpu
  selector: {vendors: ["0x10de"], classes: ["0x03"], drivers: [nvidia]}
  sharing: {replicas: 4, strict: true}
  env: {NVIDIA_VISIBLE_DEVICES: indexes, PLINTH_GPU_DEVICES: ids}
- name: example.com/serial
  selector: {globs: ["ttyUSB*"]}
  cdi: false
`
	c, err := ParseConfig([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Resources[0].Sharing.Replicas != 4 || c.Resources[1].Sharing.Replicas != 1 || c.Health.RecoverAfter.Duration != 5*time.Second {
		t.Errorf("parsed %+v", c)
	}
	if c.Resources[0].API != APIDevicePlugin || c.Resources[0].DRA() {
		t.Errorf("api defaults to %q", c.Resources[0].API)
	}
	if c.Resources[1].CDIEnabled() || !c.Resources[0].CDIEnabled() {
		t.Error("cdi flags")
	}
	head := "apiVersion: plinth.example.com/v1alpha1\nkind: DeviceConfig\n"
	bad := map[string]struct{ yaml, field string }{
		"wrong version":       {"apiVersion: v1\nkind: DeviceConfig\nresources: [{name: example.com/gpu, selector: {drivers: [nvidia]}}]", "apiVersion"},
		"wrong kind":          {"apiVersion: plinth.example.com/v1alpha1\nkind: Config\nresources: [{name: example.com/gpu, selector: {drivers: [nvidia]}}]", "kind"},
		"no resources":        {head, "resources"},
		"unknown field":       {head + "resources: [{name: example.com/gpu, selektor: {}}]", "selektor"},
		"bad name":            {head + "resources: [{name: gpu, selector: {drivers: [nvidia]}}]", "resources[0].name"},
		"kubernetes.io name":  {head + "resources: [{name: kubernetes.io/gpu, selector: {drivers: [nvidia]}}]", "resources[0].name"},
		"duplicate":           {head + "resources: [{name: example.com/gpu, selector: {drivers: [nvidia]}}, {name: example.com/gpu, selector: {drivers: [amdgpu]}}]", "resources[1].name"},
		"empty selector":      {head + "resources: [{name: example.com/gpu, selector: {}}]", "resources[0].selector"},
		"bad vendor":          {head + "resources: [{name: example.com/gpu, selector: {vendors: [nvidia]}}]", "resources[0].selector.vendors[0]"},
		"bad class":           {head + "resources: [{name: example.com/gpu, selector: {classes: ['3']}}]", "resources[0].selector.classes[0]"},
		"escaping glob":       {head + "resources: [{name: example.com/x, selector: {globs: ['../etc/*']}}]", "resources[0].selector.globs[0]"},
		"glob with PCI":       {head + "resources: [{name: example.com/x, selector: {globs: [tty*], drivers: [nvidia]}}]", "resources[0].selector"},
		"too many replicas":   {head + "resources: [{name: example.com/gpu, selector: {drivers: [nvidia]}, sharing: {replicas: 1000}}]", "resources[0].sharing.replicas"},
		"negative replicas":   {head + "resources: [{name: example.com/gpu, selector: {drivers: [nvidia]}, sharing: {replicas: -1}}]", "resources[0].sharing.replicas"},
		"bad env name":        {head + "resources: [{name: example.com/gpu, selector: {drivers: [nvidia]}, env: {'A-B': ids}}]", "resources[0].env"},
		"bad env value":       {head + "resources: [{name: example.com/gpu, selector: {drivers: [nvidia]}, env: {GPUS: uuids}}]", "resources[0].env.GPUS"},
		"bad health interval": {head + "health: {interval: 1ms}\nresources: [{name: example.com/gpu, selector: {drivers: [nvidia]}}]", "health.interval"},
		"not yaml":            {"{{{", "device config"},
		"unknown api":         {head + "resources: [{name: example.com/gpu, api: nvml, selector: {drivers: [nvidia]}}]", "resources[0].api"},
		"dra with replicas":   {head + "resources: [{name: example.com/gpu, api: dra, selector: {drivers: [nvidia]}, sharing: {replicas: 2}}]", "resources[0].sharing.replicas"},
		"dra class name":      {head + "resources: [{name: example.com/GPU_big, api: dra, selector: {drivers: [nvidia]}}]", "resources[0].name"},
	}
	for name, tc := range bad {
		t.Run(name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("error %v, want one naming %q", err, tc.field)
			}
		})
	}
}

func TestDefaultConfigSelectsGPUsOnly(t *testing.T) {
	c := DefaultConfig()
	c.Defaults()
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	for fixture, want := range map[string]int{"nvidia-8gpu": 8, "amd-2gpu": 2, "intel-gpu": 2, "accel-4": 0, "vfio": 1, "none": 0} {
		if got := len(served(t, fixtureHost(fixture), c, "example.com/gpu")); got != want {
			t.Errorf("%s: default config exposes %d GPUs, want %d (not the BMC VGA, not vfio-bound)", fixture, got, want)
		}
	}
}

// served is what an Inventory over host serves as resource name (the
// product's path from discovery to a resource's devices): one entry per
// device, sorted by ID.
func served(t *testing.T, host Host, c Config, name string) []Device {
	t.Helper()
	inv := NewInventory(host, c)
	if _, _, err := inv.Scan(); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Resources {
		if r.Name == name {
			r.Sharing.Replicas = 1 // one unit per device
			var out []Device
			for _, u := range inv.Units(r) {
				out = append(out, u.Device)
			}
			return out
		}
	}
	t.Fatalf("no resource %s", name)
	return nil
}
