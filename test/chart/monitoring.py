#!/usr/bin/env python3
"""Checks the chart's monitoring objects (test/chart/check.sh runs it):
argv[1] is the render of charts/plinth/ci/monitoring-values.yaml where the
cluster serves monitoring.coreos.com/v1 PrometheusRule (helm --api-versions),
argv[2] the same values' render without it, argv[3] the default render.
With the API the PrometheusRule holds exactly deploy/monitoring/plinth-alerts.yaml
and the values' labels; without it there is none; the dashboard's ConfigMap
holds exactly deploy/monitoring/plinth-dashboard.json with the sidecar's label
either way; the default render has neither. Prints "ok"/"FAIL" lines; exits 1
on any failure."""

import json
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import renders  # noqa: E402  (report, load: as make chart's other checks)

report = renders.report


def load(path):
    with open(path) as f:
        return renders.load(f)


def of_kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def dashboards(objs):
    return [o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"] == "plinth-grafana-dashboard"]


with open("deploy/monitoring/plinth-alerts.yaml") as f:
    rules = yaml.safe_load(f)
with open("deploy/monitoring/plinth-dashboard.json") as f:
    dashboard = json.load(f)

with_api, without_api, default = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])

prs = of_kind(with_api, "PrometheusRule")
report(len(prs) == 1 and prs[0]["apiVersion"] == "monitoring.coreos.com/v1" and prs[0]["spec"] == rules,
       "monitoring (PrometheusRule API served): one PrometheusRule whose spec is deploy/monitoring/plinth-alerts.yaml "
       f"({sum(len(g['rules']) for g in rules['groups'])} alerts)")
report(len(prs) == 1 and prs[0]["metadata"]["labels"].get("release") == "kube-prometheus-stack"
       and prs[0]["metadata"]["labels"].get("app.kubernetes.io/name") == "plinth"
       and prs[0]["metadata"]["namespace"] == "plinth-system",
       "monitoring: the PrometheusRule has the chart's labels and the values' (release), in the release's namespace")
sms = of_kind(with_api, "ServiceMonitor")
report(sorted(m["metadata"]["name"] for m in sms) == ["plinth-controller", "plinth-node"]
       and all(m["metadata"]["labels"].get("release") == "kube-prometheus-stack"
               and m["metadata"]["labels"].get("app.kubernetes.io/name") == "plinth" for m in sms),
       "monitoring: both ServiceMonitors have the chart's labels and the values' (release)")
report(not of_kind(without_api, "PrometheusRule"),
       "monitoring (PrometheusRule API not served): no PrometheusRule")
for what, objs in (("with the API", with_api), ("without it", without_api)):
    cms = dashboards(objs)
    ok = len(cms) == 1
    if ok:
        cm = cms[0]
        data = cm.get("data", {})
        ok = (list(data) == ["plinth-dashboard.json"] and json.loads(data["plinth-dashboard.json"]) == dashboard
              and cm["metadata"]["labels"].get("grafana_dashboard") == "1"
              and cm["metadata"]["namespace"] == "plinth-system"
              and cm["metadata"].get("annotations", {}).get("grafana_folder") == "plinth")
    report(ok, f"monitoring ({what}): the ConfigMap plinth-grafana-dashboard in the release's namespace holds "
           "deploy/monitoring/plinth-dashboard.json, labelled grafana_dashboard: \"1\", with the values' folder annotation")
report(not of_kind(default, "PrometheusRule") and not dashboards(default),
       "default: no PrometheusRule and no dashboard ConfigMap (both off by default)")
sys.exit(1 if renders.failed else 0)
