package device

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// Config file identity.
const (
	APIVersion = "plinth.example.com/v1alpha1"
	ConfigKind = "DeviceConfig"
)

// Config is the versioned device configuration (kind DeviceConfig).
type Config struct {
	APIVersion string     `json:"apiVersion"`
	Kind       string     `json:"kind"`
	Resources  []Resource `json:"resources"`
	Health     Health     `json:"health,omitempty"`
}

// Resource is one extended resource the kubelet will see.
type Resource struct {
	// Name is the extended resource name, e.g. example.com/gpu.
	Name     string   `json:"name"`
	Selector Selector `json:"selector"`
	Sharing  Sharing  `json:"sharing,omitempty"`
	// Env names environment variables Allocate sets, and what each holds:
	// "ids" (the devices' IDs), "indexes" (driver indexes such as the
	// NVIDIA minor), or "paths" (the device nodes' container paths).
	Env map[string]string `json:"env,omitempty"`
	// CDI: Allocate names CDI devices and the spec is written (default true).
	CDI *bool `json:"cdi,omitempty"`
	// API says how the kubelet learns of the resource: "devicePlugin" (the
	// default) or "dra" (ResourceSlices of plinth's DRA driver, a DeviceClass
	// named by DeviceClassName, pods asking by claim or by this name). A
	// resource is served through one of them, never both: the kubelet and
	// the scheduler would count the same devices twice.
	API string `json:"api,omitempty"`
}

// The values of Resource.API.
const (
	APIDevicePlugin = "devicePlugin"
	APIDRA          = "dra"
)

// DRA reports whether r is served through Dynamic Resource Allocation.
func (r Resource) DRA() bool { return r.API == APIDRA }

// DeviceClassName is the DeviceClass of r under DRA: the resource name's
// last part before its domain ("example.com/gpu" → "gpu.example.com").
func DeviceClassName(r Resource) string {
	domain, name, _ := strings.Cut(r.Name, "/")
	return name + "." + domain
}

// Selector picks devices; every non-empty field must match.
type Selector struct {
	Vendors   []string `json:"vendors,omitempty"`   // "0x10de"
	DeviceIDs []string `json:"deviceIDs,omitempty"` // "0x2330"
	Classes   []string `json:"classes,omitempty"`   // prefixes: "0x03", "0x0302", "0x12"
	Drivers   []string `json:"drivers,omitempty"`   // "nvidia", "amdgpu", "vfio-pci"
	// Globs select device nodes under the /dev root ("ttyUSB*"); a
	// selector with globs selects only glob devices.
	Globs []string `json:"globs,omitempty"`
}

// Sharing lets a device be handed out several times.
type Sharing struct {
	Replicas int `json:"replicas,omitempty"`
	// Strict never gives one container two replicas of the same device.
	Strict bool `json:"strict,omitempty"`
}

// Health tuning.
type Health struct {
	// Interval between rescans of sysfs (device nodes are also watched).
	Interval Duration `json:"interval,omitempty"`
	// RecoverAfter: a device that came back is advertised healthy only
	// after it stayed healthy this long (hysteresis against flapping).
	RecoverAfter Duration `json:"recoverAfter,omitempty"`
}

// Duration is a time.Duration written as "5s" in the file.
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// GPU drivers the default configuration exposes (not the BMC's ast, not vfio-pci).
var defaultGPUDrivers = []string{"nvidia", "amdgpu", "i915", "xe"}

// DefaultConfig exposes GPUs as example.com/gpu.
func DefaultConfig() Config {
	return Config{
		APIVersion: APIVersion, Kind: ConfigKind,
		Resources: []Resource{{
			Name:     "example.com/gpu",
			Selector: Selector{Classes: []string{"0x03"}, Drivers: defaultGPUDrivers},
			Env:      map[string]string{"PLINTH_GPU_DEVICES": "ids"},
		}},
	}
}

// LoadConfig reads and validates a config file; unknown fields are errors.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read device config: %w", err)
	}
	return ParseConfig(b)
}

// ParseConfig decodes and validates a config.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("device config: %w", err)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Defaults fills what the file leaves out.
func (c *Config) Defaults() {
	if c.Health.Interval.Duration == 0 {
		c.Health.Interval.Duration = 5 * time.Second
	}
	if c.Health.RecoverAfter.Duration == 0 {
		c.Health.RecoverAfter.Duration = 10 * time.Second
	}
	for i := range c.Resources {
		if c.Resources[i].Sharing.Replicas == 0 {
			c.Resources[i].Sharing.Replicas = 1
		}
		if c.Resources[i].API == "" {
			c.Resources[i].API = APIDevicePlugin
		}
	}
}

var (
	// An extended resource name: a DNS subdomain prefix and a name.
	resourceRE = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)+[a-z]{2,63}/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)
	hexIDRE    = regexp.MustCompile(`^0x[0-9a-f]{4}$`)
	classRE    = regexp.MustCompile(`^0x[0-9a-f]{2}([0-9a-f]{2}){0,2}$`)
	envRE      = regexp.MustCompile(`^[A-Z_][A-Z0-9_]{0,127}$`)
	driverRE   = regexp.MustCompile(`^[a-z0-9_-]{1,64}$`)
	// dnsLabelRE: the name part of a DRA resource becomes a DeviceClass
	// name's first label.
	dnsLabelRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)
)

