package volume_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/plinth-dev/plinth/pkg/pool"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// ParseMutable reads a VolumeAttributesClass's parameters (CSI
// mutable_parameters) as docs/volume-attributes.md lists them: IO limits
// are whole numbers (bytes per second may be quantities), 0 or absent is
// no limit, provisioning is thin or thick and absent leaves it as it is;
// any other key, and any value that is not one of those, is refused with
// an error that names the key.
func TestParseMutable(t *testing.T) {
	limits := func(l pool.IOLimits) *pool.IOLimits { return &l }
	yes, no := true, false
	valid := map[string]struct {
		in     map[string]string
		limits *pool.IOLimits
		thick  *bool
	}{
		"nil":       {nil, nil, nil},
		"empty map": {map[string]string{}, nil, nil},
		"all keys": {map[string]string{"readIOPS": "200", "writeIOPS": "100", "readBytesPerSecond": "52428800", "writeBytesPerSecond": "1048576", "provisioning": "thick"},
			limits(pool.IOLimits{ReadIOPS: 200, WriteIOPS: 100, ReadBytesPerSecond: 50 << 20, WriteBytesPerSecond: 1 << 20}), &yes},
		"binary quantities":  {map[string]string{"readBytesPerSecond": "10Mi", "writeBytesPerSecond": "1Gi"}, limits(pool.IOLimits{ReadBytesPerSecond: 10 << 20, WriteBytesPerSecond: 1 << 30}), nil},
		"decimal quantities": {map[string]string{"readBytesPerSecond": "500M", "writeBytesPerSecond": "1G"}, limits(pool.IOLimits{ReadBytesPerSecond: 500e6, WriteBytesPerSecond: 1e9}), nil},
		"whole fractions":    {map[string]string{"readBytesPerSecond": "1.5Gi", "writeBytesPerSecond": "0.5Ki"}, limits(pool.IOLimits{ReadBytesPerSecond: 3 << 29, WriteBytesPerSecond: 512}), nil},
		"decimal fraction":   {map[string]string{"writeBytesPerSecond": "2.5M"}, limits(pool.IOLimits{WriteBytesPerSecond: 2500000}), nil},
		"one limit":          {map[string]string{"writeIOPS": "7"}, limits(pool.IOLimits{WriteIOPS: 7}), nil},
		"zero is no limit":   {map[string]string{"readIOPS": "0", "writeIOPS": "0", "readBytesPerSecond": "0", "writeBytesPerSecond": "0Mi"}, nil, nil},
		"zero beside a limit": {map[string]string{"readIOPS": "0", "writeIOPS": "5"},
			limits(pool.IOLimits{WriteIOPS: 5}), nil},
		"thin":           {map[string]string{"provisioning": "thin"}, nil, &no},
		"a million IOPS": {map[string]string{"readIOPS": "1000000"}, limits(pool.IOLimits{ReadIOPS: 1e6}), nil},
	}
	for name, tc := range valid {
		t.Run(name, func(t *testing.T) {
			l, thick, err := volume.ParseMutable(tc.in)
			if err != nil {
				t.Fatalf("ParseMutable(%v): %v", tc.in, err)
			}
			if d := cmp.Diff(tc.limits, l); d != "" {
				t.Errorf("limits (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tc.thick, thick); d != "" {
				t.Errorf("thick (-want +got):\n%s", d)
			}
		})
	}

	// Each refused: the key the error must name.
	invalid := map[string]struct {
		in  map[string]string
		key string
	}{
		"unknown key":                {map[string]string{"XXX_FakeKey": "1"}, "XXX_FakeKey"},
		"unknown key beside good":    {map[string]string{"readIOPS": "10", "iops": "10"}, "iops"},
		"key in another case":        {map[string]string{"ReadIOPS": "10"}, "ReadIOPS"},
		"StorageClass key":           {map[string]string{"pool": "fast"}, "pool"},
		"IOPS negative":              {map[string]string{"readIOPS": "-1"}, "readIOPS"},
		"IOPS fraction":              {map[string]string{"writeIOPS": "1.5"}, "writeIOPS"},
		"IOPS hex":                   {map[string]string{"readIOPS": "0x10"}, "readIOPS"},
		"IOPS overflow":              {map[string]string{"writeIOPS": "99999999999999999999"}, "writeIOPS"},
		"IOPS quantity":              {map[string]string{"readIOPS": "10k"}, "readIOPS"},
		"IOPS exponent":              {map[string]string{"readIOPS": "1e3"}, "readIOPS"},
		"IOPS empty":                 {map[string]string{"writeIOPS": ""}, "writeIOPS"},
		"IOPS words":                 {map[string]string{"readIOPS": "unlimited"}, "readIOPS"},
		"IOPS spaces":                {map[string]string{"readIOPS": " 10"}, "readIOPS"},
		"bytes negative":             {map[string]string{"readBytesPerSecond": "-1"}, "readBytesPerSecond"},
		"bytes negative quantity":    {map[string]string{"writeBytesPerSecond": "-10Mi"}, "writeBytesPerSecond"},
		"bytes fraction":             {map[string]string{"readBytesPerSecond": "1.5"}, "readBytesPerSecond"},
		"bytes milli":                {map[string]string{"readBytesPerSecond": "1500m"}, "readBytesPerSecond"},
		"bytes fraction of Ki":       {map[string]string{"readBytesPerSecond": "1.0001Ki"}, "readBytesPerSecond"},
		"bytes hex":                  {map[string]string{"writeBytesPerSecond": "0x10"}, "writeBytesPerSecond"},
		"bytes overflow":             {map[string]string{"readBytesPerSecond": "99999999999999999999"}, "readBytesPerSecond"},
		"bytes quantity overflow":    {map[string]string{"writeBytesPerSecond": "16Ei"}, "writeBytesPerSecond"},
		"bytes empty":                {map[string]string{"readBytesPerSecond": ""}, "readBytesPerSecond"},
		"bytes words":                {map[string]string{"writeBytesPerSecond": "fast"}, "writeBytesPerSecond"},
		"provisioning other":         {map[string]string{"provisioning": "lazy"}, "provisioning"},
		"provisioning case":          {map[string]string{"provisioning": "Thick"}, "provisioning"},
		"provisioning empty":         {map[string]string{"provisioning": ""}, "provisioning"},
		"bad value beside good ones": {map[string]string{"readIOPS": "10", "writeIOPS": "-3", "provisioning": "thin"}, "writeIOPS"},
	}
	for name, tc := range invalid {
		t.Run(name, func(t *testing.T) {
			l, thick, err := volume.ParseMutable(tc.in)
			if err == nil {
				t.Fatalf("ParseMutable(%v) = %+v, %v; want an error", tc.in, l, thick)
			}
			if !errors.Is(err, pool.ErrInvalid) {
				t.Errorf("error %v is not ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.key) {
				t.Errorf("error %q does not name the key %q", err, tc.key)
			}
		})
	}
}

// Controller.ModifyVolume over the in-process node with a real file pool
// (what standalone mode's ControllerModifyVolume calls): the record holds
// the limits asked, the change survives a restart, a repeat is a no-op,
// provisioning not named stays as it is, and an invalid parameter or an
// unknown volume changes nothing.
func TestControllerModifyVolume(t *testing.T) {
	ctx := context.Background()
	f := newFileNode(t)
	c := f.controller(t)
	placed, err := c.CreateVolume(ctx, volume.CreateRequest{Name: "v", RequiredBytes: 16 * mib, Mode: pool.ModeBlock, Params: volume.Params{Pool: "fext4"}})
	if err != nil {
		t.Fatal(err)
	}
	id := placed.Volume.ID
	if !placed.Volume.IOLimits.IsZero() || placed.Volume.Thick {
		t.Fatalf("new volume: limits %+v, thick %v; want none, thin", placed.Volume.IOLimits, placed.Volume.Thick)
	}
	type attrs struct {
		Limits pool.IOLimits
		Thick  bool
	}
	recorded := func(c *volume.Controller) attrs {
		t.Helper()
		p, err := c.GetVolume(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		var l pool.IOLimits
		if p.Volume.IOLimits != nil {
			l = *p.Volume.IOLimits
		}
		return attrs{l, p.Volume.Thick}
	}
	steps := []struct {
		name    string
		params  map[string]string
		wantErr error // nil: OK
		want    attrs // the record afterwards
	}{
		{"limits", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10Mi"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}}},
		{"same again", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10Mi"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}}},
		{"same again, spelt in bytes", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10485760"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}}},
		{"unknown key", map[string]string{"readIOPS": "1", "XXX_FakeKey": "1"}, pool.ErrInvalid,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}}},
		{"invalid value", map[string]string{"readIOPS": "-5"}, pool.ErrInvalid,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}}},
		{"thick", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10Mi", "provisioning": "thick"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteBytesPerSecond: 10 << 20}, Thick: true}},
		{"provisioning not named stays thick", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10Mi", "writeIOPS": "50"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteIOPS: 50, WriteBytesPerSecond: 10 << 20}, Thick: true}},
		{"thin", map[string]string{"readIOPS": "200", "writeBytesPerSecond": "10Mi", "writeIOPS": "50", "provisioning": "thin"}, nil,
			attrs{Limits: pool.IOLimits{ReadIOPS: 200, WriteIOPS: 50, WriteBytesPerSecond: 10 << 20}}},
		{"zero lifts every limit", map[string]string{"readIOPS": "0", "writeBytesPerSecond": "0", "writeIOPS": "0"}, nil, attrs{}},
	}
	for _, s := range steps {
		got, err := c.ModifyVolume(ctx, id, s.params)
		if s.wantErr != nil && !errors.Is(err, s.wantErr) || s.wantErr == nil && err != nil {
			t.Fatalf("%s: ModifyVolume(%v) = %v, want %v", s.name, s.params, err, s.wantErr)
		}
		if err == nil && (got.Node != "n1" || got.Volume.ID != id) {
			t.Errorf("%s: answered %s on %s, want %s on n1", s.name, got.Volume.ID, got.Node, id)
		}
		if d := cmp.Diff(s.want, recorded(c)); d != "" {
			t.Fatalf("%s: record (-want +got):\n%s", s.name, d)
		}
		// What a restart finds: the pools' records.
		if d := cmp.Diff(s.want, recorded(f.controller(t))); d != "" {
			t.Fatalf("%s: record after a restart (-want +got):\n%s", s.name, d)
		}
	}
	if _, err := c.ModifyVolume(ctx, volume.VolumeID("no-such-volume"), map[string]string{"readIOPS": "1"}); !errors.Is(err, pool.ErrNotFound) {
		t.Errorf("unknown volume: %v, want ErrNotFound", err)
	}
}

// A volume made with mutable parameters (a claim naming a class) has its
// limits and provisioning from the start; the mutable provisioning wins
// over the StorageClass's (CSI: mutable_parameters take precedence over
// parameters).
func TestCreateVolumeWithMutableParameters(t *testing.T) {
	ctx := context.Background()
	c := newFileNode(t).controller(t)
	req, err := volume.NewCreateRequest(volume.Ask{Name: "v", RequiredBytes: 16 * mib, Block: true,
		Parameters:        map[string]string{"pool": "fext4", "provisioning": "thin"},
		MutableParameters: map[string]string{"readIOPS": "300", "readBytesPerSecond": "1Mi", "provisioning": "thick"}})
	if err != nil {
		t.Fatal(err)
	}
	placed, err := c.CreateVolume(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.GetVolume(ctx, placed.Volume.ID)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(&pool.IOLimits{ReadIOPS: 300, ReadBytesPerSecond: 1 << 20}, got.Volume.IOLimits); d != "" {
		t.Errorf("limits (-want +got):\n%s", d)
	}
	if !got.Volume.Thick {
		t.Error("provisioning thick in mutable_parameters: the volume is thin")
	}
	if _, err := volume.NewCreateRequest(volume.Ask{Name: "w", RequiredBytes: 16 * mib, Block: true,
		MutableParameters: map[string]string{"XXX_FakeKey": "1"}}); !errors.Is(err, pool.ErrInvalid) || !strings.Contains(err.Error(), "XXX_FakeKey") {
		t.Errorf("unknown mutable key: %v, want ErrInvalid naming it", err)
	}
}
