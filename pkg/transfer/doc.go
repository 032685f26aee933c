// Package transfer is plinth's node-to-node transfer service
// (proto/transfer/v1): one node streams the content of a snapshot it holds
// to the node that fills a volume from it.
//
//   - Sparse: only data travels. An image's holes (SEEK_DATA/SEEK_HOLE) and
//     chunks of zeros are skipped; the receiver's image reads zeros there.
//   - Checked: each chunk carries its CRC-32C, checked before it is written;
//     a chunk that does not match is asked for again.
//   - Resumable: the receiver records, durably, how far its image is written
//     and for which content; after either side restarts it asks from there.
//   - Throttled: one token bucket per node (bytes per second) for what it
//     sends and receives.
//   - Trusted without shared secrets: each node makes a key pair at start and
//     publishes its self-signed certificate in its PlinthNode status; a peer
//     is the node whose published certificate it presents, byte for byte
//     (TLS 1.3, both ways). The API server is the trust anchor.
//   - Authorized by the objects the controller writes: a node serves a
//     transfer for a volume object only to the node that object names, and
//     only for content on the serving node (Source).
package transfer
