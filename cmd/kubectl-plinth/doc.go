// Command kubectl-plinth is the kubectl plugin `kubectl plinth`: it sums up
// the installation (status), shows plinth's nodes, volumes, devices and
// disks, and explains why a PVC or pod is pending, reading the cluster
// through pkg/inspect.
package main
