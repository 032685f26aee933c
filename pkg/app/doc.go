// Package app wires plinth's parts into the process of each role: the
// configuration (flags and the versioned configuration file), its
// validation, and run(ctx) for `plinth standalone`, `plinth node` and
// `plinth controller`, each part started with the context and waited for
// (runAll).
//
// One place per role: standalone.go, node.go and controller.go each put
// their role together. The volume side of a node, which standalone and
// node share, is in volumes.go (the root claimed, the pools opened, CSI
// served), with its configuration in csiconfig.go and the pools made from
// disk rules in disks.go.
package app
