// Package csi serves plinth's CSI Identity, Controller and Node services:
// it validates every request field, calls pkg/volume, and maps errors to
// the gRPC codes the CSI spec names for each call.
package csi
