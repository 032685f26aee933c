package csi

import (
	"context"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"k8s.io/klog/v2"
)

// IdentityServer serves the CSI Identity service.
type IdentityServer struct {
	csi.UnimplementedIdentityServer
	name, version string
	controller    bool
	ready         func(context.Context) error
}

var _ csi.IdentityServer = (*IdentityServer)(nil)

// NewIdentityServer returns the Identity service of driver name at version;
// controller says whether this process serves the Controller service, and
// ready tells Probe whether the plugin can serve now.
func NewIdentityServer(name, version string, controller bool, ready func(context.Context) error) *IdentityServer {
	return &IdentityServer{name: name, version: version, controller: controller, ready: ready}
}

func (s *IdentityServer) GetPluginInfo(ctx context.Context, _ *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: s.name, VendorVersion: s.version}, nil
}

func (s *IdentityServer) GetPluginCapabilities(ctx context.Context, _ *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	svc := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	caps := []*csi.PluginCapability{
		svc(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{Type: csi.PluginCapability_VolumeExpansion_ONLINE}}},
	}
	if s.controller {
		caps = append(caps, svc(csi.PluginCapability_Service_CONTROLLER_SERVICE),
			svc(csi.PluginCapability_Service_SNAPSHOT_ACCESSIBILITY_CONSTRAINTS))
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

// Probe reports ready only when every pool answers.
func (s *IdentityServer) Probe(ctx context.Context, _ *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	if err := s.ready(ctx); err != nil {
		klog.FromContext(ctx).Info("Probe: not ready", "err", err)
		return &csi.ProbeResponse{Ready: wrapperspb.Bool(false)}, nil
	}
	return &csi.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}