// Validate checks every field; errors name the field.
func (c Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{field}, args...)...))
	}
	if c.APIVersion != APIVersion {
		bad("apiVersion", "%q, want %q", c.APIVersion, APIVersion)
	}
	if c.Kind != ConfigKind {
		bad("kind", "%q, want %q", c.Kind, ConfigKind)
	}
	if len(c.Resources) == 0 {
		bad("resources", "at least one resource is required")
	}
	if c.Health.Interval.Duration < 100*time.Millisecond || c.Health.Interval.Duration > time.Hour {
		bad("health.interval", "%s is outside 100ms..1h", c.Health.Interval)
	}
	if c.Health.RecoverAfter.Duration < 0 || c.Health.RecoverAfter.Duration > time.Hour {
		bad("health.recoverAfter", "%s is outside 0..1h", c.Health.RecoverAfter)
	}
	names := map[string]bool{}
	for i, r := range c.Resources {
		f := fmt.Sprintf("resources[%d]", i)
		if !resourceRE.MatchString(r.Name) || strings.HasSuffix(strings.SplitN(r.Name, "/", 2)[0], "kubernetes.io") {
			bad(f+".name", "%q is not an extended resource name (domain/name, outside kubernetes.io)", r.Name)
		}
		if names[r.Name] {
			bad(f+".name", "%q is defined twice", r.Name)
		}
		names[r.Name] = true
		s := r.Selector
		if len(s.Vendors)+len(s.DeviceIDs)+len(s.Classes)+len(s.Drivers)+len(s.Globs) == 0 {
			bad(f+".selector", "selects nothing: give vendors, deviceIDs, classes, drivers or globs")
		}
		if len(s.Globs) > 0 && len(s.Vendors)+len(s.DeviceIDs)+len(s.Classes)+len(s.Drivers) > 0 {
			bad(f+".selector", "globs cannot be combined with PCI fields")
		}
		for _, field := range []struct {
			name   string
			values []string
			re     *regexp.Regexp
			want   string
		}{
			{"vendors", s.Vendors, hexIDRE, "a 16-bit hex ID like 0x10de"},
			{"deviceIDs", s.DeviceIDs, hexIDRE, "a 16-bit hex ID like 0x2330"},
			{"classes", s.Classes, classRE, "a class prefix like 0x03 or 0x0302"},
			{"drivers", s.Drivers, driverRE, "a driver name"},
		} {
			for j, v := range field.values {
				if !field.re.MatchString(v) {
					bad(fmt.Sprintf("%s.selector.%s[%d]", f, field.name, j), "%q is not %s", v, field.want)
				}
			}
		}
		for j, g := range s.Globs {
			if err := ValidateGlob(g); err != nil {
				bad(fmt.Sprintf("%s.selector.globs[%d]", f, j), "%v", err)
			}
		}
		if r.Sharing.Replicas < 1 || r.Sharing.Replicas > 64 {
			bad(f+".sharing.replicas", "%d is outside 1..64", r.Sharing.Replicas)
		}
		switch r.API {
		case APIDevicePlugin:
		case APIDRA:
			if r.Sharing.Replicas != 1 {
				bad(f+".sharing.replicas", "%d: replicas apply to the device plugin; under api: dra pods share a device by sharing one ResourceClaim", r.Sharing.Replicas)
			}
			if _, name, _ := strings.Cut(r.Name, "/"); !dnsLabelRE.MatchString(name) {
				bad(f+".name", "%q: under api: dra the part after the slash names the DeviceClass (%s) and must be a lower-case DNS label", r.Name, DeviceClassName(r))
			}
		default:
			bad(f+".api", "%q is not %s or %s", r.API, APIDevicePlugin, APIDRA)
		}
		for k, v := range r.Env {
			if !envRE.MatchString(k) {
				bad(f+".env", "%q is not an environment variable name", k)
			}
			if v != "ids" && v != "indexes" && v != "paths" {
				bad(f+".env."+k, "%q is not ids, indexes or paths", v)
			}
		}
	}
	return errors.Join(errs...)
}

// CDIEnabled reports whether Allocate names CDI devices for r.
func (r Resource) CDIEnabled() bool { return r.CDI == nil || *r.CDI }

// Matches reports whether d is selected.
func (s Selector) Matches(d Device) bool {
	if len(s.Globs) > 0 {
		if d.Kind != "glob" {
			return false
		}
		for _, g := range s.Globs {
			if ok, _ := filepath.Match(g, d.Nodes[0].Path); ok {
				return true
			}
		}
		return false
	}
	if d.Kind != "pci" {
		return false
	}
	return anyOf(s.Vendors, d.Vendor, false) && anyOf(s.DeviceIDs, d.DeviceID, false) &&
		anyOf(s.Classes, d.Class, true) && anyOf(s.Drivers, d.Driver, false)
}

func anyOf(list []string, v string, prefix bool) bool {
	if len(list) == 0 {
		return true
	}
	for _, x := range list {
		if x == v || prefix && strings.HasPrefix(v, x) {
			return true
		}
	}
	return false
}

// Globs gathers the resources' globs for discovery.
func (c Config) Globs() []string {
	var out []string
	for _, r := range c.Resources {
		out = append(out, r.Selector.Globs...)
	}
	return out
}

// owner is the resource that serves d: the first whose selector matches
// it ("" when none does).
func (c Config) owner(d Device) string {
	for _, r := range c.Resources {
		if r.Selector.Matches(d) {
			return r.Name
		}
	}
	return ""
}
