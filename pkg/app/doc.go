// Package app wires plinth's parts into the process of each role: the
// configuration (flags and the versioned configuration file), its
// validation, and run(ctx) for `plinth standalone`, `plinth node` and
// `plinth controller`, each part started with the context and waited for.
package app
