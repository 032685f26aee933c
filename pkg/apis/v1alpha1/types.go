package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Labels and finalizers plinth puts on its objects.
const (
	// LabelNode on a PlinthVolume names the node that owns it, so a node
	// watches only its own volumes.
	LabelNode = "plinth.example.com/node"
	// LabelPool names the volume's pool.
	LabelPool = "plinth.example.com/pool"
	// Finalizer keeps a PlinthVolume until its node has removed the storage.
	Finalizer = "plinth.example.com/storage"
)

// VolumePhase is where a volume is in its life.
// +kubebuilder:validation:Enum=Pending;Ready;Failed;Deleting
type VolumePhase string

// Volume phases.
const (
	// VolumePending: recorded, its node has not made it yet (a reservation).
	VolumePending VolumePhase = "Pending"
	// VolumeReady: the storage exists on the node.
	VolumeReady VolumePhase = "Ready"
	// VolumeFailed: the node could not make it; Reason and Message say why.
	VolumeFailed VolumePhase = "Failed"
	// VolumeDeleting: the node is removing the storage.
	VolumeDeleting VolumePhase = "Deleting"
)

// Reasons a node gives in a volume's status.
const (
	ReasonNoSpace     = "NoSpace"
	ReasonInvalid     = "Invalid"
	ReasonUnsupported = "Unsupported"
	ReasonInUse       = "InUse"
	ReasonError       = "Error"
	ReasonNoPool      = "NoPool"
	// ReasonNotFound: what the object names (a snapshot's source volume, a
	// restore's snapshot) is not on the node.
	ReasonNotFound = "NotFound"
	// ReasonUnreachable: a Ready volume's storage cannot be reached now
	// (its disk is gone, its pool's filesystem failed); it clears when the
	// storage is back.
	ReasonUnreachable = "Unreachable"
	// ReasonSyncFailed: a Ready volume's spec.sync will not happen (the
	// move that asked for it rolls back).
	ReasonSyncFailed = "SyncFailed"
)

// PlinthVolume is one node-local volume: the controller writes the spec,
// the volume's node makes the storage and writes the status.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=pvol;pvols,categories=plinth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Capacity",type=integer,JSONPath=`.status.capacityBytes`
// +kubebuilder:printcolumn:name="Used",type=integer,JSONPath=`.status.usedBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Claim",type=string,JSONPath=`.spec.claim`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PlinthVolume struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VolumeSpec   `json:"spec"`
	Status VolumeStatus `json:"status,omitempty"`
}

// VolumeSpec is what the controller asks of the node.
type VolumeSpec struct {
	// NodeName is the node whose pool holds the volume. Immutable.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="nodeName is immutable"
	NodeName string `json:"nodeName"`
	// Pool is the pool on that node. Immutable.
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="pool is immutable"
	Pool string `json:"pool"`
	// VolumeName is the name the volume was requested under (the PV's name);
	// the object's own name is the volume ID derived from it.
	// +kubebuilder:validation:MinLength=1
	VolumeName string `json:"volumeName"`
	// CapacityBytes is the size asked for; raising it expands the volume.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:XValidation:rule="self >= oldSelf",message="capacityBytes cannot shrink"
	CapacityBytes int64 `json:"capacityBytes"`
	// Mode is Filesystem or Block.
	// +kubebuilder:validation:Enum=Filesystem;Block
	Mode string `json:"mode"`
	// FsType is the filesystem of a Filesystem volume.
	// +optional
	FsType string `json:"fsType,omitempty"`
	// Thick asks for the whole capacity up front. A change (the claim's
	// VolumeAttributesClass) allocates the image's blocks (thick) or gives
	// back what the volume's filesystem does not use (thin).
	// +optional
	Thick bool `json:"thick,omitempty"`
	// IOLimits are the limits every pod the volume is published to is
	// held to, in the block IO controller of its cgroup (the claim's
	// VolumeAttributesClass's parameters). Absent: none. A change is
	// applied to the pods that use the volume now.
	// +optional
	IOLimits *IOLimits `json:"ioLimits,omitempty"`
	// Claim is namespace/name of the PVC the volume was made for.
	// +optional
	Claim string `json:"claim,omitempty"`
	// Source is what the volume is filled from when it is made: a snapshot
	// or another volume of the same node and pool. Immutable.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="source is immutable"
	Source *VolumeSource `json:"source,omitempty"`
	// Held: the volume is being moved to another node (a PlinthMove's
	// cutover): its node refuses to stage or publish it, so no pod writes
	// to it any more, and serves its content to the move's target.
	// +optional
	Held bool `json:"held,omitempty"`
	// Sync asks the node to bring this Ready volume's content up to
	// another node's volume (a PlinthMove's final sync): only what
	// differs from the snapshot this volume was filled from is sent. Set
	// once.
	// +optional
	// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="sync is immutable"
	Sync *VolumeSync `json:"sync,omitempty"`
}

