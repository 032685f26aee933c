// Package deviceplugin serves plinth's resources to the kubelet: one
// device-plugin gRPC server per resource on a socket in the kubelet's
// device-plugin directory, registered with the kubelet and registered again
// whenever the kubelet restarts.
package deviceplugin
