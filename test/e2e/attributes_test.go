package e2e

import (
	"context"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
)

// A claim's VolumeAttributesClass in the real cluster: a pod's measured
// read IOPS (O_DIRECT, 4 KiB) drop to the class's limit within seconds of
// the claim naming it, and come back when a class without the limit
// replaces it; a class with a key plinth does not know is Infeasible and
// changes nothing; thin → thick → thin moves the image's allocated space.
func TestVolumeAttributesClass(t *testing.T) {
	need(t)
	defer timed(t, "volume attributes classes")()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "vac")
	const limit = 40
	classes := map[string]map[string]string{
		"e2e-slow":      {"readIOPS": strconv.Itoa(limit)},
		"e2e-unlimited": {"readIOPS": "0"},
		"e2e-bogus":     {"readIOPS": "10", "iops": "5"},
		"e2e-thick":     {"provisioning": "thick"},
		"e2e-thin":      {"provisioning": "thin"},
	}
	for name, params := range classes {
		c := &storagev1.VolumeAttributesClass{ObjectMeta: metav1.ObjectMeta{Name: name}, DriverName: "plinth.example.com", Parameters: params}
		if _, err := e.client.StorageV1().VolumeAttributesClasses().Create(ctx, c, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	defer func() {
		for name := range classes {
			_ = e.client.StorageV1().VolumeAttributesClasses().Delete(context.Background(), name, metav1.DeleteOptions{})
		}
	}()

	t.Run("iops", func(t *testing.T) {
		claimAndPod(t, ctx, ns, pvc("iops", "plinth-local", "64Mi", true), appPod("iops", "iops", true, "iops", "/dev/xvda"))
		waitLog(t, ctx, ns, "iops", "iops=", time.Minute)
		before := iopsSince(t, ctx, ns, "iops", time.Now(), 3)
		logf("vac: unlimited read IOPS %v", before)
		if median(before) < 4*limit {
			t.Fatalf("read IOPS before any class %v: too few to tell a limit of %d from", before, limit)
		}

		start := time.Now()
		setClass(t, ctx, ns, "iops", "e2e-slow")
		applied := waitClass(t, ctx, ns, "iops", "e2e-slow")
		// The first whole second after the class was applied.
		slow := iopsSince(t, ctx, ns, "iops", applied.Add(time.Second), 4)
		logf("vac: class applied %s after the claim named it; read IOPS then %v (limit %d)", applied.Sub(start).Round(100*time.Millisecond), slow, limit)
		for _, n := range slow {
			if n > limit*5/4+2 {
				t.Fatalf("read IOPS after class e2e-slow (readIOPS %d): %v", limit, slow)
			}
		}

		// A class with a key plinth does not know: Infeasible, with the
		// error on the claim, and the limit stays.
		setClass(t, ctx, ns, "iops", "e2e-bogus")
		waitModifyStatus(t, ctx, ns, "iops", "e2e-bogus", corev1.PersistentVolumeClaimModifyVolumeInfeasible)
		if still := iopsSince(t, ctx, ns, "iops", time.Now(), 2); median(still) > limit*5/4+2 {
			t.Fatalf("read IOPS after an infeasible class: %v, want the old limit %d", still, limit)
		}

		setClass(t, ctx, ns, "iops", "e2e-unlimited")
		lifted := waitClass(t, ctx, ns, "iops", "e2e-unlimited")
		after := iopsSince(t, ctx, ns, "iops", lifted.Add(time.Second), 3)
		logf("vac: read IOPS with the limit lifted %v", after)
		if median(after) < 4*limit {
			t.Fatalf("read IOPS after the limit was lifted: %v", after)
		}
		deleteClaim(t, ctx, ns, "iops", "iops")
	})

	t.Run("provisioning", func(t *testing.T) {
		claimAndPod(t, ctx, ns, pvc("prov", "plinth-local", "512Mi", false), appPod("prov", "prov", false, "fill", "/data/f", "8", "1"))
		waitLog(t, ctx, ns, "prov", "ready", time.Minute)
		img := imageOf(t, ctx, ns, "prov")
		thin := allocated(t, img)
		setClass(t, ctx, ns, "prov", "e2e-thick")
		waitClass(t, ctx, ns, "prov", "e2e-thick")
		thick := allocated(t, img)
		setClass(t, ctx, ns, "prov", "e2e-thin")
		waitClass(t, ctx, ns, "prov", "e2e-thin")
		thinAgain := allocated(t, img)
		logf("vac: image of a 512 MiB volume holding 8 MiB: thin %d MiB, thick %d MiB, thin again %d MiB", thin>>20, thick>>20, thinAgain>>20)
		if thin > 256<<20 || thick < 512<<20 || thinAgain > thin+(32<<20) {
			t.Fatalf("allocated bytes: thin %d, thick %d, thin again %d", thin, thick, thinAgain)
		}
		deleteClaim(t, ctx, ns, "prov", "prov")
	})
}

func setClass(t *testing.T, ctx context.Context, ns, claim, class string) {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"spec": map[string]any{"volumeAttributesClassName": class}})
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Patch(ctx, claim, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

// waitClass waits until the claim's status says class is applied, and
// returns when it saw that.
func waitClass(t *testing.T, ctx context.Context, ns, claim, class string) time.Time {
	t.Helper()
	var c *corev1.PersistentVolumeClaim
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		c, err = e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		return err == nil && c.Status.CurrentVolumeAttributesClassName != nil && *c.Status.CurrentVolumeAttributesClassName == class &&
			c.Status.ModifyVolumeStatus == nil, nil
	})
	if err != nil {
		t.Fatalf("claim %s/%s never had class %s: %v; status %+v; events: %s", ns, claim, class, err, c.Status, events(ctx, ns))
	}
	return time.Now()
}

