package app

import (
	"errors"
	"io/fs"
	"os"
	"runtime/debug"
	"strconv"
	"strings"

	"k8s.io/klog/v2"
)

// memoryLimitShare is the part of the container's memory limit the Go
// heap may grow to before the collector works harder: the rest is for
// what the runtime's limit does not count (stacks outside the heap,
// fragmentation) and the kernel's own.
const memoryLimitShare = 0.85

// setMemoryLimit tells the Go runtime the container's memory limit (read
// under sys, /sys normally), unless GOMEMLIMIT already says one: without
// it the collector lets the heap reach twice what is live (GOGC=100), and
// a controller whose live heap is half its limit is OOM-killed in a burst
// of claims, as plinth's was at ten thousand volumes. It returns the limit
// set, 0 if none.
func setMemoryLimit(sys fs.FS) int64 {
	if os.Getenv("GOMEMLIMIT") != "" {
		return 0
	}
	limit, err := containerMemoryLimit(sys)
	if err != nil || limit <= 0 {
		return 0
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	klog.InfoS("Go memory limit set from the container's", "containerLimitBytes", limit, "goMemLimitBytes", soft)
	return soft
}

// containerMemoryLimit reads the container's memory limit; 0 when it has
// none ("max", or v1's near-2^63 "unlimited"). A container sees its own
// cgroup at /sys/fs/cgroup: v2's memory.max, else v1's
// memory.limit_in_bytes.
func containerMemoryLimit(sys fs.FS) (int64, error) {
	var errs []error
	for _, name := range []string{"fs/cgroup/memory.max", "fs/cgroup/memory/memory.limit_in_bytes"} {
		b, err := fs.ReadFile(sys, name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v := strings.TrimSpace(string(b))
		if v == "max" {
			return 0, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, err
		}
		if n >= 1<<62 { // cgroup v1's "no limit" (page-rounded 2^63-1)
			return 0, nil
		}
		return n, nil
	}
	return 0, errors.Join(errs...)
}
