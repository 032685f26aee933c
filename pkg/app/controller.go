package app

import (
	"context"
	"crypto/rand"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	snapclient "github.com/kubernetes-csi/external-snapshotter/client/v8/clientset/versioned"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/informers"
	coreinformers "k8s.io/client-go/informers/core/v1"
	storageinformers "k8s.io/client-go/informers/storage/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"sigs.k8s.io/sig-storage-lib-external-provisioner/v13/controller"

	"github.com/plinth-dev/plinth/pkg/csi"
	"github.com/plinth-dev/plinth/pkg/generated/clientset/versioned"
	"github.com/plinth-dev/plinth/pkg/generated/informers/externalversions"
	"github.com/plinth-dev/plinth/pkg/metrics"
	"github.com/plinth-dev/plinth/pkg/move"
	"github.com/plinth-dev/plinth/pkg/provision"
	"github.com/plinth-dev/plinth/pkg/snapshot"
	"github.com/plinth-dev/plinth/pkg/unixsock"
	"github.com/plinth-dev/plinth/pkg/volume"
)

// ControllerConfig configures `plinth controller`.
type ControllerConfig struct {
	Version     string
	Kubeconfig  string // "" for the in-cluster configuration
	DriverName  string
	TopologyKey string
	// Namespace holds the leader-election Lease and the CSIStorageCapacity
	// objects.
	Namespace        string
	LeaderElect      bool
	LeaseDuration    time.Duration
	Threads          int
	CapacityInterval time.Duration
	// NodeWait is how long one provisioning call waits for the node before
	// answering "in progress" (the claim is retried).
	NodeWait       time.Duration
	MetricsAddress string
	// Profiling serves Go's profiles (/debug/pprof/) on MetricsAddress.
	Profiling bool
	// CSIEndpoint, when set, serves CSI Identity and Controller over the
	// cluster (the same code the provisioner calls) on a unix socket, while
	// this replica leads: for csi-sanity and the standard sidecars.
	CSIEndpoint string
	// KubeAPIQPS and KubeAPIBurst bound the controller's API requests.
	KubeAPIQPS   float64
	KubeAPIBurst int
	// ReleaseVolumesOnLostNodeAfter, when not 0, deletes the PVCs of the
	// volumes on a node whose Node object has been absent that long, and
	// lets their PVs go (provision.LostNodes); 0 only reports them.
	ReleaseVolumesOnLostNodeAfter time.Duration
}

// Flags registers the controller flags on fs.
func (c *ControllerConfig) Flags(fs *flag.FlagSet) {
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "plinth-system"
	}
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig file (default: the in-cluster configuration)")
	fs.StringVar(&c.DriverName, "driver-name", "plinth.example.com", "CSI driver name, the provisioner of plinth's StorageClasses")
	fs.StringVar(&c.TopologyKey, "topology-key", "topology.plinth.example.com/node", "topology key whose value is the node name")
	fs.StringVar(&c.Namespace, "namespace", ns, "namespace of the leader-election Lease and the CSIStorageCapacity objects (default $POD_NAMESPACE)")
	fs.BoolVar(&c.LeaderElect, "leader-elect", true, "take a Lease before acting, so that replicas are safe")
	fs.DurationVar(&c.LeaseDuration, "leader-elect-lease-duration", 8*time.Second, "how long a leader's Lease lasts without renewal (a killed leader's replacement waits this long)")
	fs.IntVar(&c.Threads, "threads", 32, "PVCs provisioned in parallel (each waits for its node's answer)")
	fs.DurationVar(&c.CapacityInterval, "capacity-interval", 30*time.Second, "full CSIStorageCapacity pass period (changes trigger one sooner)")
	fs.DurationVar(&c.NodeWait, "node-wait", 30*time.Second, "how long one provisioning call waits for the node")
	fs.Float64Var(&c.KubeAPIQPS, "kube-api-qps", 100, "API requests per second, sustained")
	fs.IntVar(&c.KubeAPIBurst, "kube-api-burst", 200, "API requests in a burst")
	fs.StringVar(&c.MetricsAddress, "metrics-address", "127.0.0.1:9810", "address of /metrics, /healthz and /readyz (empty: off)")
	fs.BoolVar(&c.Profiling, "profiling", false, "also serve Go's profiles (/debug/pprof/) on --metrics-address")
	fs.StringVar(&c.CSIEndpoint, "csi-endpoint", "", "unix://PATH: also serve CSI Identity and Controller there while leading (empty: off)")
	fs.DurationVar(&c.ReleaseVolumesOnLostNodeAfter, "release-volumes-on-lost-node-after", 0,
		"once a node's Node object has been absent this long (and a live GET confirms it), delete the PVCs of its volumes and let their PVs go; at least "+
			provision.MinReleaseAfter.String()+" (0: off, volumes on lost nodes are only reported)")
}

