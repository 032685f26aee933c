package unixsock

import (
	"fmt"
	"net/url"
)

// ParseEndpoint returns the socket path of a unix://PATH endpoint.
func ParseEndpoint(ep string) (string, error) {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("endpoint %q: want unix://PATH", ep)
	}
	p := u.Path
	if u.Host != "" { // unix://relative/path
		p = u.Host + u.Path
	}
	if p == "" {
		return "", fmt.Errorf("endpoint %q: no socket path", ep)
	}
	return p, nil
}
