package metrics

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// /healthz runs the live checks and /readyz the ready ones; a failing
// check answers 503 and names itself.
func TestHealthAndReadiness(t *testing.T) {
	m := New()
	alive, ready := true, false
	m.AddLiveCheck("csi-grpc", func(context.Context) error {
		if !alive {
			return errors.New("socket does not answer")
		}
		return nil
	})
	m.AddReadyCheck("kubelet-registration", func(context.Context) error {
		if !ready {
			return errors.New("not registered")
		}
		return nil
	})
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz with a live gRPC socket: %d", code)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "kubelet-registration: not registered") {
		t.Errorf("/readyz before registration: %d %q", code, body)
	}
	alive, ready = false, true
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "csi-grpc: socket does not answer") {
		t.Errorf("/healthz with a dead socket: %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != 200 {
		t.Errorf("/readyz after registration: %d", code)
	}
}
