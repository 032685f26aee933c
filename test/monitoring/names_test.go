// Package monitoring checks plinth's alert rules and Grafana dashboard
// (deploy/monitoring) against the series plinth exports: every plinth_*
// metric they read is one that plinth registers, and every label they match
// it on is one that series has. promtool's rule unit tests (make alerts) run
// the rules themselves.
package monitoring

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"sigs.k8s.io/yaml"

	"github.com/plinth-dev/plinth/pkg/metrics"
)

const (
	rulesFile     = "../../deploy/monitoring/plinth-alerts.yaml"
	dashboardFile = "../../deploy/monitoring/plinth-dashboard.json"
)

// targetLabels are the labels Prometheus adds to every scraped series (job,
// instance) and those prometheus-operator's ServiceMonitors add from the
// target (namespace, service, pod, container, endpoint).
var targetLabels = []string{"job", "instance", "namespace", "service", "pod", "container", "endpoint"}

// family is one metric family plinth exposes: its type and label names.
type family struct {
	typ    string
	labels map[string]bool
}

// exported is every family a node agent and a controller expose, each
// series made to appear once: the counters and histograms by label are
// observed once, the pool, device and program collectors get one sample
// each.
func exported(t *testing.T) map[string]family {
	t.Helper()
	m := metrics.New()
	if err := m.RegisterController(); err != nil {
		t.Fatal(err)
	}
	m.ObserveCall("NodeStageVolume", codes.OK, time.Millisecond)
	m.ObserveAllocate("example.com/gpu", nil, time.Millisecond)
	m.ObservePrepare(1, time.Millisecond)
	m.Registered("csi")
	m.ObserveOperation("provision", "success", time.Millisecond)
	m.SetLeader(true)
	must(t, m.Register(metrics.NewPoolCollector(func(context.Context) ([]metrics.PoolSample, error) {
		return []metrics.PoolSample{{Name: "fast", Backend: "file", TotalBytes: 100, FreeBytes: 50, AllocatableBytes: 40, ProvisionedBytes: 60,
			Volumes: map[string]int{"ready": 1}, Snapshots: map[string]int{"ready": 1}}}, nil
	})))
	must(t, m.Register(metrics.NewDeviceCollector(func() []metrics.DeviceSample {
		return []metrics.DeviceSample{{Resource: "example.com/gpu", Healthy: 1}}
	}, func() int { return 1 })))
	must(t, m.Register(metrics.NewProgramCollector(func() map[string]uint64 { return map[string]uint64{"mkfs.ext4": 1} })))

	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("/metrics: %d %s", rec.Code, rec.Body)
	}
	return parseExposition(t, rec.Body.String())
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

var (
	typeLine   = regexp.MustCompile(`^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (\w+)$`)
	seriesLine = regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? `)
	labelName  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"`)
)

// parseExposition reads Prometheus' text format: each family's type from
// its # TYPE line, its label names from its series (a histogram's series
// are name_bucket, name_sum and name_count; le is left out).
func parseExposition(t *testing.T, text string) map[string]family {
	t.Helper()
	fams := map[string]family{}
	for _, line := range strings.Split(text, "\n") {
		if m := typeLine.FindStringSubmatch(line); m != nil {
			fams[m[1]] = family{typ: m[2], labels: map[string]bool{}}
			continue
		}
		m := seriesLine.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "#") {
			continue
		}
		f, ok := fams[m[1]]
		if !ok {
			f, ok = fams[baseName(m[1], fams)]
		}
		if !ok {
			t.Fatalf("series of no family in /metrics: %s", line)
		}
		for _, l := range labelName.FindAllStringSubmatch(m[2], -1) {
			if l[1] != "le" && l[1] != "quantile" {
				f.labels[l[1]] = true
			}
		}
	}
	return fams
}

// baseName is the family of a histogram's or summary's series name
// (name_bucket, name_sum, name_count), or "" when there is none.
func baseName(name string, fams map[string]family) string {
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		f, ok := fams[base]
		if ok && (f.typ == "histogram" || (f.typ == "summary" && suffix != "_bucket")) {
			return base
		}
	}
	return ""
}

// exprs reads the PromQL expressions of the rules file and the dashboard:
// each rule's expr, each panel target's expr and each template variable's
// query, named by where they stand.
func exprs(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	b, err := os.ReadFile(rulesFile)
	must(t, err)
	var rules struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Alert  string `json:"alert"`
				Record string `json:"record"`
				Expr   string `json:"expr"`
			} `json:"rules"`
		} `json:"groups"`
	}
	if err := yaml.Unmarshal(b, &rules); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			out["rule "+g.Name+"/"+r.Alert+r.Record] = r.Expr
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s holds no rules", rulesFile)
	}

	b, err = os.ReadFile(dashboardFile)
	must(t, err)
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	n := len(out)
	walk(dash, "dashboard", func(where, key, s string) {
		if key == "expr" || key == "query" || key == "definition" {
			out[where+"."+key] = s
		}
	})
	if len(out) == n {
		t.Fatalf("%s holds no queries", dashboardFile)
	}
	return out
}

