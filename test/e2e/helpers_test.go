package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/plinth-dev/plinth/pkg/apis/v1alpha1"
)

func need(t *testing.T) {
	t.Helper()
	if e == nil {
		t.Skip("no cluster: run through make e2e as root (PLINTH_CLUSTER_BIN set)")
	}
}

func (e *env) waitPlinth(ctx context.Context) error {
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		csn, err := e.client.StorageV1().CSINodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		registered := false
		for _, d := range csn.Spec.Drivers {
			registered = registered || d.Name == driver
		}
		n, err := e.client.CoreV1().Nodes().Get(ctx, nodeName, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		gpus := n.Status.Allocatable["example.com/gpu"]
		pn, err := e.plinthNode(ctx)
		if err != nil {
			return false, nil
		}
		return registered && gpus.Value() == 8 && len(pn.Status.Pools) == 7, nil
	})
}

func (e *env) plinthNode(ctx context.Context) (*v1alpha1.PlinthNode, error) {
	return e.plinth.PlinthV1alpha1().PlinthNodes().Get(ctx, nodeName, metav1.GetOptions{})
}

func (e *env) plinthVolumes(ctx context.Context) ([]*v1alpha1.PlinthVolume, error) {
	l, err := e.plinth.PlinthV1alpha1().PlinthVolumes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list plinthvolumes: %w", err)
	}
	out := make([]*v1alpha1.PlinthVolume, len(l.Items))
	for i := range l.Items {
		out[i] = &l.Items[i]
	}
	return out, nil
}

func (e *env) pool(ctx context.Context, name string) (v1alpha1.PoolStatus, error) {
	pn, err := e.plinthNode(ctx)
	if err != nil {
		return v1alpha1.PoolStatus{}, err
	}
	for _, p := range pn.Status.Pools {
		if p.Name == name {
			return p, nil
		}
	}
	return v1alpha1.PoolStatus{}, fmt.Errorf("no pool %s", name)
}

func namespace(t *testing.T, ctx context.Context, name string) string {
	t.Helper()
	_, err := e.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	// The service-account controller makes "default"; pods wait for it.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.client.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	}); err != nil {
		t.Fatal(err)
	}
	return name
}

func pvc(name, class string, size string, block bool) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	if block {
		m := corev1.PersistentVolumeBlock
		c.Spec.VolumeMode = &m
	}
	return c
}

// appPod runs e2e-app with args; claim, when set, is mounted at /data
// (or attached at /dev/xvda when block).
func appPod(name, claim string, block bool, args ...string) *corev1.Pod {
	grace := int64(1)
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "app", Image: "plinth.example.com/e2e-app:dev", ImagePullPolicy: corev1.PullNever, Args: args,
			}},
		},
	}
	if claim != "" {
		p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}
		if block {
			p.Spec.Containers[0].VolumeDevices = []corev1.VolumeDevice{{Name: "data", DevicePath: "/dev/xvda"}}
		} else {
			p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
		}
	}
	return p
}

func waitPodRunning(t *testing.T, ctx context.Context, ns, name string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not Running: %v; status %+v; events: %s", ns, name, err, pod.Status, events(ctx, ns))
	}
	return pod
}

// waitLog waits until the pod's log has a line with substr and returns the
// log. It reads the CRI log files the kubelet writes under /var/log/pods on
// this (the only) node: the node registers no address the API server could
// use to proxy logs on a loopback-only cluster.
func waitLog(t *testing.T, ctx context.Context, ns, name, substr string, timeout time.Duration) string {
	t.Helper()
	return waitLogIn(t, ctx, "/var/log/pods", ns, name, substr, timeout)
}

// waitLogIn is waitLog for a pod whose node writes its logs under dir (a
// worker's pods-log directory).
func waitLogIn(t *testing.T, ctx context.Context, dir, ns, name, substr string, timeout time.Duration) string {
	t.Helper()
	var log string
	err := wait.PollUntilContextTimeout(ctx, 300*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		files, _ := filepath.Glob(filepath.Join(dir, ns+"_"+name+"_"+string(p.UID), "*", "*.log"))
		sort.Strings(files)
		var b strings.Builder
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			for _, l := range strings.Split(string(raw), "\n") {
				// <time> <stream> <P|F> <text>
				if parts := strings.SplitN(l, " ", 4); len(parts) == 4 {
					b.WriteString(parts[3] + "\n")
				}
			}
		}
		log = b.String()
		return strings.Contains(log, substr), nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s log has no %q: %v\nlog: %s", ns, name, substr, err, log)
	}
	return log
}

func deletePod(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := e.client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("pod %s/%s not gone: %v", ns, name, err)
	}
}

func events(ctx context.Context, ns string) string {
	l, err := e.client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, ev := range l.Items {
		fmt.Fprintf(&b, "\n  %s %s/%s %s: %s", ev.Type, ev.InvolvedObject.Kind, ev.InvolvedObject.Name, ev.Reason, ev.Message)
	}
	return b.String()
}

// waitGone waits until no PV, volume object or image of the claim's volume is left.
func waitVolumeGone(t *testing.T, ctx context.Context, pvName string) {
	t.Helper()
	if err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := e.client.CoreV1().PersistentVolumes().Get(ctx, pvName, metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return false, nil
		}
		vols, err := e.plinthVolumes(ctx)
		if err != nil {
			return false, nil
		}
		for _, v := range vols {
			if v.Spec.VolumeName == pvName {
				return false, nil
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("volume of PV %s not removed: %v", pvName, err)
	}
}
