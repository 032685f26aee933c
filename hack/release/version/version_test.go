package version

import "testing"

func TestCheck(t *testing.T) {
	for v, ok := range map[string]bool{
		"v0.1.0": true, "v1.22.333": true, "v0.1.0-test": true, "v0.1.0-rc.1": true, "v1.0.0-alpha.beta-2": true,
		"0.1.0": false, "v0.1": false, "v01.1.0": false, "v0.1.0-": false, "v0.1.0+build": false, "": false,
		"6c7c63b-dirty": false, "v0.1.0-rc.01": false, "v0.1.0 ": false, "v0.1.0-a..b": false,
	} {
		if err := Check(v); (err == nil) != ok {
			t.Errorf("Check(%q) = %v, want ok=%v", v, err, ok)
		}
	}
	if Chart("v0.1.0-test") != "0.1.0-test" {
		t.Error("Chart")
	}
}