// IOLimits are a volume's IO limits; an absent or zero field is no limit.
type IOLimits struct {
	// +optional
	// +kubebuilder:validation:Minimum=0
	ReadIOPS int64 `json:"readIOPS,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	WriteIOPS int64 `json:"writeIOPS,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	ReadBytesPerSecond int64 `json:"readBytesPerSecond,omitempty"`
	// +optional
	// +kubebuilder:validation:Minimum=0
	WriteBytesPerSecond int64 `json:"writeBytesPerSecond,omitempty"`
}

// AppliedAttributes are the mutable attributes a node has made true of a
// volume.
type AppliedAttributes struct {
	// +optional
	Thick bool `json:"thick,omitempty"`
	// +optional
	IOLimits *IOLimits `json:"ioLimits,omitempty"`
}

// VolumeSync names the volume whose content a volume is brought up to.
type VolumeSync struct {
	// NodeName holds VolumeID and BaseSnapshotID.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName"`
	// VolumeID is the volume copied (held, so that nothing writes to it).
	// +kubebuilder:validation:MinLength=1
	VolumeID string `json:"volumeID"`
	// BaseSnapshotID is the snapshot of VolumeID this volume was filled
	// from. Empty: the volume was not filled (a whole disk has no
	// snapshot), and the sync sends all of VolumeID.
	// +optional
	BaseSnapshotID string `json:"baseSnapshotID,omitempty"`
}

// VolumeSource names what a new volume is filled from: a snapshot or a
// volume; a clone from another node names the volume and the snapshot of
// it that the volume is filled from.
// +kubebuilder:validation:XValidation:rule="has(self.snapshotID) != has(self.volumeID) || (has(self.nodeName) && has(self.snapshotID))",message="exactly one of snapshotID and volumeID (a clone from another node names both: the volume and the snapshot it is sent from)"
type VolumeSource struct {
	// SnapshotID is a PlinthSnapshot's name (restore).
	// +optional
	SnapshotID string `json:"snapshotID,omitempty"`
	// VolumeID is a PlinthVolume's name (clone).
	// +optional
	VolumeID string `json:"volumeID,omitempty"`
	// NodeName is the node that holds the source when it is not the
	// volume's own node: the volume's node fills the volume from it over
	// the transfer service, and that node serves the transfer to the
	// volume's node only. Empty: the source is on the volume's node.
	// +optional
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName,omitempty"`
}

