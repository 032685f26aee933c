// Package guard keeps a filesystem pool made on claimed disks (package
// disk) honest about them: while one of its disks is gone the pool is
// unhealthy and takes no new volume, a raid1 pool on fewer disks says it is
// degraded, and a filesystem that has shut down reads as failing. It sits
// above both pkg/pool and pkg/disk, so that neither imports the other's
// side.
package guard
