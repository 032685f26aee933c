package deviceplugin

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"

	"github.com/plinth-dev/plinth/pkg/device"
)

// Plugin serves one resource.
type Plugin struct {
	dpapi.UnimplementedDevicePluginServer
	res     device.Resource
	inv     *device.Inventory
	devRoot string

	mu   sync.Mutex
	quit chan struct{} // closed when the server serving this plugin stops

	// observe, when set, hears every Allocate (metrics).
	observe func(resource string, err error, d time.Duration)
}

var _ dpapi.DevicePluginServer = (*Plugin)(nil)

// NewPlugin serves resource res from inv; device nodes are handed out from
// devRoot on the host.
func NewPlugin(res device.Resource, inv *device.Inventory, devRoot string) *Plugin {
	return &Plugin{res: res, inv: inv, devRoot: devRoot, quit: make(chan struct{})}
}

// serving returns a fresh quit channel for a new server; stopping closes it
// so that ListAndWatch streams end and a graceful stop does not hang.
func (p *Plugin) serving() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.quit = make(chan struct{})
}

func (p *Plugin) stopping() {
	p.mu.Lock()
	defer p.mu.Unlock()
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
}

func (p *Plugin) quitCh() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.quit
}

func (p *Plugin) GetDevicePluginOptions(context.Context, *dpapi.Empty) (*dpapi.DevicePluginOptions, error) {
	return &dpapi.DevicePluginOptions{GetPreferredAllocationAvailable: true}, nil
}

// List is what ListAndWatch sends now.
func (p *Plugin) List() *dpapi.ListAndWatchResponse {
	resp := &dpapi.ListAndWatchResponse{}
	for _, u := range p.inv.Units(p.res) {
		health := dpapi.Healthy
		if !u.Healthy {
			health = dpapi.Unhealthy
		}
		d := &dpapi.Device{ID: u.ID, Health: health}
		if u.Device.NUMANode >= 0 {
			d.Topology = &dpapi.TopologyInfo{Nodes: []*dpapi.NUMANode{{ID: int64(u.Device.NUMANode)}}}
		}
		resp.Devices = append(resp.Devices, d)
	}
	return resp
}

func sameList(a, b *dpapi.ListAndWatchResponse) bool {
	if len(a.Devices) != len(b.Devices) {
		return false
	}
	for i := range a.Devices {
		if a.Devices[i].ID != b.Devices[i].ID || a.Devices[i].Health != b.Devices[i].Health {
			return false
		}
	}
	return true
}

// ListAndWatch sends the whole list at once and again on every change of
// the resource's devices or their health.
func (p *Plugin) ListAndWatch(_ *dpapi.Empty, stream dpapi.DevicePlugin_ListAndWatchServer) error {
	logger := klog.Background().WithValues("resource", p.res.Name)
	quit := p.quitCh()
	var last *dpapi.ListAndWatchResponse
	for {
		changed := p.inv.Changed()
		cur := p.List()
		if last == nil || !sameList(last, cur) {
			if err := stream.Send(cur); err != nil {
				return err
			}
			healthy := 0
			for _, d := range cur.Devices {
				if d.Health == dpapi.Healthy {
					healthy++
				}
			}
			logger.Info("Sent device list to kubelet", "devices", len(cur.Devices), "healthy", healthy)
			last = cur
		}
		select {
		case <-stream.Context().Done():
			return nil
		case <-quit:
			return nil
		case <-changed:
		}
	}
}

// units resolves requested IDs; unknown or unhealthy IDs are errors, and
// with strict sharing so are two replicas of one device.
func (p *Plugin) units(ids []string) ([]device.UnitStatus, error) {
	all := map[string]device.UnitStatus{}
	for _, u := range p.inv.Units(p.res) {
		all[u.ID] = u
	}
	var out []device.UnitStatus
	devs := map[string]bool{}
	for _, id := range ids {
		u, ok := all[id]
		if !ok {
			return nil, status.Errorf(codes.InvalidArgument, "device %q is not a %s device of this node", id, p.res.Name)
		}
		if !u.Healthy {
			return nil, status.Errorf(codes.FailedPrecondition, "device %q is unhealthy", id)
		}
		if p.res.Sharing.Strict && devs[u.Device.ID] {
			return nil, status.Errorf(codes.InvalidArgument, "two replicas of device %s in one container: %s shares strictly", u.Device.ID, p.res.Name)
		}
		devs[u.Device.ID] = true
		out = append(out, u)
	}
	return out, nil
}

