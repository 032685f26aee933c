// Package nodestatus is plinth node's PlinthNode: it publishes the node's
// pools (healthy or not), devices and a heartbeat for the controller and
// kubectl plinth, and records events on the Node when a pool or a device
// changes health. It runs beside the volume reconciler, not inside it.
package nodestatus
