package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	snapv1 "github.com/kubernetes-csi/external-snapshotter/client/v8/apis/volumesnapshot/v1"
	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// snapshotClass is deploy/overlays/snapshots's VolumeSnapshotClass.
const snapshotClass = "plinth-snapshots"

func snaps(t *testing.T) snapclient.Interface {
	t.Helper()
	c, err := snapclient.NewForConfig(e.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// takeSnapshot makes VolumeSnapshot name of claim and waits until it is
// ready to use; it returns the snapshot's handle (plinth's snapshot ID).
func takeSnapshot(t *testing.T, ctx context.Context, sc snapclient.Interface, ns, name, claim string) string {
	t.Helper()
	class := snapshotClass
	vs := &snapv1.VolumeSnapshot{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: snapv1.VolumeSnapshotSpec{
			Source:                  snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &claim},
			VolumeSnapshotClassName: &class,
		},
	}
	if _, err := sc.SnapshotV1().VolumeSnapshots(ns).Create(ctx, vs, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return waitSnapshotReady(t, ctx, sc, ns, name, 3*time.Minute)
}

func waitSnapshotReady(t *testing.T, ctx context.Context, sc snapclient.Interface, ns, name string, timeout time.Duration) string {
	t.Helper()
	var handle string
	var last *snapv1.VolumeSnapshot
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		vs, err := sc.SnapshotV1().VolumeSnapshots(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = vs
		st := vs.Status
		if st == nil || st.ReadyToUse == nil || !*st.ReadyToUse || st.BoundVolumeSnapshotContentName == nil {
			return false, nil
		}
		c, err := sc.SnapshotV1().VolumeSnapshotContents().Get(ctx, *st.BoundVolumeSnapshotContentName, metav1.GetOptions{})
		if err != nil || c.Status == nil || c.Status.SnapshotHandle == nil {
			return false, nil
		}
		handle = *c.Status.SnapshotHandle
		return true, nil
	})
	if err != nil {
		t.Fatalf("VolumeSnapshot %s/%s not ready: %v; last %+v; events: %s", ns, name, err, last, events(ctx, ns))
	}
	return handle
}

// fromSource is a claim filled from a VolumeSnapshot or (kind "") a PVC.
func fromSource(c *corev1.PersistentVolumeClaim, snapshot, claim string) *corev1.PersistentVolumeClaim {
	if snapshot != "" {
		g := snapv1.GroupName
		c.Spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: &g, Kind: "VolumeSnapshot", Name: snapshot}
	} else {
		c.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: "PersistentVolumeClaim", Name: claim}
	}
	return c
}

// poolUsed is how much of a pool's filesystem is in use, once what is
// written is on disk.
func poolUsed(t *testing.T, poolName string) int64 {
	t.Helper()
	unix.Sync()
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Join(hostRoot, "pools", poolName), &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Blocks-st.Bfree) * st.Bsize
}

// snapshotFiles lists what a pool holds for a snapshot ID on the host.
func snapshotFiles(poolName, id string) []string {
	m, _ := filepath.Glob(filepath.Join(hostRoot, "pools", poolName, "snapshots", id+"*"))
	return m
}

