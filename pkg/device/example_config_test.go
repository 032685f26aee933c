package device

import "testing"

// The shipped example must stay valid.
func TestExampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig("../../deploy/examples/device-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := fixtureHost("vfio").Discover(c.Globs())
	if err != nil {
		t.Fatal(err)
	}
	got := c.Assign(devs)
	if len(got["example.com/gpu"]) != 1 || len(got["example.com/vfio-gpu"]) != 1 {
		t.Errorf("vfio fixture assigned %v", got)
	}
}
