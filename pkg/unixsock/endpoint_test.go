package unixsock

import "testing"

func TestParseEndpoint(t *testing.T) {
	for ep, want := range map[string]string{
		"unix:///run/plinth/csi.sock": "/run/plinth/csi.sock",
		"unix://relative/csi.sock":    "relative/csi.sock",
		"unix:/abs.sock":              "/abs.sock",
	} {
		if got, err := ParseEndpoint(ep); err != nil || got != want {
			t.Errorf("ParseEndpoint(%q) = %q, %v, want %q", ep, got, err, want)
		}
	}
	for _, ep := range []string{"", "/run/csi.sock", "tcp://127.0.0.1:10000", "unix://", "%zz"} {
		if got, err := ParseEndpoint(ep); err == nil {
			t.Errorf("ParseEndpoint(%q) = %q, want an error", ep, got)
		}
	}
}
