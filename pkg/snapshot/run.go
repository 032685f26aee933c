package snapshot

import (
	"context"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	snapscheme "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned/scheme"
	snapinformers "github.com/kubernetes-csi/external-snapshotter/client/v8/informers/externalversions"
	sidecar "github.com/kubernetes-csi/external-snapshotter/v8/pkg/sidecar-controller"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"
)

// GroupVersion is the snapshot API this package serves.
const GroupVersion = "snapshot.storage.k8s.io/v1"

// Runner runs the sidecar controller for Driver's VolumeSnapshotContents.
type Runner struct {
	Core        kubernetes.Interface
	Snapshots   snapclient.Interface
	Snapshotter *Snapshotter
	// Workers sync contents in parallel (default 4).
	Workers int
	// Timeout bounds one call into the snapshotter (default 1m). A snapshot
	// the node has not taken by then is answered not ready, and polled.
	Timeout time.Duration
	// CRDPoll is how often to look for the snapshot CRDs while they are
	// missing (default 1m).
	CRDPoll time.Duration
}

// Run serves until ctx ends. Without the snapshot CRDs in the cluster it
// says so once and looks again every CRDPoll.
func (r *Runner) Run(ctx context.Context) error {
	logger := klog.FromContext(ctx).WithName("snapshots")
	if r.Workers <= 0 {
		r.Workers = 4
	}
	if r.Timeout <= 0 {
		r.Timeout = time.Minute
	}
	if r.CRDPoll <= 0 {
		r.CRDPoll = time.Minute
	}
	said := false
	if err := wait.PollUntilContextCancel(ctx, r.CRDPoll, true, func(context.Context) (bool, error) {
		ok, err := r.crdsInstalled()
		if !ok && !said {
			logger.Info("VolumeSnapshots are not served until the snapshot CRDs ("+GroupVersion+") are installed; the cluster's snapshot-controller takes them",
				"err", err)
			said = true
		}
		return ok, nil
	}); err != nil {
		return nil // ctx ended
	}
	// The sidecar records events on VolumeSnapshotContents through
	// client-go's scheme, as the csi-snapshotter binary does.
	if err := snapscheme.AddToScheme(scheme.Scheme); err != nil {
		return err
	}
	factory := snapinformers.NewSharedInformerFactory(r.Snapshots, 15*time.Minute)
	ctrl := sidecar.NewCSISnapshotSideCarController(
		r.Snapshots, r.Core, r.Snapshotter.Driver,
		factory.Snapshot().V1().VolumeSnapshotContents(), factory.Snapshot().V1().VolumeSnapshotClasses(),
		r.Snapshotter, nil, // no group snapshots
		r.Timeout, 15*time.Minute,
		"snapshot", -1, // the sidecar's default names: snapshot-<VolumeSnapshot UID>
		"groupsnapshot", -1,
		false, // no extra create metadata: plinth takes no snapshot parameters
		// A failed snapshot is retried within 30 seconds at most: the call
		// goes to a plinth node, cheap to ask again, and a node that was
		// restarting is back in seconds (the sidecar's default, 5 minutes,
		// suits cloud APIs that throttle).
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](500*time.Millisecond, 30*time.Second),
		false, nil, nil, nil,
	)
	factory.Start(ctx.Done())
	logger.Info("Serving VolumeSnapshotContents", "driver", r.Snapshotter.Driver)
	ctrl.Run(r.Workers, ctx.Done(), nil)
	return nil
}

// crdsInstalled reports whether the API server serves the snapshot kinds
// the sidecar watches.
func (r *Runner) crdsInstalled() (bool, error) {
	list, err := r.Core.Discovery().ServerResourcesForGroupVersion(GroupVersion)
	if err != nil {
		return false, err
	}
	have := map[string]bool{}
	for _, res := range list.APIResources {
		have[res.Name] = true
	}
	return have["volumesnapshotcontents"] && have["volumesnapshotclasses"], nil
}