// Validate checks the configuration.
func (c *ControllerConfig) Validate() error {
	var errs []error
	if msgs := validation.IsDNS1123Subdomain(c.DriverName); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--driver-name %q: %v", c.DriverName, msgs))
	}
	if msgs := validation.IsQualifiedName(c.TopologyKey); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--topology-key %q: %v", c.TopologyKey, msgs))
	}
	if msgs := validation.IsDNS1123Label(c.Namespace); len(msgs) > 0 {
		errs = append(errs, fmt.Errorf("--namespace %q: %v", c.Namespace, msgs))
	}
	if c.Threads < 1 || c.Threads > 256 {
		errs = append(errs, fmt.Errorf("--threads %d: must be 1-256", c.Threads))
	}
	if c.LeaseDuration < 2*time.Second {
		errs = append(errs, fmt.Errorf("--leader-elect-lease-duration %s: at least 2s", c.LeaseDuration))
	}
	if c.KubeAPIQPS <= 0 || c.KubeAPIBurst < 1 {
		errs = append(errs, fmt.Errorf("--kube-api-qps %g and --kube-api-burst %d must be positive", c.KubeAPIQPS, c.KubeAPIBurst))
	}
	if c.Profiling && c.MetricsAddress == "" {
		errs = append(errs, errors.New("--profiling serves on --metrics-address, which is empty"))
	}
	if c.CapacityInterval < time.Second || c.NodeWait < time.Second {
		errs = append(errs, errors.New("--capacity-interval and --node-wait must be at least 1s"))
	}
	switch d := c.ReleaseVolumesOnLostNodeAfter; {
	case d < 0:
		errs = append(errs, fmt.Errorf("--release-volumes-on-lost-node-after %s: must not be negative (0 turns release off)", d))
	case d > 0 && d < provision.MinReleaseAfter:
		errs = append(errs, fmt.Errorf("--release-volumes-on-lost-node-after %s: at least %s (0 turns release off): a shorter delay would race a node that is only re-registering its Node object, and release volumes whose data is still there",
			d, provision.MinReleaseAfter))
	}
	if c.CSIEndpoint != "" {
		if _, err := unixsock.ParseEndpoint(c.CSIEndpoint); err != nil {
			errs = append(errs, fmt.Errorf("--csi-endpoint: %w", err))
		}
	}
	return errors.Join(errs...)
}

// restConfig is the kubeconfig's, or the in-cluster one.
func restConfig(kubeconfig string, qps float32, burst int) (*rest.Config, error) {
	var cfg *rest.Config
	var err error
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("Kubernetes client configuration: %w", err)
	}
	cfg.QPS, cfg.Burst = qps, burst
	cfg.UserAgent = "plinth"
	return cfg, nil
}

// RunController provisions PVCs, publishes capacity and expands volumes
// until ctx ends; with leader election only while it holds the Lease.
func RunController(ctx context.Context, c ControllerConfig) error {
	cfg, err := restConfig(c.Kubeconfig, float32(c.KubeAPIQPS), c.KubeAPIBurst)
	if err != nil {
		return err
	}
	setMemoryLimit(os.DirFS("/sys"))
	api := metrics.NewAPIRequests()
	cfg.Wrap(api.Wrap)
	core, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	plinth, err := versioned.NewForConfig(cfg)
	if err != nil {
		return err
	}
	snaps, err := snapclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	parts := map[string]func(context.Context) error{}
	var m *metrics.Metrics
	// Liveness fails while this replica leads but has not renewed its
	// Lease for a while (a controller stuck while another may take over).
	watchdog := leaderelection.NewLeaderHealthzAdaptor(c.LeaseDuration)
	if c.MetricsAddress != "" {
		m = metrics.New()
		m.Profiling = c.Profiling
		if err := m.RegisterController(); err != nil {
			return err
		}
		if err := m.Register(api); err != nil {
			return err
		}
		// Ready only while the API server answers: a controller that
		// cannot reach it provisions nothing.
		m.AddReadyCheck("apiserver", func(ctx context.Context) error { return apiServerReady(ctx, core) })
		if c.LeaderElect {
			m.AddLiveCheck("leader-election", func(context.Context) error { return watchdog.Check(nil) })
		}
		parts["metrics"] = func(ctx context.Context) error { return m.Serve(ctx, c.MetricsAddress) }
	}
	// The caches fill while this replica waits for the Lease: a standby
	// takes over with them synced, and its first PV does not wait for a
	// list of every claim, PV and volume object in the cluster.
	caches, err := startControllerCaches(ctx, c, core, plinth)
	if err != nil {
		return err
	}
	lead := func(ctx context.Context) error { return runControllerLoops(ctx, c, core, plinth, snaps, m, caches) }
	if !c.LeaderElect {
		if m != nil {
			m.SetLeader(true)
		}
		parts["controller"] = lead
	} else {
		parts["controller"] = func(ctx context.Context) error {
			// A replica campaigns only once its caches are filled: the
			// one that wins then acts at once. A killed leader's pod,
			// restarted by its kubelet, raced the warm standby for the
			// Lease and, winning, made the first PV 6 s after taking it
			// (listing 10,000 claims, PVs and volume objects first).
			klog.FromContext(ctx).Info("Filling the caches before campaigning for the Lease")
			if !cache.WaitForCacheSync(ctx.Done(), caches.synced...) {
				return nil // ctx ended
			}
			return runElected(ctx, c, core, lead, watchdog, m)
		}
	}
	klog.InfoS("plinth controller started", "version", c.Version, "driver", c.DriverName, "namespace", c.Namespace, "leaderElect", c.LeaderElect)
	return runAll(ctx, parts)
}

