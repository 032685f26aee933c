package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"k8s.io/klog/v2"
	dpapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
	cdiapi "tags.cncf.io/container-device-interface/pkg/cdi"

	"github.com/plinth-dev/plinth/pkg/device"
	"github.com/plinth-dev/plinth/pkg/kubelet"
	"github.com/plinth-dev/plinth/pkg/unixsock"
)

// Config of the device-plugin manager.
type Config struct {
	KubeletDir string
	// CDIDir is where CDI specs are written ("" writes none).
	CDIDir  string
	DevRoot string
	// OnRegistered, when set, is called after each successful Register
	// with how long it took since the kubelet socket appeared (zero at
	// start). Tests and metrics use it.
	OnRegistered func(resource string, sinceKubeletSocket time.Duration)
	// ObserveAllocate, when set, hears every Allocate.
	ObserveAllocate func(resource string, err error, d time.Duration)
}

// Manager serves every configured resource and keeps it registered.
type Manager struct {
	cfg     Config
	inv     *device.Inventory
	plugins []*served
	cdi     *cdiapi.Cache

	mu         sync.Mutex
	registered map[string]bool // by resource, since the kubelet socket last appeared
}

type served struct {
	plugin *Plugin
	res    device.Resource
	path   string

	mu  sync.Mutex
	srv *grpc.Server
}

// NewManager returns a Manager for resources over inv.
func NewManager(cfg Config, resources []device.Resource, inv *device.Inventory) (*Manager, error) {
	m := &Manager{cfg: cfg, inv: inv, registered: map[string]bool{}}
	dir := kubelet.DevicePluginDir(cfg.KubeletDir)
	for _, r := range resources {
		p := NewPlugin(r, inv, cfg.DevRoot)
		p.observe = cfg.ObserveAllocate
		m.plugins = append(m.plugins, &served{plugin: p, res: r, path: filepath.Join(dir, SocketName(r))})
	}
	if cfg.CDIDir != "" {
		if err := os.MkdirAll(cfg.CDIDir, 0o755); err != nil {
			return nil, fmt.Errorf("create CDI directory: %w", err)
		}
		c, err := cdiapi.NewCache(cdiapi.WithSpecDirs(cfg.CDIDir), cdiapi.WithAutoRefresh(false))
		if err != nil {
			return nil, fmt.Errorf("CDI cache: %w", err)
		}
		m.cdi = c
	}
	return m, nil
}

// start (re)starts the gRPC server on the plugin's socket: a stale socket
// is replaced, one a live server (another process) answers on is refused;
// the new one is for the owner only, and stopping the server removes it
// only while it is still this one.
func (s *served) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.plugin.stopping()
		s.srv.Stop()
		s.srv = nil
	}
	l, err := unixsock.Listen(s.path, 0o600)
	if err != nil {
		return err
	}
	s.plugin.serving()
	srv := grpc.NewServer()
	dpapi.RegisterDevicePluginServer(srv, s.plugin)
	go srv.Serve(l)
	s.srv = srv
	return nil
}

func (s *served) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		s.plugin.stopping()
		done := make(chan struct{})
		go func() { s.srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.srv.Stop()
		}
		s.srv = nil // its listener removed the socket, if still ours
	}
}

// Registered reports whether every plugin registered with the kubelet since
// the kubelet's socket last appeared (readiness).
func (m *Manager) Registered() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, s := range m.plugins {
		if !m.registered[s.res.Name] {
			return fmt.Errorf("%s is not registered with the kubelet", s.res.Name)
		}
	}
	return nil
}

func (m *Manager) setRegistered(resource string, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.registered[resource] = ok
}

// register registers every plugin, retrying while the kubelet is coming up.
func (m *Manager) register(ctx context.Context, since time.Time) {
	sock := kubelet.KubeletSocket(m.cfg.KubeletDir)
	for _, s := range m.plugins {
		for attempt := 0; ; attempt++ {
			err := kubelet.RegisterDevicePlugin(ctx, sock, filepath.Base(s.path), s.res.Name,
				&dpapi.DevicePluginOptions{GetPreferredAllocationAvailable: true})
			if err == nil {
				took := time.Duration(0)
				if !since.IsZero() {
					took = time.Since(since)
				}
				klog.InfoS("Registered with the kubelet", "resource", describe(s.res), "sinceKubeletSocket", took)
				m.setRegistered(s.res.Name, true)
				if m.cfg.OnRegistered != nil {
					m.cfg.OnRegistered(s.res.Name, took)
				}
				break
			}
			if ctx.Err() != nil || attempt == 20 {
				klog.ErrorS(err, "Registration failed; waiting for the kubelet socket to appear again", "resource", s.res.Name)
				break
			}
			time.Sleep(time.Duration(attempt+1) * 50 * time.Millisecond)
		}
	}
}

