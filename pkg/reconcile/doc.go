// Package reconcile is plinth node's side of the volume objects: it makes,
// grows and removes the storage that the PlinthVolume objects of its node
// ask for, answers in their status, and publishes the node's pools and
// devices in its PlinthNode.
package reconcile