// servesResource reports whether the API server serves resource in
// groupVersion.
func servesResource(d discovery.DiscoveryInterface, groupVersion, resource string) (bool, error) {
	list, err := d.ServerResourcesForGroupVersion(groupVersion)
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == resource {
			return true, nil
		}
	}
	return false, nil
}

// apiServerReady asks the API server's /readyz (readable by anyone).
func apiServerReady(ctx context.Context, core kubernetes.Interface) error {
	if err := core.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		return fmt.Errorf("the API server does not answer: %w", err)
	}
	return nil
}

// runElected runs lead while this process holds the Lease; losing it ends
// the process's work (a restart campaigns again), so two replicas never act
// at once. When ctx ends (SIGTERM) lead is stopped and waited for, and only
// then is the Lease handed over (holderIdentity cleared), before
// runElected returns: the next replica takes over at once, not after the
// lease duration, and never while this one still acts. lead's error ends
// runElected the same way.
func runElected(ctx context.Context, c ControllerConfig, core kubernetes.Interface, lead func(context.Context) error, watchdog *leaderelection.HealthzAdaptor, m *metrics.Metrics) error {
	id, err := leaderIdentity()
	if err != nil {
		return err
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "plinth-controller-" + leaseSuffix(c.DriverName), Namespace: c.Namespace},
		Client:     core.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: id},
	}
	// The elector's context ends only once lead has returned: client-go
	// releases the Lease as soon as it does (ReleaseOnCancel), and leaves
	// it to its caller to stop the guarded work first.
	elector, stopElector := context.WithCancel(context.WithoutCancel(ctx))
	defer stopElector()
	var (
		mu      sync.Mutex
		started bool // lead was started (under mu)
		// Once leadEnd is closed: lead's error, and whether it returned
		// of itself (not because the elector stopped leading).
		leadErr   error
		leadAlone bool
		leadEnd   = make(chan struct{})
	)
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   c.LeaseDuration,
		RenewDeadline:   c.LeaseDuration * 2 / 3,
		RetryPeriod:     c.LeaseDuration / 7,
		Name:            "plinth-controller",
		WatchDog:        watchdog,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leading context.Context) {
				mu.Lock()
				if ctx.Err() != nil || leading.Err() != nil { // stopped, or lost, before it began
					mu.Unlock()
					stopElector()
					return
				}
				started = true
				mu.Unlock()
				defer close(leadEnd)
				klog.InfoS("Leading", "identity", id)
				if m != nil {
					m.SetLeader(true)
				}
				work, cancel := context.WithCancel(leading)
				stop := context.AfterFunc(ctx, cancel)
				leadErr = lead(work)
				stop()
				cancel()
				leadAlone = leading.Err() == nil
				stopElector() // hand the Lease over
			},
			OnStoppedLeading: func() {
				if m != nil {
					m.SetLeader(false)
				}
			},
		},
	})
	if err != nil {
		return err
	}
	if watchdog != nil {
		// The watchdog (liveness) sees the elector only when told of it;
		// client-go's RunOrDie does this, NewLeaderElector does not.
		watchdog.SetLeaderElection(le)
	}
	// Stopped before leading: nothing runs under the Lease, stop campaigning.
	go func() {
		select {
		case <-ctx.Done():
		case <-elector.Done():
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if !started {
			stopElector()
		}
	}()
	le.Run(elector)
	mu.Lock()
	wasStarted := started
	mu.Unlock()
	if wasStarted {
		<-leadEnd // lead's context has ended (stopped or lost): wait for it
	}
	switch {
	case leadErr != nil:
		return leadErr
	case ctx.Err() != nil || leadAlone:
		return nil
	}
	return errors.New("lost the leader Lease")
}