// writeCDI writes the CDI spec of each resource when its devices changed.
func (m *Manager) writeCDI(last map[string]any) {
	if m.cdi == nil {
		return
	}
	for _, s := range m.plugins {
		if !s.res.CDIEnabled() {
			continue
		}
		var devs []device.Device
		seen := map[string]bool{}
		for _, u := range m.inv.Units(s.res) {
			if !seen[u.Device.ID] {
				seen[u.Device.ID] = true
				devs = append(devs, u.Device)
			}
		}
		spec := device.CDISpec(s.res, devs, m.cfg.DevRoot)
		if reflect.DeepEqual(last[s.res.Name], spec) {
			continue
		}
		if len(spec.Devices) == 0 {
			_ = m.cdi.RemoveSpec(device.CDISpecName(s.res))
		} else if err := m.cdi.WriteSpec(spec, device.CDISpecName(s.res)); err != nil {
			klog.ErrorS(err, "Write CDI spec", "resource", s.res.Name)
			continue
		}
		last[s.res.Name] = spec
		klog.InfoS("CDI spec written", "resource", s.res.Name, "devices", len(spec.Devices), "dir", m.cfg.CDIDir)
	}
}

// Run serves and registers the plugins until ctx ends. A kubelet that is
// not running yet is waited for; when the kubelet restarts (its socket is
// created again) every plugin's socket is re-created and registered again.
func (m *Manager) Run(ctx context.Context) error {
	dir := kubelet.DevicePluginDir(m.cfg.KubeletDir)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	for _, s := range m.plugins {
		if err := s.start(); err != nil {
			return err
		}
		defer s.stop()
	}
	cdiState := map[string]any{}
	m.writeCDI(cdiState)
	kubeletSock := kubelet.KubeletSocket(m.cfg.KubeletDir)
	if _, err := os.Stat(kubeletSock); err == nil {
		m.register(ctx, time.Time{})
	} else {
		klog.InfoS("Waiting for the kubelet", "socket", kubeletSock)
	}
	for {
		changed := m.inv.Changed()
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
			m.writeCDI(cdiState)
		case err := <-w.Errors:
			klog.ErrorS(err, "Watching the device-plugin directory")
		case ev := <-w.Events:
			switch {
			case ev.Name == kubeletSock && ev.Op&fsnotify.Create != 0:
				seen := time.Now()
				klog.InfoS("Kubelet socket created: the kubelet (re)started; registering again")
				for _, s := range m.plugins {
					m.setRegistered(s.res.Name, false)
				}
				for _, s := range m.plugins {
					if _, err := os.Stat(s.path); errors.Is(err, os.ErrNotExist) {
						if err := s.start(); err != nil {
							return err
						}
					}
				}
				m.register(ctx, seen)
			case ev.Op&(fsnotify.Remove|fsnotify.Rename) != 0:
				for _, s := range m.plugins {
					// The kubelet clears the directory when it starts: serve
					// again now, register once its socket is back.
					if ev.Name == s.path {
						if _, err := os.Stat(s.path); errors.Is(err, os.ErrNotExist) {
							klog.InfoS("Plugin socket removed; serving it again", "resource", s.res.Name)
							if err := s.start(); err != nil {
								return err
							}
						}
					}
				}
			}
		}
	}
}

// Alive dials every plugin socket the manager serves: the liveness of the
// gRPC servers the kubelet talks to.
func (m *Manager) Alive(ctx context.Context) error {
	var d net.Dialer
	var errs []error
	for _, s := range m.plugins {
		conn, err := d.DialContext(ctx, "unix", s.path)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.res.Name, err))
			continue
		}
		conn.Close()
	}
	return errors.Join(errs...)
}