func waitModifyStatus(t *testing.T, ctx context.Context, ns, claim, class string, want corev1.PersistentVolumeClaimModifyVolumeStatus) {
	t.Helper()
	var c *corev1.PersistentVolumeClaim
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		c, err = e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		return err == nil && c.Status.ModifyVolumeStatus != nil && c.Status.ModifyVolumeStatus.TargetVolumeAttributesClassName == class &&
			c.Status.ModifyVolumeStatus.Status == want, nil
	})
	if err != nil {
		t.Fatalf("claim %s/%s: modifyVolumeStatus never %s for %s: %v; status %+v", ns, claim, want, class, err, c.Status)
	}
	var errCond bool
	for _, cond := range c.Status.Conditions {
		errCond = errCond || cond.Type == corev1.PersistentVolumeClaimVolumeModifyVolumeError
	}
	if !errCond {
		t.Fatalf("claim %s/%s: %s without a ModifyVolumeError condition: %+v", ns, claim, want, c.Status.Conditions)
	}
}

var iopsLine = regexp.MustCompile(`(?m)^iops=(\d+) t=(\d+)$`)

// iopsSince waits for n whole seconds counted by the pod from since on, and
// returns their read counts.
func iopsSince(t *testing.T, ctx context.Context, ns, pod string, since time.Time, n int) []int {
	t.Helper()
	var out []int
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Duration(n+30)*time.Second, true, func(ctx context.Context) (bool, error) {
		log := waitLog(t, ctx, ns, pod, "iops=", time.Minute)
		out = out[:0]
		for _, m := range iopsLine.FindAllStringSubmatch(log, -1) {
			sec, _ := strconv.ParseInt(m[2], 10, 64)
			if sec >= since.Unix() {
				v, _ := strconv.Atoi(m[1])
				out = append(out, v)
			}
		}
		if len(out) > n {
			out = out[:n]
		}
		return len(out) == n, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s: %d seconds of IOPS from %s: have %v: %v", ns, pod, n, since.Format(time.TimeOnly), out, err)
	}
	return out
}

func median(v []int) int {
	s := append([]int(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}

// imageOf is the image file of the claim's volume in the "local" pool.
func imageOf(t *testing.T, ctx context.Context, ns, claim string) string {
	t.Helper()
	c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := e.client.CoreV1().PersistentVolumes().Get(ctx, c.Spec.VolumeName, metav1.GetOptions{})
	if err != nil || pv.Spec.CSI == nil {
		t.Fatalf("PV of %s/%s: %v", ns, claim, err)
	}
	if !strings.HasPrefix(pv.Spec.CSI.VolumeHandle, "pv-") {
		t.Fatalf("volume handle %q", pv.Spec.CSI.VolumeHandle)
	}
	return filepath.Join(hostRoot, "pools", "local", "volumes", pv.Spec.CSI.VolumeHandle+".img")
}

// allocated is the bytes of the file's blocks.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
