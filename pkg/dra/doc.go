// Package dra serves the node's accelerators through Dynamic Resource
// Allocation (resource.k8s.io/v1): plinth node as a kubelet DRA plugin
// built on k8s.io/dynamic-resource-allocation. It publishes the devices of
// every resource configured `api: dra` in ResourceSlices (one pool per node,
// named after it) with the attributes claims select on, taints a device
// while it is unhealthy, prepares claims by writing a CDI spec per claim,
// keeps what it prepared in a checkpoint (temp → fsync → rename) so that a
// restart prepares nothing twice, and reports device health to the kubelet.
package dra