// walk calls f with every string in v, the key it stands under and where
// it is (panel titles and template variable names make the path readable).
func walk(v any, where string, f func(where, key, s string)) {
	switch v := v.(type) {
	case map[string]any:
		if title, ok := v["title"].(string); ok {
			where += "/" + title
		} else if name, ok := v["name"].(string); ok {
			where += "/$" + name
		}
		for k, x := range v {
			if s, ok := x.(string); ok {
				f(where, k, s)
				continue
			}
			walk(x, where, f)
		}
	case []any:
		for _, x := range v {
			walk(x, where, f)
		}
	}
}

var (
	// A metric name of plinth's in PromQL: not preceded by a name
	// character, so that label values such as "plinth-node-metrics" and
	// longer names do not match.
	metricName = regexp.MustCompile(`(^|[^a-zA-Z0-9_:])(plinth_[a-zA-Z0-9_:]*)`)
	// name{matchers}: the label names the selector matches on.
	selector = regexp.MustCompile(`(plinth_[a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	matcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*"`)
)

// Every plinth_* metric a rule or a dashboard query reads is one plinth
// exports (a histogram's _bucket, _sum and _count series included), and
// every label its selector matches on is one of its labels or a target's.
func TestQueriesReadExportedSeries(t *testing.T) {
	fams := exported(t)
	used := map[string]bool{}
	for where, e := range exprs(t) {
		for _, m := range metricName.FindAllStringSubmatch(e, -1) {
			name := m[2]
			fam := name
			if _, ok := fams[name]; !ok {
				fam = baseName(name, fams)
			}
			if fam == "" {
				t.Errorf("%s reads %s, which plinth does not export: %q", where, name, e)
				continue
			}
			used[fam] = true
		}
		for _, m := range selector.FindAllStringSubmatch(e, -1) {
			fam := m[1]
			if _, ok := fams[fam]; !ok {
				fam = baseName(m[1], fams)
			}
			f, ok := fams[fam]
			if !ok {
				continue // reported above
			}
			for _, l := range matcher.FindAllStringSubmatch(m[2], -1) {
				label := l[1]
				if label == "le" && strings.HasSuffix(m[1], "_bucket") {
					continue
				}
				if !f.labels[label] && !slices.Contains(targetLabels, label) {
					t.Errorf("%s matches %s on label %q, which it does not have (it has %v)", where, m[1], label, keys(f.labels))
				}
			}
		}
	}
	var unused []string
	for name := range fams {
		if strings.HasPrefix(name, "plinth_") && !used[name] {
			unused = append(unused, name)
		}
	}
	sort.Strings(unused)
	if len(unused) > 0 {
		t.Logf("plinth series no rule or panel reads: %v", unused)
	}
}

// The check itself: a name plinth does not export, a histogram suffix on a
// counter and a label the series lacks are each caught; names inside label
// values are not names.
func TestNameCheckCatchesStrays(t *testing.T) {
	fams := exported(t)
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`rate(plinth_csi_operation_duration_seconds_bucket[5m])`, []string{"plinth_csi_operation_duration_seconds_bucket"}},
		{`plinth_pool_healthy == 0`, []string{"plinth_pool_healthy"}},
		{`rate(plinth_csi_operations_total_count[5m])`, []string{"plinth_csi_operations_total_count"}},
		{`up{job="plinth-node-metrics"} == 0`, nil},
		{`xplinth_devices + plinth_devices`, []string{"plinth_devices"}},
	} {
		var got []string
		for _, m := range metricName.FindAllStringSubmatch(c.expr, -1) {
			got = append(got, m[2])
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("names in %q: %v, want %v", c.expr, got, c.want)
		}
	}
	if _, ok := fams["plinth_pool_healthy"]; ok {
		t.Error("plinth_pool_healthy is exported: pick another stray name")
	}
	if baseName("plinth_csi_operations_total_count", fams) != "" {
		t.Error("a counter's name with _count taken for a histogram's series")
	}
	if baseName("plinth_csi_operation_duration_seconds_bucket", fams) != "plinth_csi_operation_duration_seconds" {
		t.Error("a histogram's _bucket series not taken for its family")
	}
	if f := fams["plinth_devices"]; f.labels["state"] || !f.labels["health"] {
		t.Errorf("plinth_devices' labels: %v", keys(f.labels))
	}
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