// VolumeStatus is the node's answer.
type VolumeStatus struct {
	// +optional
	Phase VolumePhase `json:"phase,omitempty"`
	// CapacityBytes is the size the storage has now.
	// +optional
	CapacityBytes int64 `json:"capacityBytes,omitempty"`
	// Reason is a CamelCase word for a failure (NoSpace, Invalid, InUse, ...).
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message says what went wrong, in words.
	// +optional
	Message string `json:"message,omitempty"`
	// ObservedGeneration is the spec generation the status answers.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// CountedIn is the sequence of the node's status (PlinthNode
	// status.sequence) whose pool numbers first include this Ready volume:
	// until the controller has seen that status it still holds the
	// volume's bytes reserved (the two objects reach it on separate
	// watches, in either order).
	// +optional
	CountedIn int64 `json:"countedIn,omitempty"`
	// UsedBytes is what the volume holds, as its node read it at
	// UsageTime; absent where the node cannot tell (a volume that is
	// not mounted on a pool whose records do not know). The node
	// rewrites it at a bounded rate, not at every read: when it moved by
	// at least 1% of the capacity (at most once per 10 minutes per
	// volume), or after an hour for a smaller change; an unchanged value
	// is never rewritten, so UsageTime may be old while the value holds.
	// +optional
	// +kubebuilder:validation:Minimum=0
	UsedBytes *int64 `json:"usedBytes,omitempty"`
	// UsageTime is when the node read UsedBytes.
	// +optional
	UsageTime *metav1.Time `json:"usageTime,omitempty"`
	// Transfer is how far the volume's content has come from the node
	// that holds its source (spec.source.nodeName), while it comes.
	// +optional
	Transfer *TransferProgress `json:"transfer,omitempty"`
	// SyncedVolumeID is spec.sync.volumeID once the volume holds what that
	// volume holds.
	// +optional
	SyncedVolumeID string `json:"syncedVolumeID,omitempty"`
	// Applied are spec.thick and spec.ioLimits as the node has made them
	// true of a Ready volume; absent from a node that predates them.
	// +optional
	Applied *AppliedAttributes `json:"applied,omitempty"`
}

// TransferProgress is how far a transfer is.
type TransferProgress struct {
	// DoneBytes of TotalBytes of data are on this node.
	DoneBytes  int64 `json:"doneBytes"`
	TotalBytes int64 `json:"totalBytes"`
	// BytesPerSecond is the rate of the transfer's current attempt.
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// UpdateTime is when the node last wrote this.
	UpdateTime metav1.Time `json:"updateTime"`
	// Message says why the last attempt stopped, while the node tries again.
	// +optional
	Message string `json:"message,omitempty"`
}

// PlinthVolumeList is a list of PlinthVolume.
// +kubebuilder:object:root=true
type PlinthVolumeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PlinthVolume `json:"items"`
}

// PlinthSnapshot is one snapshot of a node-local volume: the controller
// writes the spec (for a VolumeSnapshotContent of plinth's driver), the
// source volume's node makes it in the volume's pool and writes the status.
// Deleting the object removes the snapshot from the node (its finalizer).
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=psnap;psnaps,categories=plinth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.spec.nodeName`
// +kubebuilder:printcolumn:name="Pool",type=string,JSONPath=`.spec.pool`
// +kubebuilder:printcolumn:name="Volume",type=string,JSONPath=`.spec.sourceVolumeID`
// +kubebuilder:printcolumn:name="Size",type=integer,JSONPath=`.status.sizeBytes`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PlinthSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   SnapshotSpec   `json:"spec"`
	Status SnapshotStatus `json:"status,omitempty"`
}

// SnapshotSpec is what the controller asks of the source volume's node. All
// of it is immutable.
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a snapshot's spec is immutable"
type SnapshotSpec struct {
	// NodeName is the node that holds the source volume and the snapshot.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	NodeName string `json:"nodeName"`
	// Pool is the source volume's pool, which holds the snapshot too.
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$`
	Pool string `json:"pool"`
	// SourceVolumeID is the PlinthVolume snapshotted.
	// +kubebuilder:validation:MinLength=1
	SourceVolumeID string `json:"sourceVolumeID"`
	// SnapshotName is the name the snapshot was requested under (the CSI
	// name); the object's own name is the snapshot ID derived from it.
	// +kubebuilder:validation:MinLength=1
	SnapshotName string `json:"snapshotName"`
}