// leaderIdentity names this process in the Lease: the pod's name
// ($POD_NAME) or the host's, and a random part. Host and PID are not
// enough: two replicas with the host's network on one node share the host
// name, and each is PID 1 of its own PID namespace.
func leaderIdentity() (string, error) {
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("leader identity: %w", err)
	}
	return fmt.Sprintf("%s_%x", name, b), nil
}

func leaseSuffix(driver string) string {
	out := []byte(driver)
	for i, b := range out {
		if b == '.' {
			out[i] = '-'
		}
	}
	return string(out)
}

// controllerCaches are the informers the controller's loops read. They
// start with the process, before it leads, and only read: nothing is
// written to the API server until the loops run under the Lease. A standby
// replica holds the same caches as the leader (its memory, the price of a
// takeover that does not wait for them; controller-runtime's managers do
// the same).
type controllerCaches struct {
	factory, capFactory informers.SharedInformerFactory
	cluster             *provision.Cluster
	nodes               coreinformers.NodeInformer
	claims              coreinformers.PersistentVolumeClaimInformer
	pvs                 coreinformers.PersistentVolumeInformer
	classes             storageinformers.StorageClassInformer
	published           storageinformers.CSIStorageCapacityInformer
	// attrClasses is nil where the API server serves no
	// VolumeAttributesClass.
	attrClasses storageinformers.VolumeAttributesClassInformer
	synced      []cache.InformerSynced
}

func startControllerCaches(ctx context.Context, c ControllerConfig, core kubernetes.Interface, plinth versioned.Interface) (*controllerCaches, error) {
	cc := &controllerCaches{factory: informers.NewSharedInformerFactoryWithOptions(core, 10*time.Minute, informers.WithTransform(dropManagedFields))}
	pfactory := externalversions.NewSharedInformerFactoryWithOptions(plinth, 10*time.Minute, externalversions.WithTransform(dropManagedFields))
	cc.nodes = cc.factory.Core().V1().Nodes()
	nodeLister := cc.nodes.Lister()
	var err error
	cc.cluster, err = provision.NewCluster(plinth, pfactory, func(name string) bool {
		_, err := nodeLister.Get(name)
		return apierrors.IsNotFound(err)
	})
	if err != nil {
		return nil, err
	}
	cc.cluster.Wait = c.NodeWait
	cc.claims = cc.factory.Core().V1().PersistentVolumeClaims()
	cc.pvs = cc.factory.Core().V1().PersistentVolumes()
	cc.classes = cc.factory.Storage().V1().StorageClasses()
	// VolumeAttributesClasses are storage.k8s.io/v1 from Kubernetes 1.34;
	// an older API server has none to watch, and claims cannot name one.
	if served, err := servesResource(core.Discovery(), "storage.k8s.io/v1", "volumeattributesclasses"); err != nil {
		return nil, fmt.Errorf("ask the API server for VolumeAttributesClasses: %w", err)
	} else if served {
		cc.attrClasses = cc.factory.Storage().V1().VolumeAttributesClasses()
	} else {
		klog.FromContext(ctx).Info("The API server serves no storage.k8s.io/v1 VolumeAttributesClass (Kubernetes 1.34 and later): claims' classes are not applied")
	}
	// plinth's own CSIStorageCapacity objects, watched in their namespace.
	cc.capFactory = informers.NewSharedInformerFactoryWithOptions(core, 10*time.Minute, informers.WithNamespace(c.Namespace), informers.WithTransform(dropManagedFields),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = provision.CapacitySelector(c.DriverName) }))
	cc.published = cc.capFactory.Storage().V1().CSIStorageCapacities()
	cc.synced = []cache.InformerSynced{cc.claims.Informer().HasSynced, cc.pvs.Informer().HasSynced, cc.classes.Informer().HasSynced,
		cc.nodes.Informer().HasSynced, cc.cluster.HasSynced, cc.published.Informer().HasSynced}
	if cc.attrClasses != nil {
		cc.synced = append(cc.synced, cc.attrClasses.Informer().HasSynced)
	}
	cc.factory.Start(ctx.Done())
	pfactory.Start(ctx.Done())
	cc.capFactory.Start(ctx.Done())
	return cc, nil
}

