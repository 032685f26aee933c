#!/usr/bin/env python3
"""Checks of what the chart's renders (test/chart/check.sh writes them to
the directory named by argv[1], one <value set>.yaml each) install, read as
objects rather than lines, and of deploy/base (kustomize's render of it on
stdin) against the chart's default render. Prints "ok"/"FAIL" lines; exits
1 on any failure."""

import copy
import glob
import os
import sys

import yaml

WORKLOADS = ("Deployment", "DaemonSet")
INSTANCE = "app.kubernetes.io/instance"

failed = False


def report(ok, what):
    global failed
    print(("ok   " if ok else "FAIL ") + what)
    failed = failed or not ok


def load(stream):
    return [o for o in yaml.safe_load_all(stream) if o]


def find(objs, kind, name):
    return next((o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name), None)


def pod(o):
    return o["spec"]["template"]["spec"]


def container(o):
    return pod(o)["containers"][0]


def check_probes(name, objs):
    """Every container is probed for liveness (/healthz) and readiness
    (/readyz) on a port it declares."""
    bad = []
    for o in objs:
        if o["kind"] not in WORKLOADS:
            continue
        for c in pod(o)["containers"]:
            ports = {p.get("name") for p in c.get("ports", [])} | {p["containerPort"] for p in c.get("ports", [])}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != path or get.get("port") not in ports:
                    bad.append(f"{o['kind']}/{o['metadata']['name']} {probe}: {get or 'none'}")
    report(not bad, f"{name}: every container has a liveness probe (/healthz) and a readiness probe (/readyz) on a port it declares"
           + "".join("; " + b for b in bad))


def check_spread(name, objs):
    """The controller's replicas prefer different nodes: a podAntiAffinity
    term by hostname that selects the controller's own pods and no other
    workload's."""
    d = find(objs, "Deployment", "plinth-controller")
    if d is None:
        return
    terms = (pod(d).get("affinity") or {}).get("podAntiAffinity", {}).get("preferredDuringSchedulingIgnoredDuringExecution", [])
    ok = False
    for t in terms:
        term = t["podAffinityTerm"]
        sel = term.get("labelSelector", {}).get("matchLabels", {})
        matched = [o["metadata"]["name"] for o in objs if o["kind"] in WORKLOADS and sel
                   and sel.items() <= o["spec"]["template"]["metadata"]["labels"].items()]
        ok = ok or (term.get("topologyKey") == "kubernetes.io/hostname" and matched == ["plinth-controller"])
    report(ok, f"{name}: the controller's replicas prefer different nodes (podAntiAffinity by hostname on its own pods)")


def without_instance(v):
    """v without the release's instance label, which deploy/base has no
    counterpart of."""
    v = copy.deepcopy(v)

    def strip(x):
        if isinstance(x, dict):
            x.pop(INSTANCE, None)
            for y in x.values():
                strip(y)
        elif isinstance(x, list):
            for y in x:
                strip(y)
    strip(v)
    return v


def check_base(chart, base):
    """deploy/base's controller and node pods are probed, sized and spread
    as the chart's default render's are."""
    for kind, name in (("Deployment", "plinth-controller"), ("DaemonSet", "plinth-node")):
        c, b = find(chart, kind, name), find(base, kind, name)
        if c is None or b is None:
            report(False, f"deploy/base: {kind}/{name} in chart {c is not None}, in deploy/base {b is not None}")
            continue
        fields = {f: (container(c).get(f), container(b).get(f)) for f in ("livenessProbe", "readinessProbe", "resources")}
        fields["affinity"] = (without_instance(pod(c).get("affinity")), pod(b).get("affinity"))
        report(all(cv == bv for cv, bv in fields.values()),
               f"deploy/base: {kind}/{name} has the chart's probes, resources and affinity"
               + "".join(f"; {f}: chart {cv}, base {bv}" for f, (cv, bv) in fields.items() if cv != bv))


def main():
    out = sys.argv[1]
    renders = {}
    for f in sorted(glob.glob(os.path.join(out, "*.yaml"))):
        with open(f) as fh:
            renders[os.path.basename(f)[:-len(".yaml")]] = load(fh)
    for name, objs in renders.items():
        check_probes(name, objs)
        check_spread(name, objs)
    check_base(renders["default"], load(sys.stdin))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