// SnapshotStatus is the node's answer.
type SnapshotStatus struct {
	// Phase is Pending, Ready, Failed or Deleting, as for volumes.
	// +optional
	Phase VolumePhase `json:"phase,omitempty"`
	// SizeBytes is the source volume's size when the snapshot was taken (the
	// least a restored volume needs).
	// +optional
	SizeBytes int64 `json:"sizeBytes,omitempty"`
	// CreationTime is when the node took the snapshot.
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// Mode and FsType are the source volume's, which a restore must match.
	// +optional
	Mode string `json:"mode,omitempty"`
	// +optional
	FsType string `json:"fsType,omitempty"`
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
}

// PlinthSnapshotList is a list of PlinthSnapshot.
// +kubebuilder:object:root=true
type PlinthSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PlinthSnapshot `json:"items"`
}

// PlinthNode is what one node says of its pools and devices; its name is the
// node's name. Only that node's plinth writes it.
//
// +genclient
// +genclient:nonNamespaced
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,shortName=pnode,categories=plinth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Pools",type=integer,JSONPath=`.status.poolCount`
// +kubebuilder:printcolumn:name="Devices",type=integer,JSONPath=`.status.deviceCount`
// +kubebuilder:printcolumn:name="Heartbeat",type=date,JSONPath=`.status.heartbeatTime`
type PlinthNode struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// +optional
	Status NodeStatus `json:"status,omitempty"`
}

// NodeStatus is a node's pools and devices.
type NodeStatus struct {
	// +optional
	Pools []PoolStatus `json:"pools,omitempty"`
	// +optional
	PoolCount int `json:"poolCount,omitempty"`
	// +optional
	Devices []DeviceStatus `json:"devices,omitempty"`
	// +optional
	DeviceCount int `json:"deviceCount,omitempty"`
	// Disks are the node's whole block devices, as plinth last read them
	// (only when the node has disk rules).
	// +optional
	Disks []DiskStatus `json:"disks,omitempty"`
	// Version of plinth on the node.
	// +optional
	Version string `json:"version,omitempty"`
	// Transfer is where the node serves transfers to other nodes and the
	// certificate it presents (made at its start): other nodes trust it
	// for exactly this node.
	// +optional
	Transfer *TransferEndpoint `json:"transfer,omitempty"`
	// HeartbeatTime is when the node last wrote this status.
	// +optional
	HeartbeatTime metav1.Time `json:"heartbeatTime,omitempty"`
	// Sequence grows by one with every status the node writes (across its
	// restarts); a volume's status.countedIn names the first whose pool
	// numbers include that volume.
	// +optional
	Sequence int64 `json:"sequence,omitempty"`
}

// PoolStatus is one pool's capabilities and capacity.
type PoolStatus struct {
	Name    string `json:"name"`
	Backend string `json:"backend"`
	// Block is true when the pool can hand out raw block volumes.
	// +optional
	Block bool `json:"block,omitempty"`
	// FsTypes the pool can put on a volume; the first is the default.
	// +optional
	FsTypes []string `json:"fsTypes,omitempty"`
	// OwnFs: volumes are directories on the pool's own filesystem.
	// +optional
	OwnFs bool `json:"ownFs,omitempty"`
	// TotalBytes and FreeBytes of the pool's filesystem.
	TotalBytes int64 `json:"totalBytes"`
	FreeBytes  int64 `json:"freeBytes"`
	// CommittedBytes: what the pool's volumes may still claim.
	CommittedBytes int64 `json:"committedBytes"`
	// AllocatableBytes: what a new volume may be given.
	AllocatableBytes int64 `json:"allocatableBytes"`
	// ProvisionedBytes is the sum of the volumes' capacities.
	ProvisionedBytes int64 `json:"provisionedBytes"`
	// LargestVolumeBytes, when set, is the largest volume the pool can
	// make now, below AllocatableBytes (a disk pool: its largest free
	// disk).
	// +optional
	LargestVolumeBytes int64 `json:"largestVolumeBytes,omitempty"`
	Volumes            int   `json:"volumes"`
	// Healthy is false when the pool cannot be read; Message says why.
	Healthy bool `json:"healthy"`
	// +optional
	Message string `json:"message,omitempty"`
}

