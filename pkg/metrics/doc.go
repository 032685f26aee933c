// Package metrics serves plinth's Prometheus metrics and its /healthz and
// /readyz endpoints on a configurable address, off the kubelet's ports.
package metrics