// Allocate returns, per container, the device nodes (each device's own and
// the shared ones its driver needs), the environment and CDI device names.
func (p *Plugin) Allocate(ctx context.Context, req *dpapi.AllocateRequest) (resp *dpapi.AllocateResponse, err error) {
	if p.observe != nil {
		defer func(start time.Time) { p.observe(p.res.Name, err, time.Since(start)) }(time.Now())
	}
	resp = &dpapi.AllocateResponse{}
	for _, creq := range req.GetContainerRequests() {
		units, err := p.units(creq.GetDevicesIds())
		if err != nil {
			return nil, err
		}
		resp.ContainerResponses = append(resp.ContainerResponses, p.containerResponse(units))
		klog.FromContext(ctx).V(4).Info("Allocated", "resource", p.res.Name, "devices", creq.GetDevicesIds())
	}
	return resp, nil
}

func (p *Plugin) containerResponse(units []device.UnitStatus) *dpapi.ContainerAllocateResponse {
	// The kubelet passes IDs in no particular order: answer in ID order so
	// that the environment is stable.
	sort.Slice(units, func(i, j int) bool { return units[i].ID < units[j].ID })
	cr := &dpapi.ContainerAllocateResponse{Envs: map[string]string{}}
	seenNode, seenDev := map[string]bool{}, map[string]bool{}
	var ids, indexes, paths []string
	addNode := func(n device.Node) {
		if seenNode[n.Path] {
			return
		}
		seenNode[n.Path] = true
		cr.Devices = append(cr.Devices, &dpapi.DeviceSpec{ContainerPath: "/dev/" + n.Path, HostPath: filepath.Join(p.devRoot, n.Path), Permissions: n.Permissions})
	}
	for _, u := range units {
		ids = append(ids, u.ID)
		if seenDev[u.Device.ID] {
			continue
		}
		seenDev[u.Device.ID] = true
		if u.Device.Index >= 0 {
			indexes = append(indexes, strconv.Itoa(u.Device.Index))
		}
		for _, n := range u.Device.Nodes {
			addNode(n)
			paths = append(paths, "/dev/"+n.Path)
		}
		for _, n := range u.Device.SharedNodes {
			addNode(n)
		}
		if p.res.CDIEnabled() {
			cr.CdiDevices = append(cr.CdiDevices, &dpapi.CDIDevice{Name: device.CDIName(p.res, u.Device.ID)})
		}
	}
	for name, what := range p.res.Env {
		switch what {
		case "ids":
			cr.Envs[name] = strings.Join(ids, ",")
		case "indexes":
			cr.Envs[name] = strings.Join(indexes, ",")
		case "paths":
			cr.Envs[name] = strings.Join(paths, ",")
		}
	}
	return cr
}

// GetPreferredAllocation keeps a request on one NUMA node and PCIe switch
// and packs it to leave the largest groups free (device.Prefer).
func (p *Plugin) GetPreferredAllocation(ctx context.Context, req *dpapi.PreferredAllocationRequest) (*dpapi.PreferredAllocationResponse, error) {
	var units []device.Unit
	healthy := map[string]bool{}
	for _, u := range p.inv.Units(p.res) {
		units = append(units, u.Unit)
		healthy[u.ID] = u.Healthy
	}
	resp := &dpapi.PreferredAllocationResponse{}
	for _, creq := range req.GetContainerRequests() {
		var avail []string
		for _, id := range creq.GetAvailableDeviceIDs() {
			if healthy[id] {
				avail = append(avail, id)
			}
		}
		sort.Strings(avail)
		ids, err := device.Prefer(units, avail, creq.GetMustIncludeDeviceIDs(), int(creq.GetAllocationSize()), p.res.Sharing.Strict)
		if err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
		resp.ContainerResponses = append(resp.ContainerResponses, &dpapi.ContainerPreferredAllocationResponse{DeviceIDs: ids})
	}
	return resp, nil
}

func (p *Plugin) PreStartContainer(context.Context, *dpapi.PreStartContainerRequest) (*dpapi.PreStartContainerResponse, error) {
	return &dpapi.PreStartContainerResponse{}, nil
}

// SocketName is the plugin's socket file name for resource r.
func SocketName(r device.Resource) string {
	return "plinth-" + strings.NewReplacer("/", "-", ".", "-").Replace(r.Name) + ".sock"
}

func describe(r device.Resource) string { return fmt.Sprintf("%s (%s)", r.Name, SocketName(r)) }
