package metrics

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// APIRequests counts the requests a plinth process makes of the Kubernetes
// API server (plinth_api_requests_total{verb, resource, code}): what an idle
// node agent costs the API server is read from it (docs/performance.md).
type APIRequests struct {
	n *prometheus.CounterVec
}

// NewAPIRequests makes the counter; Register it with Metrics.Register, and
// wrap the client's transport with Wrap.
func NewAPIRequests() *APIRequests {
	return &APIRequests{n: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "plinth_api_requests_total",
		Help: "Requests to the Kubernetes API server, by verb (get, list, watch, create, update, patch, delete), resource (with its subresource: plinthnodes/status) and HTTP status code (\"error\" when none came back).",
	}, []string{"verb", "resource", "code"})}
}

// Describe and Collect make it a prometheus.Collector.
func (a *APIRequests) Describe(ch chan<- *prometheus.Desc) { a.n.Describe(ch) }
func (a *APIRequests) Collect(ch chan<- prometheus.Metric) { a.n.Collect(ch) }

// Wrap counts every request that goes through rt (rest.Config.Wrap).
func (a *APIRequests) Wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripper(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		code := "error"
		if err == nil {
			code = strconv.Itoa(resp.StatusCode)
		}
		verb, resource := apiRequest(req)
		a.n.WithLabelValues(verb, resource, code).Inc()
		return resp, err
	})
}

type roundTripper func(*http.Request) (*http.Response, error)

func (f roundTripper) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// apiRequest names a request to the API server as the API server's own
// metrics do: its verb and resource (subresource after a slash). Paths
// that are not of a resource are "other" (discovery, /version), so the
// labels stay few whatever the path.
func apiRequest(req *http.Request) (verb, resource string) {
	parts := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
	// /api/v1/... or /apis/<group>/<version>/...
	switch {
	case len(parts) >= 2 && parts[0] == "api":
		parts = parts[2:]
	case len(parts) >= 3 && parts[0] == "apis":
		parts = parts[3:]
	default:
		return strings.ToLower(req.Method), "other"
	}
	if len(parts) >= 2 && parts[0] == "namespaces" && len(parts) != 2 {
		parts = parts[2:] // namespaced: namespaces/<ns>/<resource>...
	}
	if len(parts) == 0 {
		return strings.ToLower(req.Method), "other"
	}
	resource = parts[0]
	named := len(parts) >= 2
	if len(parts) >= 3 {
		resource += "/" + parts[2]
	}
	switch req.Method {
	case http.MethodGet:
		switch {
		case req.URL.Query().Get("watch") == "true" || req.URL.Query().Get("watch") == "1":
			verb = "watch"
		case named:
			verb = "get"
		default:
			verb = "list"
		}
	case http.MethodPost:
		verb = "create"
	case http.MethodPut:
		verb = "update"
	case http.MethodPatch:
		verb = "patch"
	case http.MethodDelete:
		verb = "delete"
		if !named {
			verb = "deletecollection"
		}
	default:
		verb = strings.ToLower(req.Method)
	}
	return verb, resource
}
