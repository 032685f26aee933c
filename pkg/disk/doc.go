// Package disk finds the node's block devices (read under configurable
// sysfs, /dev and procfs roots, so that fixture trees stand in for a
// machine), judges each one free, plinth's or foreign, selects disks by the
// node configuration's rules, and claims them: formats the free ones it may,
// records them by identity, and finds them again by that identity (never by
// kernel name) when plinth starts.
package disk
