package app

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// Probe asks the health server on the unix socket at socket for path
// (/healthz or /readyz) and returns nil when it answers 200; otherwise an
// error that carries the failed checks it listed. `plinth probe` is the
// kubelet's exec probe of a node pod on the host network, where the
// metrics port may still belong to the pod this one replaces.
func Probe(ctx context.Context, socket, path string) error {
	if path != "/healthz" && path != "/readyz" {
		return fmt.Errorf("probe %q: want /healthz or /readyz", path)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		DisableKeepAlives: true,
	},
		// 200 from the path asked, nothing else: a redirect is a failure.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://health"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s on %s: %w", path, socket, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s on %s: %s: %s", path, socket, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
