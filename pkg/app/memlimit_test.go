package app

import (
	"testing"
	"testing/fstest"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestContainerMemoryLimit(t *testing.T) {
	for name, tc := range map[string]struct {
		files map[string]string
		want  int64
		err   bool
	}{
		"v2 limit":      {map[string]string{"fs/cgroup/memory.max": "268435456\n"}, 268435456, false},
		"v2 no limit":   {map[string]string{"fs/cgroup/memory.max": "max\n"}, 0, false},
		"v1 limit":      {map[string]string{"fs/cgroup/memory/memory.limit_in_bytes": "536870912\n"}, 536870912, false},
		"v1 no limit":   {map[string]string{"fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n"}, 0, false},
		"v2 before v1":  {map[string]string{"fs/cgroup/memory.max": "1000", "fs/cgroup/memory/memory.limit_in_bytes": "2000"}, 1000, false},
		"garbage":       {map[string]string{"fs/cgroup/memory.max": "lots"}, 0, true},
		"no cgroup fs":  {map[string]string{}, 0, true},
		"negative (v1)": {map[string]string{"fs/cgroup/memory/memory.limit_in_bytes": "-1"}, -1, false},
	} {
		t.Run(name, func(t *testing.T) {
			sys := fstest.MapFS{}
			for p, c := range tc.files {
				sys[p] = &fstest.MapFile{Data: []byte(c)}
			}
			got, err := containerMemoryLimit(sys)
			if (err != nil) != tc.err || got != tc.want {
				t.Errorf("containerMemoryLimit = %d, %v; want %d, error %v", got, err, tc.want, tc.err)
			}
		})
	}
}

// GOMEMLIMIT set by the operator wins; no limit sets none.
func TestSetMemoryLimitLeavesGOMEMLIMIT(t *testing.T) {
	sys := fstest.MapFS{"fs/cgroup/memory.max": &fstest.MapFile{Data: []byte("268435456")}}
	t.Setenv("GOMEMLIMIT", "100MiB")
	if got := setMemoryLimit(sys); got != 0 {
		t.Errorf("with GOMEMLIMIT set: limit %d set", got)
	}
	t.Setenv("GOMEMLIMIT", "")
	if got := setMemoryLimit(fstest.MapFS{"fs/cgroup/memory.max": &fstest.MapFile{Data: []byte("max")}}); got != 0 {
		t.Errorf("without a container limit: limit %d set", got)
	}
}

func TestDropManagedFields(t *testing.T) {
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv", Annotations: map[string]string{"a": "b"},
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate}}}}
	out, err := dropManagedFields(pv)
	if err != nil || out.(*corev1.PersistentVolume).ManagedFields != nil || out.(*corev1.PersistentVolume).Annotations["a"] != "b" {
		t.Errorf("dropManagedFields: %+v, %v; want no managed fields, the rest kept", out, err)
	}
	if out, err := dropManagedFields("not an object"); err != nil || out != "not an object" {
		t.Errorf("dropManagedFields of a non-object: %v, %v", out, err)
	}
}
