// Package device finds accelerators on a node from sysfs, /dev and procfs
// (read under configurable roots, so that fixture trees can stand in for a
// machine), decides which resource each belongs to, tracks health and
// chooses preferred allocations. No vendor library is needed.
package device
