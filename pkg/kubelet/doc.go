// Package kubelet knows the kubelet's directories and registers plugins
// with it: device plugins through the kubelet's Registration service, and
// the CSI driver through the plugin watcher (a pluginregistration server
// in plugins_registry), so that no node-driver-registrar is needed.
package kubelet
