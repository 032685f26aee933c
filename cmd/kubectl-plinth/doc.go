// Command kubectl-plinth is the kubectl plugin `kubectl plinth`: it shows
// plinth's nodes, volumes and devices and explains why a PVC or pod is
// pending, reading the cluster through pkg/inspect.
package main
