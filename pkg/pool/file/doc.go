// Package file is the pool backend whose volumes are image files in a
// directory, attached as loop devices. Thin images are sparse, thick ones
// preallocated; snapshots and clones are reflinks where the filesystem can
// share extents and sparse copies elsewhere.
package file
