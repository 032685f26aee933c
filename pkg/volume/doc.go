// Package volume holds the controller's decisions: identity (IDs from
// names), sizes and parameters, placement over a set of nodes (best fit on
// a single pool, requisite and preferred nodes), and the one interface a
// controller asks of a node, Node. It does no host I/O: pkg/node does the
// node's work.
package volume