// dropManagedFields leaves an object's metadata.managedFields out of the
// caches: the controller never reads them, and they were the largest part
// of each claim, PV and volume object it holds (ten thousand of each at
// scale). An update made from a cached object sends none, and the API
// server keeps the object's own (only an explicit empty list resets them).
func dropManagedFields(obj any) (any, error) {
	if m, err := apimeta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func runControllerLoops(ctx context.Context, c ControllerConfig, core kubernetes.Interface, plinth versioned.Interface, snaps snapclient.Interface, m *metrics.Metrics, cc *controllerCaches) error {
	var observe provision.Observer
	if m != nil {
		observe = m.ObserveOperation
	}
	cluster := cc.cluster
	vc := volume.NewControllerOver(cluster)

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: core.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	events := broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "plinth-controller"})

	claimInf, pvs, classes, attrClasses := cc.claims, cc.pvs, cc.classes, cc.attrClasses
	claims := claimInf.Informer()
	// Volumes on nodes that left: reported always, released only when
	// asked to; the Cluster asks it before letting such a PV go.
	lost := &provision.LostNodes{
		Client: core, Cluster: cluster, PVs: pvs.Lister(), Claims: claimInf.Lister(), Driver: c.DriverName, Events: events,
		ReleaseAfter: c.ReleaseVolumesOnLostNodeAfter,
	}
	cluster.Lost = lost
	prov := &provision.Provisioner{
		Driver: c.DriverName, TopologyKey: c.TopologyKey, Controller: vc, Events: events,
		Sources: &provision.Sources{Core: core, Snapshots: snaps, Driver: c.DriverName},
		Observe: observe,
	}
	if attrClasses != nil {
		prov.AttributeClasses = attrClasses.Lister()
	}
	pc := controller.NewProvisionController(ctx, core, c.DriverName, prov,
		controller.LeaderElection(false), // plinth's own election covers every loop
		controller.ClaimsInformer(claims),
		controller.VolumesInformer(pvs.Informer()),
		controller.ClassesInformer(classes.Informer()),
		controller.Threadiness(c.Threads),
		controller.FailedProvisionThreshold(0),
		controller.FailedDeleteThreshold(0),
		controller.RetryIntervalMax(30*time.Second),
		controller.AddFinalizer(true),
	)
	if !cache.WaitForCacheSync(ctx.Done(), cc.synced...) {
		return ctx.Err()
	}
	capacity := &provision.CapacityPublisher{
		Client: core, Classes: classes.Lister(), Cluster: cluster, Controller: vc, Driver: c.DriverName,
		TopologyKey: c.TopologyKey, Namespace: c.Namespace, Interval: c.CapacityInterval,
		Published: cc.published.Lister().CSIStorageCapacities(c.Namespace), ClassInformer: classes.Informer(),
	}
	resizer := &provision.Resizer{Client: core, Claims: claims, Volumes: pvs.Lister(), Controller: vc, Driver: c.DriverName, Events: events, Observe: observe}
	// VolumeSnapshotContents go through the same CSI controller service as
	// the socket below serves (pkg/snapshot).
	csiController := csi.NewControllerServer(vc, c.TopologyKey)
	snapshots := &snapshot.Runner{
		Core: core, Snapshots: snaps, Snapshotter: &snapshot.Snapshotter{Driver: c.DriverName, CSI: csiController},
		Workers: c.Threads, Timeout: c.NodeWait + 10*time.Second,
	}
	parts := map[string]func(context.Context) error{
		"provisioner": func(ctx context.Context) error { pc.Run(ctx); return nil },
		"capacity":    capacity.Run,
		"resizer":     resizer.Run,
		"snapshots":   snapshots.Run,
		"lostNodes":   lost.Run,
		"moves": (&move.Controller{Core: core, Plinth: plinth, Volumes: vc, Driver: c.DriverName, TopologyKey: c.TopologyKey,
			Events: events, Workers: c.Threads}).Run,
	}
	if attrClasses != nil {
		parts["attributes"] = (&provision.Attributes{Client: core, Claims: claims, Volumes: pvs.Lister(), Classes: attrClasses.Lister(),
			ClassInformer: attrClasses.Informer(), CSI: csiController, Driver: c.DriverName, Events: events, Observe: observe}).Run
	}
	if c.CSIEndpoint != "" {
		sock, _ := unixsock.ParseEndpoint(c.CSIEndpoint) // checked by Validate
		svcs := csi.Services{
			Identity:   csi.NewIdentityServer(c.DriverName, c.Version, true, func(context.Context) error { return nil }),
			Controller: csiController,
		}
		parts["CSI"] = func(ctx context.Context) error { return csi.Serve(ctx, sock, svcs, 10*time.Second) }
	}
	return runAll(ctx, parts)
}