// TransferEndpoint is how other nodes reach a node's transfer service.
type TransferEndpoint struct {
	// Address is host:port on the node's network.
	Address string `json:"address"`
	// Certificate is the node's self-signed certificate, PEM.
	Certificate string `json:"certificate"`
}

// DiskStatus is one of the node's disks: its identity, what it is and
// what it is to plinth.
type DiskStatus struct {
	// ID is the disk's identity across reboots (wwn:, serial:, file: or
	// path:); Name the kernel's name now.
	ID   string `json:"id"`
	Name string `json:"name"`
	// +optional
	Model string `json:"model,omitempty"`
	// +optional
	Serial string `json:"serial,omitempty"`
	// +optional
	WWN       string `json:"wwn,omitempty"`
	SizeBytes int64  `json:"sizeBytes"`
	Transport string `json:"transport"`
	// +optional
	Rotational bool `json:"rotational,omitempty"`
	// NUMANode is -1 where the platform does not say.
	NUMANode int `json:"numaNode"`
	// State is free, plinth (one of a pool's disks), foreign, or missing
	// (a pool's disk that is not there).
	State string `json:"state"`
	// +optional
	Pool string `json:"pool,omitempty"`
	// Reason says why a disk is foreign or was not claimed.
	// +optional
	Reason string `json:"reason,omitempty"`
}

// DeviceStatus is one accelerator the node serves.
type DeviceStatus struct {
	// Resource is the extended resource name (example.com/gpu).
	Resource string `json:"resource"`
	ID       string `json:"id"`
	Healthy  bool   `json:"healthy"`
	// +optional
	NUMANode int `json:"numaNode,omitempty"`
	// +optional
	Model string `json:"model,omitempty"`
}

// PlinthNodeList is a list of PlinthNode.
// +kubebuilder:object:root=true
type PlinthNodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PlinthNode `json:"items"`
}

// MovePhase is where a move is.
// +kubebuilder:validation:Enum=Pending;Copying;Cutover;FinalSync;Rebind;Done;Failed
type MovePhase string

// Move phases, in order; Failed ends a move before Rebind with the claim as
// it was.
const (
	// MovePending: not started; checked first.
	MovePending MovePhase = "Pending"
	// MoveCopying: a snapshot of the volume is copied to the target node
	// while the workload runs.
	MoveCopying MovePhase = "Copying"
	// MoveCutover: the volume is held (its node stages it for no new pod)
	// and the pods that use the claim stop (evicted with spec.evict).
	MoveCutover MovePhase = "Cutover"
	// MoveFinalSync: what changed since the snapshot goes to the target.
	MoveFinalSync MovePhase = "FinalSync"
	// MoveRebind: the claim is bound to the target's volume.
	MoveRebind MovePhase = "Rebind"
	// MoveDone: the claim is bound on the target; the source is removed
	// (after spec.keepSourceFor).
	MoveDone MovePhase = "Done"
	// MoveFailed: refused or rolled back; the claim and its volume are as
	// they were.
	MoveFailed MovePhase = "Failed"
)

// PlinthMove moves a bound claim's plinth volume to another node: the
// claim keeps its name, namespace, labels and annotations and ends up bound
// to a volume on the target node with the same data.
//
// +genclient
// +kubebuilder:object:root=true
// +kubebuilder:resource:shortName=pmove;pmoves,categories=plinth
// +kubebuilder:subresource:status
// +kubebuilder:printcolumn:name="Claim",type=string,JSONPath=`.spec.claim`
// +kubebuilder:printcolumn:name="From",type=string,JSONPath=`.status.sourceNode`
// +kubebuilder:printcolumn:name="To",type=string,JSONPath=`.spec.targetNode`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Done",type=integer,JSONPath=`.status.bytesDone`
// +kubebuilder:printcolumn:name="Total",type=integer,JSONPath=`.status.bytesTotal`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PlinthMove struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   MoveSpec   `json:"spec"`
	Status MoveStatus `json:"status,omitempty"`
}

