package disk

import (
	"fmt"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/yaml"

	"github.com/plinth-dev/plinth/pkg/bytesize"
	"github.com/plinth-dev/plinth/pkg/device"
)

// Layout is what a rule makes of the disks it selects.
type Layout string

const (
	// LayoutFile: one disk formatted xfs (reflink on), a file pool on it.
	LayoutFile Layout = "file"
	// LayoutBtrfs: one btrfs filesystem over the selected disks (Raid),
	// a btrfs pool on it.
	LayoutBtrfs Layout = "btrfs"
	// LayoutDisk: each selected disk is one whole volume.
	LayoutDisk Layout = "disk"
)

// Config is the node configuration's "disks" section: the rules that say
// which disks plinth may claim and what to make of them.
type Config struct {
	// ScanInterval is how often the disks are read again for health
	// (absent or 0: the default, 10s; otherwise at least 1s).
	ScanInterval device.Duration `json:"scanInterval,omitempty"`
	Rules        []Rule          `json:"rules"`
}

// Rule selects disks for one pool.
type Rule struct {
	// Pool is the name of the pool the selected disks make.
	Pool   string `json:"pool"`
	Layout Layout `json:"layout"`
	// Raid is btrfs's data and metadata profile: single (default),
	// raid0 or raid1.
	Raid string `json:"raid,omitempty"`
	// FsType: a file pool's volumes' default filesystem; a disk pool's
	// volumes' default filesystem (ext4 when empty).
	FsType string   `json:"fsType,omitempty"`
	Select Selector `json:"select"`
	// Wipe lets the rule format disks that carry signatures (an old
	// filesystem, a partition table). It is honoured only for disks the
	// rule names by WWN, serial or ID, and never for a disk that is
	// mounted, held or used as swap.
	Wipe bool `json:"wipe,omitempty"`
}

// Selector says which disks a rule takes. Every field given must match;
// at least one must be given.
type Selector struct {
	Transports []Transport        `json:"transports,omitempty"`
	MinSize    *resource.Quantity `json:"minSize,omitempty"`
	MaxSize    *resource.Quantity `json:"maxSize,omitempty"`
	Rotational *bool              `json:"rotational,omitempty"`
	// Removable disks are taken only when this is true.
	Removable bool `json:"removable,omitempty"`
	// Models, Serials and WWNs are shell patterns (path.Match).
	Models  []string `json:"models,omitempty"`
	Serials []string `json:"serials,omitempty"`
	WWNs    []string `json:"wwns,omitempty"`
	// IDs lists disks by their identity (Disk.ID, e.g. "wwn:5000c500a1b2c3d4").
	IDs []string `json:"ids,omitempty"`
	// Count caps how many disks the rule takes (a file pool takes one).
	Count int `json:"count,omitempty"`
}

// LoadConfig reads and validates a disk configuration file.
func LoadConfig(file string) (Config, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Config{}, fmt.Errorf("read disk config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", file, err)
	}
	return c, nil
}

// ParseConfig decodes (unknown fields are errors), fills defaults and
// validates a disk configuration.
func ParseConfig(b []byte) (Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("disk config: %w", err)
	}
	c.Defaults()
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Defaults fills what the file leaves out.
func (c *Config) Defaults() {
	if c.ScanInterval.Duration == 0 {
		c.ScanInterval.Duration = 10 * time.Second
	}
	for i := range c.Rules {
		r := &c.Rules[i]
		if r.Layout == LayoutBtrfs && r.Raid == "" {
			r.Raid = "single"
		}
		if r.Layout == LayoutFile && r.Select.Count == 0 {
			r.Select.Count = 1
		}
	}
}

// poolNameOK: the pool names' own rule, kept here so that this package
// does not import the pool backends.
func poolNameOK(name string) bool {
	if name == "" || len(name) > 32 || name[0] == '-' || name[len(name)-1] == '-' {
		return false
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return false
		}
	}
	return true
}

