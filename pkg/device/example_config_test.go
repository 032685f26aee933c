package device

import "testing"

// The shipped example must stay valid.
func TestExampleConfigIsValid(t *testing.T) {
	c, err := LoadConfig("../../deploy/examples/device-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	gpus, vfio := served(t, fixtureHost("vfio"), c, "example.com/gpu"), served(t, fixtureHost("vfio"), c, "example.com/vfio-gpu")
	if len(gpus) != 1 || len(vfio) != 1 {
		t.Errorf("vfio fixture serves %v as example.com/gpu and %v as example.com/vfio-gpu", gpus, vfio)
	}
}