// MoveSpec is what to move where.
// +kubebuilder:validation:XValidation:rule="self.claim == oldSelf.claim && self.targetNode == oldSelf.targetNode",message="claim and targetNode are immutable"
type MoveSpec struct {
	// Claim is the PersistentVolumeClaim, in the move's namespace.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Claim string `json:"claim"`
	// TargetNode is the node the volume goes to.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	TargetNode string `json:"targetNode"`
	// Evict: at cutover, evict the pods that use the claim (through the
	// eviction API, so PodDisruptionBudgets hold); otherwise wait until
	// they are gone.
	// +optional
	Evict bool `json:"evict,omitempty"`
	// KeepSourceFor keeps the source volume this long after the claim is
	// bound on the target (default: removed at once).
	// +optional
	KeepSourceFor *metav1.Duration `json:"keepSourceFor,omitempty"`
}

// MoveStatus is how far the move is.
type MoveStatus struct {
	// +optional
	Phase MovePhase `json:"phase,omitempty"`
	// Reason is a CamelCase word for a refusal or a failure; Message says
	// what happens now, in words.
	// +optional
	Reason string `json:"reason,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
	// SourceNode, SourcePV and SourceVolumeID are where the volume was.
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// +optional
	SourcePV string `json:"sourcePV,omitempty"`
	// +optional
	SourceVolumeID string `json:"sourceVolumeID,omitempty"`
	// SourceReclaimPolicy is the source PV's reclaim policy before the move
	// set it to Retain for the rebind.
	// +optional
	SourceReclaimPolicy string `json:"sourceReclaimPolicy,omitempty"`
	// SnapshotID is the snapshot copied while the workload ran.
	// +optional
	SnapshotID string `json:"snapshotID,omitempty"`
	// TargetPV and TargetVolumeID are where the volume goes.
	// +optional
	TargetPV string `json:"targetPV,omitempty"`
	// +optional
	TargetVolumeID string `json:"targetVolumeID,omitempty"`
	// ClaimUID is the UID of the claim the move began with; the claim
	// that ends up bound on the target has another.
	// +optional
	ClaimUID string `json:"claimUID,omitempty"`
	// Claim is the claim as the move found it (JSON: its labels,
	// annotations and spec), from which it is made again at rebind.
	// +optional
	Claim string `json:"claim,omitempty"`
	// BytesDone of BytesTotal of the copy are on the target;
	// BytesPerSecond is its rate and ETASeconds what is left at that rate.
	// +optional
	BytesDone int64 `json:"bytesDone,omitempty"`
	// +optional
	BytesTotal int64 `json:"bytesTotal,omitempty"`
	// +optional
	BytesPerSecond int64 `json:"bytesPerSecond,omitempty"`
	// +optional
	ETASeconds int64 `json:"etaSeconds,omitempty"`
	// StartTime, CutoverTime (the workload told to stop), RebindTime and
	// DoneTime mark the phases.
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CutoverTime *metav1.Time `json:"cutoverTime,omitempty"`
	// +optional
	RebindTime *metav1.Time `json:"rebindTime,omitempty"`
	// +optional
	DoneTime *metav1.Time `json:"doneTime,omitempty"`
}

// PlinthMoveList is a list of PlinthMove.
// +kubebuilder:object:root=true
type PlinthMoveList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PlinthMove `json:"items"`
}

// Volume modes, as PersistentVolumes spell them.
const (
	ModeFilesystem = "Filesystem"
	ModeBlock      = "Block"
)
