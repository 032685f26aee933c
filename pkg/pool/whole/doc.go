// Package whole is the pool backend whose volumes are whole disks: each
// volume is one of the pool's claimed disks (found by identity, never by
// kernel name), handed out raw or formatted when staged, and wiped before
// it is given to anyone else.
package whole