// Scenario 9 (issue 13): on each pool type, write in a pod, snapshot, write
// more, restore into a new PVC (the data as of the snapshot; the original
// untouched), clone the PVC while a pod uses it (the clone has the data;
// both are written independently), what the snapshot costs the pool, then
// delete the source PVC, restore again from the snapshot, and delete the
// snapshot: its storage is gone from the node.
func TestSnapshotRestoreClone(t *testing.T) {
	need(t)
	defer timed(t, "scenario 9 (snapshots, restores, clones)")()
	sc := snaps(t)
	for _, tc := range []struct{ class, pool, what string }{
		{"plinth-local", "local", "image files on xfs (reflink)"},
		{"plinth-ext", "ext", "image files on ext4 (copy)"},
		{"plinth-btrfs", "btr", "btrfs subvolumes (btrfs snapshot)"},
	} {
		t.Run(tc.pool, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			ns := namespace(t, ctx, "s9-"+tc.pool)
			claimAndPod(t, ctx, ns, pvc("src", tc.class, "256Mi", false), appPod("w1", "src", false, "write", "/data/a", "v1"))
			waitLog(t, ctx, ns, "w1", "content=v1", time.Minute)
			deletePod(t, ctx, ns, "w1")

			before := poolUsed(t, tc.pool)
			start := time.Now()
			id := takeSnapshot(t, ctx, sc, ns, "snap1", "src")
			took := time.Since(start)
			cost := poolUsed(t, tc.pool) - before

			// More on the source after the snapshot.
			if _, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("w2", "src", false, "write", "/data/b", "v2"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			waitLog(t, ctx, ns, "w2", "content=v2", 2*time.Minute)

			// Restore: the data as of the snapshot.
			start = time.Now()
			claimAndPod(t, ctx, ns, fromSource(pvc("restored", tc.class, "256Mi", false), "snap1", ""), appPod("r1", "restored", false, "files", "/data"))
			restored := time.Since(start)
			waitLog(t, ctx, ns, "r1", "files=a:v1\n", time.Minute)

			// Clone the source while w2 uses it: a, b; then each side writes
			// its own file and the other does not see it.
			start = time.Now()
			claimAndPod(t, ctx, ns, fromSource(pvc("clone", tc.class, "256Mi", false), "", "src"), appPod("c1", "clone", false, "write", "/data/c", "v3"))
			cloned := time.Since(start)
			waitLog(t, ctx, ns, "c1", "content=v3", time.Minute)
			if _, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("c2", "clone", false, "files", "/data"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			waitLog(t, ctx, ns, "c2", "files=a:v1,b:v2,c:v3\n", 2*time.Minute)
			if _, err := e.client.CoreV1().Pods(ns).Create(ctx, appPod("w3", "src", false, "files", "/data"), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			waitLog(t, ctx, ns, "w3", "files=a:v1,b:v2\n", 2*time.Minute)

			logf("scenario 9 [%s, %s]: snapshot ready in %s, costs the pool %d KiB at first; restore to a running pod in %s, clone in %s",
				tc.pool, tc.what, took.Round(time.Millisecond), cost/1024, restored.Round(time.Millisecond), cloned.Round(time.Millisecond))

			// The source goes; its snapshot still restores.
			for _, p := range []string{"w2", "w3"} {
				deletePod(t, ctx, ns, p)
			}
			if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "src", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			waitNoPV(t, ctx, ns, "src")
			claimAndPod(t, ctx, ns, fromSource(pvc("again", tc.class, "256Mi", false), "snap1", ""), appPod("r2", "again", false, "files", "/data"))
			waitLog(t, ctx, ns, "r2", "files=a:v1\n", time.Minute)

			// The snapshot goes: its storage leaves the node.
			if tc.pool != "btr" && len(snapshotFiles(tc.pool, id)) == 0 {
				t.Fatalf("snapshot %s has no storage under pool %s", id, tc.pool)
			}
			if err := sc.SnapshotV1().VolumeSnapshots(ns).Delete(ctx, "snap1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
				_, err := e.plinth.PlinthV1alpha1().PlinthSnapshots().Get(ctx, id, metav1.GetOptions{})
				return apierrors.IsNotFound(err) && len(snapshotFiles(tc.pool, id)) == 0, nil
			}); err != nil {
				t.Fatalf("snapshot %s still on the node after its VolumeSnapshot was deleted: %v (files %v)", id, err, snapshotFiles(tc.pool, id))
			}
			if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// waitNoPV waits until claim's PV is gone (the volume deleted on its node).
func waitNoPV(t *testing.T, ctx context.Context, ns, claim string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		pvs, err := e.client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, pv := range pvs.Items {
			if r := pv.Spec.ClaimRef; r != nil && r.Namespace == ns && r.Name == claim {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("the PV of %s/%s did not go: %v", ns, claim, err)
	}
}

// Scenario 10 (issue 13): kill -9 plinth controller and node while 10
// snapshots are taken: all become ready, and once they are deleted no
// snapshot object or storage is left.
func TestKillDuringSnapshots(t *testing.T) {
	need(t)
	defer timed(t, "scenario 10 (kill -9 while taking 10 snapshots)")()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	sc := snaps(t)
	ns := namespace(t, ctx, "s10")
	claimAndPod(t, ctx, ns, pvc("src", "plinth-local", "128Mi", false), appPod("w", "src", false, "write", "/data/a", "v1"))
	waitLog(t, ctx, ns, "w", "content=v1", time.Minute)
	class, claim := snapshotClass, "src"
	var wg sync.WaitGroup
	for i := range 10 {
		vs := &snapv1.VolumeSnapshot{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("k%d", i)},
			Spec:       snapv1.VolumeSnapshotSpec{Source: snapv1.VolumeSnapshotSource{PersistentVolumeClaimName: &claim}, VolumeSnapshotClassName: &class},
		}
		if _, err := sc.SnapshotV1().VolumeSnapshots(ns).Create(ctx, vs, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if i == 3 || i == 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for _, role := range []string{"controller", "node"} {
					logf("scenario 10: killed %d plinth %s process(es)", killPlinth(role), role)
				}
			}()
		}
	}
	wg.Wait()
	ids := map[string]bool{}
	for i := range 10 {
		ids[waitSnapshotReady(t, ctx, sc, ns, fmt.Sprintf("k%d", i), 5*time.Minute)] = true
	}
	if len(ids) != 10 {
		t.Fatalf("10 VolumeSnapshots, %d snapshot handles", len(ids))
	}
	objs, err := e.plinth.PlinthV1alpha1().PlinthSnapshots().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs.Items {
		if !ids[o.Name] {
			t.Errorf("PlinthSnapshot %s belongs to no VolumeSnapshot (leaked)", o.Name)
		}
	}
	if err := sc.SnapshotV1().VolumeSnapshots(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		objs, err := e.plinth.PlinthV1alpha1().PlinthSnapshots().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		left, _ := os.ReadDir(filepath.Join(hostRoot, "pools/local/snapshots"))
		var files []string
		for _, f := range left {
			if strings.HasPrefix(f.Name(), "sn-") {
				files = append(files, f.Name())
			}
		}
		return len(objs.Items) == 0 && len(files) == 0, nil
	}); err != nil {
		t.Fatalf("snapshots left after their VolumeSnapshots were deleted: %v", err)
	}
	if err := e.client.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}