// Validate checks every rule; errors name the rule by index and field.
func (c Config) Validate() error {
	if c.ScanInterval.Duration < time.Second {
		return fmt.Errorf("disk config: scanInterval %s is under 1s", c.ScanInterval.Duration)
	}
	seen := map[string]bool{}
	for i, r := range c.Rules {
		where := fmt.Sprintf("disk config: rules[%d]", i)
		if !poolNameOK(r.Pool) {
			return fmt.Errorf("%s.pool: %q must be 1-32 characters of [a-z0-9-], starting and ending alphanumeric", where, r.Pool)
		}
		if seen[r.Pool] {
			return fmt.Errorf("%s.pool: %q is already made by an earlier rule", where, r.Pool)
		}
		seen[r.Pool] = true
		switch r.Layout {
		case LayoutFile:
			if r.Raid != "" {
				return fmt.Errorf("%s.raid: only a btrfs layout has a raid profile", where)
			}
			if r.Select.Count != 1 {
				return fmt.Errorf("%s.select.count: a file pool is one disk, not %d", where, r.Select.Count)
			}
		case LayoutBtrfs:
			if !slices.Contains([]string{"single", "raid0", "raid1"}, r.Raid) {
				return fmt.Errorf("%s.raid: %q is not single, raid0 or raid1", where, r.Raid)
			}
			if r.FsType != "" && r.FsType != "btrfs" {
				return fmt.Errorf("%s.fsType: a btrfs pool's volumes are btrfs, not %q", where, r.FsType)
			}
			if r.Raid != "single" && r.Select.Count == 1 {
				return fmt.Errorf("%s.select.count: %s needs at least 2 disks", where, r.Raid)
			}
		case LayoutDisk:
			if r.Raid != "" {
				return fmt.Errorf("%s.raid: only a btrfs layout has a raid profile", where)
			}
		default:
			return fmt.Errorf("%s.layout: %q is not file, btrfs or disk", where, r.Layout)
		}
		if r.FsType != "" && !slices.Contains([]string{"ext4", "xfs", "btrfs"}, r.FsType) {
			return fmt.Errorf("%s.fsType: %q is not ext4, xfs or btrfs", where, r.FsType)
		}
		s := r.Select
		if len(s.Transports) == 0 && s.MinSize == nil && s.MaxSize == nil && s.Rotational == nil &&
			len(s.Models) == 0 && len(s.Serials) == 0 && len(s.WWNs) == 0 && len(s.IDs) == 0 {
			return fmt.Errorf("%s.select: say which disks (transports, sizes, rotational, models, serials, wwns or ids); an empty selector would take every free disk", where)
		}
		for _, t := range s.Transports {
			if !slices.Contains([]Transport{TransportNVMe, TransportSATA, TransportSAS, TransportSCSI, TransportVirtio, TransportUSB, TransportLoop}, t) {
				return fmt.Errorf("%s.select.transports: %q is not nvme, sata, sas, scsi, virtio, usb or loop", where, t)
			}
		}
		for field, pats := range map[string][]string{"models": s.Models, "serials": s.Serials, "wwns": s.WWNs} {
			for _, p := range pats {
				if _, err := path.Match(p, ""); err != nil || p == "" {
					return fmt.Errorf("%s.select.%s: %q is not a pattern", where, field, p)
				}
			}
		}
		if s.MinSize != nil && s.MaxSize != nil && s.MinSize.Cmp(*s.MaxSize) > 0 {
			return fmt.Errorf("%s.select: minSize %s is above maxSize %s", where, s.MinSize, s.MaxSize)
		}
		if s.Count < 0 {
			return fmt.Errorf("%s.select.count: %d is negative", where, s.Count)
		}
		if r.Wipe && !s.namesDisks() {
			return fmt.Errorf("%s.wipe: a rule may wipe only disks it names exactly (select.wwns, select.serials without patterns, or select.ids)", where)
		}
	}
	return nil
}

// namesDisks: the selector lists disks by exact identity.
func (s Selector) namesDisks() bool {
	exact := func(pats []string) bool {
		return len(pats) > 0 && !slices.ContainsFunc(pats, func(p string) bool { return strings.ContainsAny(p, `*?[\`) })
	}
	return len(s.IDs) > 0 || exact(s.WWNs) || exact(s.Serials)
}

// names reports whether the selector names d exactly (for Wipe).
func (s Selector) names(d Disk) bool {
	return slices.Contains(s.IDs, d.ID) || d.WWN != "" && slices.Contains(s.WWNs, d.WWN) || d.Serial != "" && slices.Contains(s.Serials, d.Serial)
}

// mismatch says why the selector does not take d ("" when it does).
func (s Selector) mismatch(d Disk) string {
	anyMatch := func(pats []string, v string) bool {
		for _, p := range pats {
			if ok, _ := path.Match(p, v); ok && v != "" {
				return true
			}
		}
		return false
	}
	switch {
	case len(s.Transports) > 0 && !slices.Contains(s.Transports, d.Transport):
		return fmt.Sprintf("transport %s is not one of %v", d.Transport, s.Transports)
	case len(s.Transports) == 0 && d.Transport == TransportLoop:
		return "a loop device is taken only by a rule that names transport loop"
	case s.MinSize != nil && d.SizeBytes < s.MinSize.Value():
		return fmt.Sprintf("too small: %s, minSize %s", FormatBytes(d.SizeBytes), s.MinSize)
	case s.MaxSize != nil && d.SizeBytes > s.MaxSize.Value():
		return fmt.Sprintf("too large: %s, maxSize %s", FormatBytes(d.SizeBytes), s.MaxSize)
	case s.Rotational != nil && d.Rotational != *s.Rotational:
		return fmt.Sprintf("rotational is %t", d.Rotational)
	case d.Removable && !s.Removable:
		return "removable (the rule does not say removable: true)"
	case len(s.Models) > 0 && !anyMatch(s.Models, d.Model):
		return fmt.Sprintf("model %q matches none of %v", d.Model, s.Models)
	case len(s.Serials) > 0 && !anyMatch(s.Serials, d.Serial):
		return fmt.Sprintf("serial %q matches none of %v", d.Serial, s.Serials)
	case len(s.WWNs) > 0 && !anyMatch(s.WWNs, d.WWN):
		return fmt.Sprintf("WWN %q matches none of %v", d.WWN, s.WWNs)
	case len(s.IDs) > 0 && !slices.Contains(s.IDs, d.ID):
		return fmt.Sprintf("ID %s is not listed", d.ID)
	}
	return ""
}

// FormatBytes prints a size the way a person reads it (bytesize.Format).
func FormatBytes(n int64) string { return bytesize.Format(n) }
