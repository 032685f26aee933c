#!/bin/bash
# containerd runs this as runc. This VM refuses a negative oom_score_adj (no
# CAP_SYS_RESOURCE), which the kubelet asks for some pods; rewrite it to 0 in
# the bundle's config.json, then run the real runc with the same arguments.
bundle=
prev=
for a in "$@"; do
	if [[ $prev == --bundle || $prev == -b ]]; then bundle=$a; fi
	case $a in --bundle=*) bundle=${a#--bundle=} ;; esac
	prev=$a
done
if [[ -n $bundle && -f $bundle/config.json ]]; then
	sed -i -E 's/"oomScoreAdj":-[0-9]+/"oomScoreAdj":0/' "$bundle/config.json"
fi
exec runc "$@"
