package app

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"unicode"

	"sigs.k8s.io/yaml"
)

// ConfigAPIVersion is the apiVersion of plinth's configuration files.
const ConfigAPIVersion = "plinth.example.com/v1alpha1"

// Kinds of configuration file, one per role.
const (
	NodeConfigKind       = "NodeConfiguration"
	ControllerConfigKind = "ControllerConfiguration"
	StandaloneConfigKind = "StandaloneConfiguration"
)

// ApplyConfigFile reads a versioned configuration file and sets every flag
// it names that the command line did not set: the command line overrides
// the file, the file overrides the defaults. Keys are the flags' names in
// camelCase (pool → pools, allowed-path → allowedPaths for the repeatable
// ones); pools are objects {name, backend, dir, fsType, mountPoint}. A
// configuration may hold sections inline (returned as YAML, unless the
// command line gave their file): "deviceConfig" (a DeviceConfig) and
// "disks" (disk rules). Errors name the file and the field.
func ApplyConfigFile(fs *flag.FlagSet, path, kind string) (Inline, error) {
	var in Inline
	deviceConfig, err := applyConfigFile(fs, path, kind, &in)
	in.DeviceConfig = deviceConfig
	return in, err
}

// Inline are the sections a configuration file may hold inline, and the
// file's fields that set flags (flag name → field), so that a later check
// of a flag's value can name the file and the field.
type Inline struct {
	DeviceConfig, Disks []byte
	Fields              map[string]string
}

// Explain adds to a validation error that names flags (--root ...) the
// file's fields that set them: "(config file F: --root is field \"root\")".
func (in Inline) Explain(path string, err error) error {
	if err == nil || len(in.Fields) == 0 {
		return err
	}
	var notes []string
	for flag, field := range in.Fields {
		if strings.Contains(err.Error(), "--"+flag+" ") || strings.Contains(err.Error(), "--"+flag+":") || strings.Contains(err.Error(), "--"+flag+"=") {
			notes = append(notes, fmt.Sprintf("--%s is field %q", flag, field))
		}
	}
	if len(notes) == 0 {
		return err
	}
	sort.Strings(notes)
	return fmt.Errorf("%w (config file %s: %s)", err, path, strings.Join(notes, ", "))
}

// FieldError names the file and field that set flag, when the file set it:
// "config file F: field \"loggingFormat\": err"; otherwise err as it is.
func (in Inline) FieldError(path, flag string, err error) error {
	if field, ok := in.Fields[flag]; ok && err != nil {
		return fmt.Errorf("config file %s: field %q: %w", path, field, err)
	}
	return err
}

func applyConfigFile(fs *flag.FlagSet, path, kind string, in *Inline) (deviceConfig []byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	var doc map[string]json.RawMessage
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config file %s: %w", path, err)
	}
	fail := func(field string, format string, args ...any) error {
		return fmt.Errorf("config file %s: field %q: %s", path, field, fmt.Sprintf(format, args...))
	}
	var apiVersion, gotKind string
	_ = json.Unmarshal(doc["apiVersion"], &apiVersion)
	_ = json.Unmarshal(doc["kind"], &gotKind)
	if apiVersion != ConfigAPIVersion {
		return nil, fail("apiVersion", "%q, want %q", apiVersion, ConfigAPIVersion)
	}
	if gotKind != kind {
		return nil, fail("kind", "%q, want %q", gotKind, kind)
	}
	setOnCommandLine := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { setOnCommandLine[f.Name] = true })
	keys := make([]string, 0, len(doc))
	for k := range doc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, key := range keys {
		raw := doc[key]
		if key == "apiVersion" || key == "kind" {
			continue
		}
		if key == "disks" {
			if fs.Lookup("disk-config") == nil {
				return nil, fail(key, "unknown field")
			}
			if setOnCommandLine["disk-config"] {
				continue
			}
			if in.Disks, err = yaml.JSONToYAML(raw); err != nil {
				return nil, fail(key, "%v", err)
			}
			continue
		}
		if key == "deviceConfig" {
			if setOnCommandLine["device-config"] {
				continue
			}
			if deviceConfig, err = yaml.JSONToYAML(raw); err != nil {
				return nil, fail(key, "%v", err)
			}
			continue
		}
		name, list := flagName(key)
		f := fs.Lookup(name)
		if f == nil || name == "config" {
			return nil, fail(key, "unknown field")
		}
		if setOnCommandLine[name] {
			continue // the command line wins
		}
		values, err := flagValues(raw, list, name)
		if err != nil {
			return nil, fail(key, "%v", err)
		}
		if in.Fields == nil {
			in.Fields = map[string]string{}
		}
		in.Fields[name] = key
		for i, v := range values {
			if err := fs.Set(name, v); err != nil {
				field := key
				if list {
					field = fmt.Sprintf("%s[%d]", key, i)
				}
				return nil, fail(field, "%v", err)
			}
		}
	}
	return deviceConfig, nil
}

// flagName maps a config key to its flag: camelCase to kebab-case, and the
// plural of a repeatable flag to its singular.
func flagName(key string) (name string, list bool) {
	switch key {
	case "pools":
		return "pool", true
	case "allowedPaths":
		return "allowed-path", true
	}
	var b strings.Builder
	for i, r := range key {
		if unicode.IsUpper(r) {
			if i > 0 {
				b.WriteByte('-')
			}
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String(), false
}

// flagValues turns a config value into the strings a flag is Set with.
func flagValues(raw json.RawMessage, list bool, name string) ([]string, error) {
	if !list {
		var v any
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		if err := d.Decode(&v); err != nil {
			return nil, err
		}
		switch v := v.(type) {
		case string:
			return []string{v}, nil
		case bool:
			return []string{strconv.FormatBool(v)}, nil
		case json.Number:
			return []string{v.String()}, nil
		default:
			return nil, fmt.Errorf("want a string, number or boolean, got %s", raw)
		}
	}
	if name == "pool" {
		var pools []struct {
			Name       string `json:"name"`
			Backend    string `json:"backend"`
			Dir        string `json:"dir"`
			FsType     string `json:"fsType,omitempty"`
			MountPoint bool   `json:"mountPoint,omitempty"`
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.DisallowUnknownFields()
		if err := d.Decode(&pools); err != nil {
			return nil, fmt.Errorf("want a list of {name, backend, dir, fsType, mountPoint}: %v", err)
		}
		var out []string
		for _, p := range pools {
			for _, part := range []string{p.Name, p.Backend, p.Dir, p.FsType} {
				if strings.ContainsAny(part, ",=") {
					return nil, fmt.Errorf("pool %q: values may not contain ',' or '='", p.Name)
				}
			}
			s := "name=" + p.Name + ",backend=" + p.Backend + ",dir=" + p.Dir
			if p.FsType != "" {
				s += ",fstype=" + p.FsType
			}
			if p.MountPoint {
				s += ",mountpoint=true"
			}
			out = append(out, s)
		}
		return out, nil
	}
	var out []string
	if err := json.Unmarshal(raw, &out); err != nil {
		return nil, fmt.Errorf("want a list of strings: %v", err)
	}
	return out, nil
}
