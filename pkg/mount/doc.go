// Package mount attaches, formats, mounts and resizes volumes on the host:
// loop devices through ioctls, mounts through mount(2), and the
// few programs (mkfs, fsck, resize) run with argument lists and a context.
package mount
