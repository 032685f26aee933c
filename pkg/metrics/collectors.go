package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"
)

// PoolSample is one pool's state at scrape time.
type PoolSample struct {
	Name, Backend                                             string
	TotalBytes, FreeBytes, AllocatableBytes, ProvisionedBytes int64
	Volumes                                                   map[string]int // by state
	Snapshots                                                 map[string]int // by state
	// Degraded: the pool serves with less redundancy than it was made
	// with (a btrfs raid1 pool with a disk gone).
	Degraded bool
}

type poolCollector struct {
	sample                               func(context.Context) ([]PoolSample, error)
	size, free, alloc, prov, vols, snaps *prometheus.Desc
	degraded                             *prometheus.Desc
}

// NewPoolCollector reads pools (statfs and records) at each scrape.
func NewPoolCollector(sample func(context.Context) ([]PoolSample, error)) prometheus.Collector {
	l := []string{"pool", "backend"}
	return &poolCollector{
		sample: sample,
		size:   prometheus.NewDesc("plinth_pool_size_bytes", "Size of the filesystem a pool lives on.", l, nil),
		free:   prometheus.NewDesc("plinth_pool_free_bytes", "Free bytes of the pool's filesystem (statfs).", l, nil),
		alloc:  prometheus.NewDesc("plinth_pool_allocatable_bytes", "Bytes a new volume may be given without over-committing.", l, nil),
		prov:   prometheus.NewDesc("plinth_pool_provisioned_bytes", "Sum of the capacities of the pool's volumes.", l, nil),
		vols:   prometheus.NewDesc("plinth_pool_volumes", "Volumes in the pool, by state.", append(l, "state"), nil),
		snaps:  prometheus.NewDesc("plinth_pool_snapshots", "Snapshots in the pool, by state.", append(l, "state"), nil),
		degraded: prometheus.NewDesc("plinth_pool_degraded",
			"1 while the pool serves with less redundancy than it was made with (a raid1 pool with a disk gone), else 0.", l, nil),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.size, c.free, c.alloc, c.prov, c.vols, c.snaps, c.degraded} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	samples, err := c.sample(ctx)
	if err != nil {
		klog.ErrorS(err, "Collect pool metrics")
		return
	}
	for _, s := range samples {
		ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(s.TotalBytes), s.Name, s.Backend)
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(s.FreeBytes), s.Name, s.Backend)
		ch <- prometheus.MustNewConstMetric(c.alloc, prometheus.GaugeValue, float64(s.AllocatableBytes), s.Name, s.Backend)
		ch <- prometheus.MustNewConstMetric(c.prov, prometheus.GaugeValue, float64(s.ProvisionedBytes), s.Name, s.Backend)
		degraded := 0.0
		if s.Degraded {
			degraded = 1
		}
		ch <- prometheus.MustNewConstMetric(c.degraded, prometheus.GaugeValue, degraded, s.Name, s.Backend)
		for state, n := range withStates(s.Volumes) {
			ch <- prometheus.MustNewConstMetric(c.vols, prometheus.GaugeValue, float64(n), s.Name, s.Backend, state)
		}
		for state, n := range withStates(s.Snapshots) {
			ch <- prometheus.MustNewConstMetric(c.snaps, prometheus.GaugeValue, float64(n), s.Name, s.Backend, state)
		}
	}
}

// withStates is counts with a 0 for each record state (creating, ready,
// deleting) it lacks: an empty pool says 0 rather than nothing, so that
// sums and alerts see it.
func withStates(counts map[string]int) map[string]int {
	out := make(map[string]int, 3+len(counts))
	for _, st := range []string{"creating", "ready", "deleting"} {
		out[st] = 0
	}
	for st, n := range counts {
		out[st] = n
	}
	return out
}

// DeviceSample counts one resource's units by health.
type DeviceSample struct {
	Resource           string
	Healthy, Unhealthy int
}

type deviceCollector struct {
	sample      func() []DeviceSample
	transitions func() int
	units, tr   *prometheus.Desc
}

// NewDeviceCollector reads the device inventory at each scrape.
func NewDeviceCollector(sample func() []DeviceSample, transitions func() int) prometheus.Collector {
	return &deviceCollector{
		sample: sample, transitions: transitions,
		units: prometheus.NewDesc("plinth_devices", "Units advertised to the kubelet, by resource and health.", []string{"resource", "health"}, nil),
		tr:    prometheus.NewDesc("plinth_device_health_transitions_total", "Health changes advertised (lost or regained).", nil, nil),
	}
}

func (c *deviceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.units; ch <- c.tr }

func (c *deviceCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.sample() {
		ch <- prometheus.MustNewConstMetric(c.units, prometheus.GaugeValue, float64(s.Healthy), s.Resource, "healthy")
		ch <- prometheus.MustNewConstMetric(c.units, prometheus.GaugeValue, float64(s.Unhealthy), s.Resource, "unhealthy")
	}
	ch <- prometheus.MustNewConstMetric(c.tr, prometheus.CounterValue, float64(c.transitions()))
}

type programCollector struct {
	counts func() map[string]uint64
	desc   *prometheus.Desc
}

// NewProgramCollector reports the programs the node started (mkfs, blkid,
// resize tools), by name: what volume operations cost in processes.
func NewProgramCollector(counts func() map[string]uint64) prometheus.Collector {
	return &programCollector{counts: counts, desc: prometheus.NewDesc("plinth_programs_launched_total",
		"Programs the node service started (mkfs, blkid, e2fsck, resize2fs, ...), by program.", []string{"program"}, nil)}
}

func (c *programCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *programCollector) Collect(ch chan<- prometheus.Metric) {
	for name, n := range c.counts() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), name)
	}
}
