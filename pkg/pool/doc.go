// Package pool defines where volumes are carved from on a node: the Pool
// interface, the volume and snapshot records every backend keeps beside its
// storage, and the validation of identifiers that become path elements.
package pool
