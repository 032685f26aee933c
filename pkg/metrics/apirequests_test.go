package metrics

import (
	"net/http"
	"net/url"
	"testing"
)

func TestAPIRequestNames(t *testing.T) {
	for _, c := range []struct{ method, url, verb, resource string }{
		{"GET", "/api/v1/nodes/w1", "get", "nodes"},
		{"GET", "/api/v1/nodes?watch=true&resourceVersion=5", "watch", "nodes"},
		{"GET", "/api/v1/namespaces/ns/persistentvolumeclaims", "list", "persistentvolumeclaims"},
		{"GET", "/api/v1/namespaces/ns", "get", "namespaces"},
		{"PUT", "/apis/plinth.example.com/v1alpha1/plinthnodes/w1/status", "update", "plinthnodes/status"},
		{"PATCH", "/apis/coordination.k8s.io/v1/namespaces/plinth-system/leases/plinth", "patch", "leases"},
		{"POST", "/api/v1/namespaces/ns/events", "create", "events"},
		{"POST", "/api/v1/namespaces/ns/pods/p/eviction", "create", "pods/eviction"},
		{"DELETE", "/apis/plinth.example.com/v1alpha1/plinthvolumes/pv-1", "delete", "plinthvolumes"},
		{"DELETE", "/apis/plinth.example.com/v1alpha1/plinthvolumes", "deletecollection", "plinthvolumes"},
		{"GET", "/apis/storage.k8s.io/v1", "get", "other"},
		{"GET", "/version", "get", "other"},
	} {
		u, _ := url.Parse(c.url)
		verb, resource := apiRequest(&http.Request{Method: c.method, URL: u})
		if verb != c.verb || resource != c.resource {
			t.Errorf("%s %s: %s %s, want %s %s", c.method, c.url, verb, resource, c.verb, c.resource)
		}
	}
}
