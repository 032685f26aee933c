#!/usr/bin/env bash
# Checks charts/plinth: helm lint with each value set in charts/plinth/ci,
# helm template of each (written to $1 for the end-to-end suite, which
# dry-runs them against the real API server), each render holding the lines
# test/chart/expect/<name>.txt names (and none of its !lines), every bad
# value set in test/chart/bad refused (by values.schema.json or the
# templates' checks), the renders' objects as test/chart/renders.py checks
# them, the monitoring objects as test/chart/monitoring.py checks them, with deploy/'s kustomizations (kubectl kustomize), the backends and layouts docs/configuration.md lists
# accepted by the schema, and the chart's CRDs equal to deploy/base/crds
# (both generated from pkg/apis), its monitoring/ equal to deploy/monitoring.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-$(mktemp -d)}
mkdir -p "$out"
helm=${HELM:-helm}
chart=charts/plinth
fail=0
diff -r "$chart/crds" deploy/base/crds || { echo "chart CRDs differ from deploy/base/crds: run make generate"; fail=1; }
diff -r "$chart/monitoring" deploy/monitoring || { echo "chart's monitoring/ differs from deploy/monitoring: cp deploy/monitoring/* $chart/monitoring/"; fail=1; }
"$helm" lint --strict --kube-version 1.37.2 "$chart" >/dev/null || { "$helm" lint --strict --kube-version 1.37.2 "$chart"; fail=1; }
"$helm" template plinth "$chart" --kube-version 1.37.2 --namespace plinth-system --include-crds >"$out/default.yaml"
# As a new user runs it: no --kube-version, no values.
"$helm" template "$chart" >/dev/null || { echo "FAIL helm template without --kube-version"; fail=1; }
echo "ok   default: $(grep -c '^kind:' "$out/default.yaml") objects"
for v in "$chart"/ci/*-values.yaml; do
	name=$(basename "$v" -values.yaml)
	"$helm" lint --strict --kube-version 1.37.2 "$chart" -f "$v" >/dev/null || { echo "FAIL lint $v"; "$helm" lint --strict --kube-version 1.37.2 "$chart" -f "$v"; fail=1; }
	"$helm" template plinth "$chart" --kube-version 1.37.2 --namespace plinth-system --include-crds -f "$v" >"$out/$name.yaml"
	echo "ok   $name: $(grep -c '^kind:' "$out/$name.yaml") objects"
done
# The monitoring value set once more where the cluster serves prometheus-operator's
# PrometheusRule (outside $out: the end-to-end suite's cluster does not serve it), checked
# against deploy/monitoring with the render without it and the default one.
mon=$(mktemp -d)
"$helm" template plinth "$chart" --kube-version 1.37.2 --namespace plinth-system \
	--api-versions monitoring.coreos.com/v1/PrometheusRule -f "$chart/ci/monitoring-values.yaml" >"$mon/monitoring.yaml"
python3 test/chart/monitoring.py "$mon/monitoring.yaml" "$out/monitoring.yaml" "$out/default.yaml" || fail=1
rm -rf "$mon"
for e in test/chart/expect/*.txt; do
	name=$(basename "$e" .txt)
	bad=0
	while IFS= read -r line; do
		case $line in
		'' | '#'*) ;;
		'!'*) if grep -qF -- "${line#!}" "$out/$name.yaml"; then echo "FAIL $name: render has: ${line#!}"; bad=1; fi ;;
		*) if ! grep -qxF -- "$line" "$out/$name.yaml"; then echo "FAIL $name: render lacks: $line"; bad=1; fi ;;
		esac
	done <"$e"
	if [ $bad = 0 ]; then echo "ok   $name: renders what $(basename "$e") names"; else fail=1; fi
done
# The renders read as objects (test/chart/renders.py says what it checks),
# with deploy/base and each overlay (kubectl kustomize), and deploy/base
# against the default render.
kubectl=${KUBECTL:-kubectl}
kout=$(mktemp -d) && mkdir "$kout/overlays"
for k in deploy/base deploy/overlays/*/; do
	k=${k%/}
	"$kubectl" kustomize "$k" >"$kout/${k#deploy/}.yaml" 2>&1 || { echo "FAIL $kubectl kustomize $k"; cat "$kout/${k#deploy/}.yaml"; fail=1; }
done
python3 test/chart/renders.py "$out" "$kout" || fail=1
rm -rf "$kout"
# The values docs/configuration.md lists for a StorageClass's backend, a
# --pool's backend (node.pools) and a disk rule's layout are the ones
# values.schema.json accepts, no more and no fewer.
doc=docs/configuration.md
words() { xargs -n1 | sort | xargs; }
while IFS='|' read -r what listed path; do
	accepted=$(jq -r "$path.enum[]" "$chart/values.schema.json" | words)
	if [ "$listed" = "$accepted" ]; then
		echo "ok   $what: docs and schema list $accepted"
	else
		echo "FAIL $what: docs/configuration.md lists '$listed', values.schema.json accepts '$accepted'"
		fail=1
	fi
done <<LIST
storageClasses[].backend|$(grep -m1 '^| `backend` |' "$doc" | cut -d'|' -f3 | grep -o '`[a-z]*`' | tr -d '`' | words)|.properties.storageClasses.items.properties.backend
node.pools[].backend|$(grep -m1 '^| `--pool` |' "$doc" | grep -o 'backend=[a-z\\|]*' | sed 's/^backend=//; s/\\|/ /g' | words)|.properties.node.properties.pools.items.properties.backend
node.disks.rules[].layout|$(grep -m1 '^| `layout` |' "$doc" | cut -d'|' -f3 | grep -o '`[a-z]*`:' | tr -d '`:' | words)|.properties.node.properties.disks.properties.rules.items.properties.layout
LIST
for v in test/chart/bad/*.yaml; do
	if msg=$("$helm" template plinth "$chart" --kube-version 1.37.2 -f "$v" 2>&1 >/dev/null); then
		echo "FAIL bad values accepted: $v"
		fail=1
	else
		echo "ok   refused $(basename "$v"): $(echo "$msg" | grep -m1 -o 'at .*' || echo "$msg" | head -1)"
	fi
done
exit $fail
