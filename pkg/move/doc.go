// Package move is plinth controller's side of PlinthMove: it moves a bound
// claim's volume to another node while the claim keeps its name.
//
//	Pending    checked: the claim is bound to a plinth volume in a file pool, not
//	           RWX; the target node exists and has a file pool that fits; no
//	           other move of the claim runs. A refusal changes nothing.
//	Copying    a snapshot of the volume is taken and a volume on the target is
//	           filled from it (pkg/transfer), while the workload runs.
//	Cutover    the volume is held (its node stages and publishes it for no new
//	           pod) and the pods that use the claim stop: evicted through the
//	           eviction API with spec.evict (PodDisruptionBudgets hold), else
//	           waited for.
//	FinalSync  what changed since the snapshot goes to the target (only what
//	           differs from the snapshot; the source node serves it only while
//	           the volume is held and neither staged nor published).
//	Rebind     the source PV is set to Retain; a PV for the target volume is
//	           made, pre-bound to the claim's namespace and name; the claim is
//	           deleted (with the pods that wait for it) and made again, with its
//	           labels, annotations and spec, bound to the new PV. A workload
//	           controller that re-creates the claim first (a StatefulSet, from
//	           its template) gets it bound to the same PV: the PV controller
//	           binds a claim to the PV pre-bound to its name.
//	Done       once the claim is bound on the target (and spec.keepSourceFor
//	           has passed): the source PV, volume and snapshot are removed.
//
// A failure before Rebind rolls back: the hold is lifted, the target volume
// and the snapshot removed; the claim and its volume are as they were. From
// Rebind on the move only goes forward, and the source stays until Done.
package move
