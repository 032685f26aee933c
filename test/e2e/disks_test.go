package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

// loopOf is the loop device a disk image is attached to ("" when none).
func loopOf(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("losetup", "-j", img, "-n", "-O", "NAME").Output()
	if err != nil {
		t.Fatalf("losetup -j %s: %v", img, err)
	}
	return strings.TrimSpace(strings.Split(string(out), "\n")[0])
}

func blkidOf(dev string) string {
	out, _ := exec.Command("blkid", "-p", "-o", "export", dev).Output()
	return strings.TrimSpace(string(out))
}

// waitDisk waits until the node publishes the disk in state.
func waitDisk(t *testing.T, ctx context.Context, img, state string) v1alpha1.DiskStatus {
	t.Helper()
	var got v1alpha1.DiskStatus
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		pn, err := e.plinthNode(ctx)
		if err != nil {
			return false, nil
		}
		for _, d := range pn.Status.Disks {
			if d.ID == "file:"+img {
				got = d
				return d.State == state, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("disk %s: %+v, want state %s: %v", img, got, state, err)
	}
	return got
}

// Scenario 13: the node's disks under rules (test/e2e prepareDisks): a
// file pool on one disk, a btrfs raid1 pool over two and a disk pool of
// two, with volumes used by pods; a foreign disk is listed and untouched;
// a disk pulled while a pod uses another; a pool filesystem that fails;
// whole-disk volumes wiped when deleted.
func TestDiskPools(t *testing.T) {
	need(t)
	defer timed(t, "scenario 13 (disk rules)")()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	ns := namespace(t, ctx, "s13")

	// The node lists every disk; the rules' disks are plinth's, the foreign
	// one says why it is not.
	for _, n := range []string{"dfast", "dm1", "dm2", "dw1", "dw2"} {
		waitDisk(t, ctx, e.disks[n], "plinth")
	}
	if d := waitDisk(t, ctx, e.disks["dforeign"], "foreign"); !strings.Contains(d.Reason, "ext4") {
		t.Errorf("the foreign disk is foreign because %q; want its ext4 named", d.Reason)
	}
	out, err := exec.CommandContext(ctx, e.kubectlPlinth, "--kubeconfig", e.c.Kubeconfig, "disks", "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl plinth disks: %v: %s", err, out)
	}
	var listed []struct{ Node, ID, State, Pool string }
	if err := json.Unmarshal(out, &listed); err != nil {
		t.Fatalf("kubectl plinth disks -o json: %v: %s", err, out)
	}
	pools := map[string]string{}
	for _, d := range listed {
		pools[d.ID] = d.Pool
	}
	if pools["file:"+e.disks["dm2"]] != "dmirror" || pools["file:"+e.disks["dw1"]] != "dwhole" {
		t.Errorf("kubectl plinth disks: %s", out)
	}

	// The scheduler's view of the disk pool: what is free, and the largest
	// volume one node can make (its largest free disk).
	var capErr error
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		l, err := e.client.StorageV1().CSIStorageCapacities("plinth-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			capErr = err
			return false, nil
		}
		for _, c := range l.Items {
			if c.StorageClassName == "plinth-whole-disk" && c.MaximumVolumeSize != nil && c.Capacity != nil {
				capErr = fmt.Errorf("capacity %s, maximum volume size %s", c.Capacity, c.MaximumVolumeSize)
				return c.MaximumVolumeSize.Value() == 96<<20 && c.Capacity.Value() == 160<<20, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Errorf("CSIStorageCapacity of plinth-whole-disk: %v; want 160Mi free, 96Mi the largest volume", capErr)
	}

	// A volume from each layout, used by a pod.
	claimAndPod(t, ctx, ns, pvc("fast", "plinth-disk-file", "64Mi", false), appPod("fast", "fast", false, "write", "/data/f", "on-a-disk-of-its-own"))
	waitLog(t, ctx, ns, "fast", "content=on-a-disk-of-its-own", time.Minute)
	claimAndPod(t, ctx, ns, pvc("mirror", "plinth-disk-mirror", "64Mi", false), appPod("mirror", "mirror", false, "write", "/data/f", "on-two-disks"))
	waitLog(t, ctx, ns, "mirror", "content=on-two-disks", time.Minute)
	// 80Mi: the 96Mi disk is the only one that holds it; the pod sees the
	// whole disk.
	claimAndPod(t, ctx, ns, pvc("whole", "plinth-whole-disk", "80Mi", true), appPod("whole", "whole", true, "block", "/dev/xvda"))
	if log := waitLog(t, ctx, ns, "whole", "roundtrip=", time.Minute); !strings.Contains(log, "blockdev=true size=100663296 roundtrip=true") {
		t.Fatalf("whole-disk block volume: %s", log)
	}
	// The other whole disk goes to a claim no pod uses (Immediate).
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("spare", "plinth-whole-disk", "32Mi", true), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "spare", metav1.GetOptions{})
		return err == nil && c.Status.Phase == corev1.ClaimBound, nil
	}); err != nil {
		t.Fatalf("spare claim not bound: %v%s", err, events(ctx, ns))
	}
	if p, err := e.pool(ctx, "dwhole"); err != nil || p.AllocatableBytes != 0 {
		t.Errorf("dwhole with both disks given: %+v %v", p, err)
	}

	// The spare's disk is pulled while the pod uses the other: the node
	// says the disk is missing and the pool runs degraded; the pod goes on.
	dw1 := loopOf(t, e.disks["dw1"])
	if out, err := exec.Command("losetup", "-d", dw1).CombinedOutput(); err != nil {
		t.Fatalf("pull %s: %v: %s", dw1, err, out)
	}
	waitDisk(t, ctx, e.disks["dw1"], "missing")
	waitEvents(t, ctx, " PlinthNode/"+nodeName+" DiskMissing", " Node/"+nodeName+" DiskMissing")
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := e.pool(ctx, "dwhole")
		return err == nil && p.Healthy && strings.Contains(p.Message, "degraded"), nil
	}); err != nil {
		p, _ := e.pool(ctx, "dwhole")
		t.Errorf("dwhole after a disk was pulled: %+v", p)
	}
	// The spare's volume object says its storage is out of reach (what the
	// controller's volume health reads).
	spareVolume := func() *v1alpha1.PlinthVolume {
		vols, _ := e.plinthVolumes(ctx)
		for _, v := range vols {
			if v.Spec.Claim == ns+"/spare" {
				return v
			}
		}
		return nil
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		v := spareVolume()
		return v != nil && v.Status.Reason == v1alpha1.ReasonUnreachable && strings.Contains(v.Status.Message, "not present"), nil
	}); err != nil {
		t.Errorf("the pulled disk's volume object: %+v", spareVolume())
	}
	pod, err := e.client.CoreV1().Pods(ns).Get(ctx, "whole", metav1.GetOptions{})
	if err != nil || pod.Status.Phase != corev1.PodRunning || pod.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("the pod on the other whole disk: %v %+v", err, pod.Status)
	}
	// The disk comes back (under another loop device if one was taken).
	if out, err := exec.Command("losetup", "-f", e.disks["dw1"]).CombinedOutput(); err != nil {
		t.Fatalf("reattach: %v: %s", err, out)
	}
	waitDisk(t, ctx, e.disks["dw1"], "plinth")
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		v := spareVolume()
		return v != nil && v.Status.Reason == "", nil
	}); err != nil {
		t.Errorf("the volume object after its disk came back: %+v", spareVolume())
	}

	// Everything deleted: the whole disks are wiped.
	for _, p := range []string{"fast", "mirror", "whole"} {
		deletePod(t, ctx, ns, p)
	}
	var pvs []string
	for _, c := range []string{"fast", "mirror", "whole", "spare"} {
		claim, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, c, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pvs = append(pvs, claim.Spec.VolumeName)
		if err := e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, c, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, pv := range pvs {
		waitVolumeGone(t, ctx, pv)
	}
	for _, n := range []string{"dw1", "dw2"} {
		if sig := blkidOf(loopOf(t, e.disks[n])); sig != "" {
			t.Errorf("disk %s after its volume was deleted: %s", n, sig)
		}
	}
	if p, err := e.pool(ctx, "dwhole"); err != nil || p.AllocatableBytes != 160<<20 {
		t.Errorf("dwhole after the deletes: %+v %v; want both disks free", p, err)
	}

	// The file pool's filesystem fails: the pool is published unhealthy
	// with an event on the Node, and a new claim on it is not provisioned.
	if out, err := exec.Command("xfs_io", "-x", "-c", "shutdown", "/var/lib/plinth-e2e/state/disks/mnt/dfast").CombinedOutput(); err != nil {
		t.Fatalf("xfs_io shutdown: %v: %s", err, out)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 90*time.Second, true, func(ctx context.Context) (bool, error) {
		p, err := e.pool(ctx, "dfast")
		return err == nil && !p.Healthy, nil
	}); err != nil {
		p, _ := e.pool(ctx, "dfast")
		t.Errorf("dfast after its filesystem failed: %+v", p)
	}
	waitEvents(t, ctx, " Node/"+nodeName+" PoolUnhealthy: pool dfast", " PlinthNode/"+nodeName+" PoolUnhealthy: pool dfast")
	if _, err := e.client.CoreV1().PersistentVolumeClaims(ns).Create(ctx, pvc("late", "plinth-disk-file", "16Mi", false), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	claimAndPodNoWait := appPod("late", "late", false, "pause")
	if _, err := e.client.CoreV1().Pods(ns).Create(ctx, claimAndPodNoWait, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Second)
	if c, err := e.client.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "late", metav1.GetOptions{}); err != nil || c.Status.Phase == corev1.ClaimBound {
		t.Errorf("a claim on the failed pool: %v %v", c.Status.Phase, err)
	}
	deletePod(t, ctx, ns, "late")
	_ = e.client.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "late", metav1.DeleteOptions{})

	if sig := blkidOf(loopOf(t, e.disks["dforeign"])); !strings.Contains(sig, "TYPE=ext4") || !strings.Contains(sig, "LABEL=theirs") {
		t.Errorf("the foreign disk now holds %q", sig)
	}
}

// waitEvents waits until the events about cluster-scoped objects (in
// "default") say each of want.
func waitEvents(t *testing.T, ctx context.Context, want ...string) {
	t.Helper()
	var ev string
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		ev = events(ctx, "default")
		for _, w := range want {
			if !strings.Contains(ev, w) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Errorf("events lack %q:%s", want, ev)
	}
}
