// Package inspect is what `kubectl plinth` shows: plinth's nodes (pools,
// devices), volumes (node, pool, size, the pods using them), devices (who
// holds what) and why a PVC or a pod is pending, read from the API server.
package inspect
