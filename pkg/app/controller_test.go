package app

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// --release-volumes-on-lost-node-after is off by default, set from the
// flag or the config file's field of the same name, and refused when
// negative or so short that it would race a node's re-registration.
func TestReleaseVolumesOnLostNodeAfter(t *testing.T) {
	parse := func(t *testing.T, file string, args ...string) (ControllerConfig, error) {
		t.Helper()
		fs := flag.NewFlagSet("controller", flag.ContinueOnError)
		var c ControllerConfig
		c.Flags(fs)
		if err := fs.Parse(args); err != nil {
			return c, err
		}
		if file != "" {
			if _, err := ApplyConfigFile(fs, writeConfig(t, file), ControllerConfigKind); err != nil {
				return c, err
			}
		}
		return c, c.Validate()
	}
	if c, err := parse(t, ""); err != nil || c.ReleaseVolumesOnLostNodeAfter != 0 {
		t.Fatalf("default: %s, %v; want 0 (off)", c.ReleaseVolumesOnLostNodeAfter, err)
	}
	if c, err := parse(t, "", "--release-volumes-on-lost-node-after=10m"); err != nil || c.ReleaseVolumesOnLostNodeAfter != 10*time.Minute {
		t.Fatalf("flag: %s, %v", c.ReleaseVolumesOnLostNodeAfter, err)
	}
	file := "apiVersion: plinth.example.com/v1alpha1\nkind: ControllerConfiguration\nreleaseVolumesOnLostNodeAfter: 1h\n"
	if c, err := parse(t, file); err != nil || c.ReleaseVolumesOnLostNodeAfter != time.Hour {
		t.Fatalf("config file: %s, %v", c.ReleaseVolumesOnLostNodeAfter, err)
	}
	for value, want := range map[string]string{"-1m": "must not be negative", "10s": "at least 30s"} {
		_, err := parse(t, "", "--release-volumes-on-lost-node-after="+value)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "--release-volumes-on-lost-node-after") {
			t.Errorf("%s: %v, want an error saying %q", value, err, want)
		}
	}
}

// The controller is ready only while the API server answers its /readyz:
// not when it says it is not ready, and not when nothing answers.
func TestControllerReadyFollowsTheAPIServer(t *testing.T) {
	var sick atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		if sick.Load() {
			http.Error(w, "[-]etcd failed", http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, "ok")
	}))
	core, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := apiServerReady(ctx, core); err != nil {
		t.Errorf("API server ready: %v", err)
	}
	sick.Store(true)
	if err := apiServerReady(ctx, core); err == nil {
		t.Error("ready while the API server says it is not")
	}
	srv.Close()
	if err := apiServerReady(ctx, core); err == nil || !strings.Contains(err.Error(), "does not answer") {
		t.Errorf("with no API server: %v, want an error saying it does not answer", err)
	}
}
