#!/usr/bin/env python3
"""Checks of the Helm chart charts/txpipe without a cluster (`make chart`).

Helm itself runs in-process: PyPI `helm-python-sdk` binds Helm's Go SDK (the wheel bundles
libhelm_c.so, Helm v4.2.3) through ctypes, so neither a helm binary nor network access is
needed.

1. `helm lint --strict` of the chart with its default values and with every
   charts/txpipe/ci/*.yaml (warnings fail; info messages are shown).
2. `helm template` (Helm's install action in client-only dry-run mode, as `helm template`
   does) of each of those values files: every rendered object passes kubernetes-validate in
   strict mode for Kubernetes 1.30 and the newest version it knows; ServiceMonitor and
   PodMonitor (Prometheus-operator CRDs) get a minimal shape check; the operator Deployment
   passes the Pod Security "restricted" rules; NOTES.txt renders.
3. Every charts/txpipe/ci-bad/*.yaml is rejected by values.schema.json, with the message
   listed in ci-bad/expected.json, both by Helm (lint) and by jsonschema (Draft 7).
4. The dashboards template: with no dashboards/*.json it renders nothing; with a sample
   dashboard (in a temporary copy of the chart) it renders a labelled ConfigMap holding it.
5. `helm package` works, leaves ci/ and ci-bad/ out, and the archive renders like the
   directory; charts/txpipe/crds/ equals crds/ byte for byte; each Role/ClusterRole of
   manifests/rbac/ has a rendered twin (same kind and name) with exactly the same rules.
6. manifests/install.yaml equals the rendering of INSTALL_COMMAND byte for byte
   (`--write-install-yaml` regenerates it: `make install-yaml`).

Prints one PASS/FAIL row per check and exits 1 on any failure (2 on usage errors).

Usage: scripts/validate_chart.py [--repo DIR] [--write-install-yaml]
Requires: helm-python-sdk (scripts/requirements-chart.txt), kubernetes-validate, jsonschema,
PyYAML (scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from validate_k8s import check_service_monitor, monitor_header, validate_object  # noqa: E402

MIN_K8S_VERSION = "1.30"
RELEASE = "txpipe"
NAMESPACE = "txpipe-system"
INSTALL_VALUES = {"createNamespace": True}
INSTALL_COMMAND = (
    "helm template txpipe charts/txpipe --namespace txpipe-system --include-crds "
    "--set createNamespace=true"
)
INSTALL_HEADER = f"""\
# txpipe operator: what `helm install txpipe charts/txpipe -n txpipe-system` installs, for clusters
# without Helm. GENERATED, do not edit: `make install-yaml` writes it as the output of
#
#   {INSTALL_COMMAND}
#
# (the CRD, a Namespace txpipe-system enforcing Pod Security "restricted", the ServiceAccount,
# cluster-wide least-privilege RBAC, the operator Deployment with 2 replicas and leader
# election, its metrics Service), and `make chart` checks that it is up to date.
#
#   kubectl apply --server-side -f manifests/install.yaml
#   kubectl apply -f manifests/examples/small.yaml
#   kubectl get txp
#
# Other settings (namespace-scoped mode, monitoring, NetworkPolicies): use the chart.
"""

ROWS: list[tuple[bool, str, str, str, str]] = []


def record(check: str, subject: str, ok: bool, detail: str = "", version: str = "-") -> None:
    detail = " | ".join(line.strip() for line in detail.splitlines() if line.strip())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    ROWS.append((ok, check, version, subject, detail))


def helm_template(chart_dir: Path, values: dict[str, Any] | None, *, include_crds: bool = False,
                  namespace: str = NAMESPACE) -> str:
    """The stdout of `helm template RELEASE CHART --namespace NS [-f values] [--include-crds]`.

    `helm template` is Helm's install action in client-only dry-run mode printing
    `strings.TrimSpace(release.Manifest)` and a newline (no hooks in this chart). With
    --include-crds, Helm writes each crds/ file first as `---\\n# Source: <chart>/crds/<file>\\n
    <data>\\n` (pkg/action renderResources); that part is reproduced here, since the SDK's
    install options do not expose include_crds.
    """
    with helm.Chart.load(str(chart_dir)) as chart:
        prefix = ""
        if include_crds:
            for crd in chart.crds:
                prefix += f"---\n# Source: {crd['filename']}\n{crd['data']}\n"
        with helm.Config(storage_driver="memory", namespace=namespace) as cfg:
            rel = cfg.install(chart, RELEASE, values or {}, dry_run="client", namespace=namespace)
    return (prefix + rel["manifest"]).strip() + "\n"


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = f"{meta['namespace']}/" if meta.get("namespace") else ""
    return f"{obj.get('kind')}/{ns}{meta.get('name')}"


def check_pod_monitor(obj: dict[str, Any]) -> list[str]:
    """Minimal shape of a monitoring.coreos.com/v1 PodMonitor."""
    problems, spec = monitor_header(obj)
    if spec is None:
        return problems
    sel = spec.get("selector")
    if not isinstance(sel, dict) or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        problems.append("spec.selector must select something")
    ns = spec.get("namespaceSelector")
    if ns is not None and not (ns.get("any") is True or isinstance(ns.get("matchNames"), list)):
        problems.append("spec.namespaceSelector needs any: true or matchNames")
    eps = spec.get("podMetricsEndpoints")
    if not isinstance(eps, list) or not eps:
        problems.append("spec.podMetricsEndpoints must be a non-empty list")
    else:
        for i, ep in enumerate(eps):
            if not isinstance(ep, dict) or not isinstance(ep.get("port"), str):
                problems.append(f"spec.podMetricsEndpoints[{i}].port must be a port name")
            elif not str(ep.get("path", "/")).startswith("/"):
                problems.append(f"spec.podMetricsEndpoints[{i}].path must start with /")
            else:
                for j, r in enumerate(ep.get("relabelings") or []):
                    if not isinstance(r, dict) or not (r.get("targetLabel") or r.get("action")):
                        problems.append(f"spec.podMetricsEndpoints[{i}].relabelings[{j}] "
                                        "needs targetLabel or action")
    known = {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel",
             "podTargetLabels", "sampleLimit", "attachMetadata", "scrapeProtocols"}
    unknown = set(spec) - known
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    return problems


def check_restricted(obj: dict[str, Any]) -> list[str]:
    """The Pod Security "restricted" rules a Deployment's pod template must meet."""
    pod = obj["spec"]["template"]["spec"]
    psc = pod.get("securityContext") or {}
    problems = []
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        sc = c.get("securityContext") or {}
        name = c.get("name")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{name}: capabilities.drop must contain ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: only NET_BIND_SERVICE may be added")
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
    return problems


def validate_rendered(subject: str, text: str, versions: list[str]) -> list[dict[str, Any]]:
    try:
        docs = load_docs(text)
    except yaml.YAMLError as e:
        record("template-yaml", subject, False, str(e))
        return []
    record("template-yaml", subject, bool(docs), f"{len(docs)} objects")
    for obj in docs:
        kind = obj.get("kind")
        name = f"{subject}: {object_name(obj)}"
        if kind == "CustomResourceDefinition" and not subject.startswith("install"):
            continue
        if kind == "ServiceMonitor":
            problems = check_service_monitor(obj)
            record("k8s-schema", name, not problems, "; ".join(problems), "shape")
            continue
        if kind == "PodMonitor":
            problems = check_pod_monitor(obj)
            record("k8s-schema", name, not problems, "; ".join(problems), "shape")
            continue
        for version, ok, detail in validate_object(obj, versions):
            record("k8s-schema", name, ok, detail, version)
        if kind == "Deployment":
            problems = check_restricted(obj)
            record("pod-security", name, not problems, "; ".join(problems), "restricted")
    return docs


def check_rbac_mirror(repo: Path, rendered: list[dict[str, Any]]) -> None:
    """Each (Cluster)Role of manifests/rbac/*.yaml has a rendered twin (same kind, name with
    the release's prefix `txpipe-operator`) with exactly the same rules, in some ci/ case."""
    roles = [o for o in rendered if o.get("kind") in ("Role", "ClusterRole")]
    for path in sorted((repo / "manifests" / "rbac").glob("*.yaml")):
        for obj in load_docs(path.read_text()):
            if obj.get("kind") not in ("Role", "ClusterRole"):
                continue
            subject = f"{path.relative_to(repo)}: {obj['kind']}/{obj['metadata']['name']}"
            twins = [r for r in roles if r["kind"] == obj["kind"]
                     and r["metadata"]["name"] == obj["metadata"]["name"]]
            same = [r for r in twins if r.get("rules") == obj.get("rules")]
            record("rbac-mirror", subject, bool(same),
                   f"{len(same)}/{len(twins)} rendered twins have the same rules" if twins
                   else "no rendered Role/ClusterRole of that name")


def lint(subject: str, chart_dir: Path, values: dict[str, Any] | None) -> list[str]:
    """`helm lint --strict`; returns the error/warning messages."""
    report = helm.lint(str(chart_dir), values, strict=True, namespace=NAMESPACE)
    bad = [m["error"].strip() for m in report["messages"] if m["severity"] >= 2]
    bad += [e.strip() for e in report.get("errors") or [] if e.strip() not in bad]
    info = [m["error"].strip() for m in report["messages"] if m["severity"] < 2]
    if subject:
        record("lint", subject, not bad, "; ".join(bad) if bad else
               ("info: " + "; ".join(info) if info else ""))
    return bad


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repo", default=str(Path(__file__).resolve().parent.parent),
        help="repository root (default: %(default)s)",
    )
    parser.add_argument(
        "--write-install-yaml", action="store_true",
        help="regenerate manifests/install.yaml and exit",
    )
    args = parser.parse_args()
    repo = Path(args.repo)
    chart_dir = repo / "charts" / "txpipe"
    install_yaml = repo / "manifests" / "install.yaml"
    if not (chart_dir / "Chart.yaml").exists():
        print(f"error: {chart_dir}/Chart.yaml not found", file=sys.stderr)
        return 2
    # No cluster is used: make sure Helm never picks up a real kubeconfig.
    os.environ["KUBECONFIG"] = os.devnull

    install_text = INSTALL_HEADER + helm_template(chart_dir, INSTALL_VALUES, include_crds=True)
    if args.write_install_yaml:
        install_yaml.write_text(install_text)
        print(f"wrote {install_yaml.relative_to(repo)} ({INSTALL_COMMAND})")
        return 0

    latest = kubernetes_validate.latest_version()
    versions = [MIN_K8S_VERSION, ".".join(latest.split(".")[:2])]
    print(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk, libhelm_c "
          f"{helm.helm_c_version()}); kubernetes-validate "
          f"{kubernetes_validate.version.__version__}: Kubernetes {versions[0]} and "
          f"{versions[1]}, strict")

    # 1 + 2. Lint and template with the defaults and each ci/ values file.
    cases: list[tuple[str, dict[str, Any] | None]] = [("defaults", None)]
    for path in sorted((chart_dir / "ci").glob("*.yaml")):
        cases.append((str(path.relative_to(repo)), yaml.safe_load(path.read_text()) or {}))
    rendered_default: list[dict[str, Any]] = []
    rendered_all: list[dict[str, Any]] = []
    for subject, values in cases:
        lint(subject, chart_dir, values)
        try:
            text = helm_template(chart_dir, values)
            with helm.Chart.load(str(chart_dir)) as chart:
                notes = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE,
                                     is_install=True).get("txpipe/templates/NOTES.txt", "")
        except helm.HelmError as e:
            record("template", subject, False, str(e))
            continue
        docs = validate_rendered(subject, text, versions)
        if values is None:
            rendered_default = docs
        rendered_all += docs
        record("notes", subject, "kubectl get txp" in notes,
               "" if notes else "NOTES.txt rendered empty")

    # RBAC mirrors manifests/rbac/: the same rules for each (Cluster)Role.
    check_rbac_mirror(repo, rendered_all)

    # 3. Bad values files.
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    with helm.Chart.load(str(chart_dir)) as chart:
        defaults = chart.values
    record("schema", "values.yaml", not list(validator.iter_errors(defaults)),
           "; ".join(e.message for e in validator.iter_errors(defaults)))
    bad_dir = chart_dir / "ci-bad"
    expected = json.loads((bad_dir / "expected.json").read_text())
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}
    present = {p.name for p in bad_dir.glob("*.yaml")}
    if set(expected) != present or not present:
        record("bad-list", "ci-bad/expected.json", False,
               f"not listed: {sorted(present - set(expected))}; "
               f"no file: {sorted(set(expected) - present)}")
    for path in sorted(bad_dir.glob("*.yaml")):
        subject = str(path.relative_to(repo))
        entry = expected.get(path.name)
        if entry is None:
            continue
        values = yaml.safe_load(path.read_text()) or {}
        errors = lint("", chart_dir, values)
        ok = any(entry["helm"] in e for e in errors)
        record("bad-helm", subject, ok,
               f"rejected: {entry['helm']}" if ok else "; ".join(errors) or "accepted by helm lint")
        with helm.Chart.load(str(chart_dir)) as chart:
            merged = chart.merge_values(values)
        messages = [e.message for e in validator.iter_errors(merged)]
        messages += [c.message for e in validator.iter_errors(merged) for c in e.context or []]
        ok = any(entry["jsonschema"] in m for m in messages)
        record("bad-jsonschema", subject, ok,
               f"rejected: {entry['jsonschema']}" if ok else "; ".join(messages) or "accepted")

    # 4. Dashboards.
    default_cms = [o for o in rendered_default if o.get("kind") == "ConfigMap"]
    has_json = bool(list((chart_dir / "dashboards").glob("*.json")))
    if not has_json:
        record("dashboards", "no dashboards/*.json", not default_cms,
               "renders nothing" if not default_cms else "rendered ConfigMaps without dashboards")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "txpipe"
        shutil.copytree(chart_dir, copy)
        sample = {"title": "sample", "uid": "txpipe-sample", "panels": [], "schemaVersion": 39}
        (copy / "dashboards" / "Sample_Dashboard.json").write_text(json.dumps(sample))
        text = helm_template(copy, {"dashboards": {"folder": "txpipe"}})
        cms = [o for o in load_docs(text) if o.get("kind") == "ConfigMap"
               and "Sample_Dashboard.json" in (o.get("data") or {})]
        problems = []
        if len(cms) != 1:
            problems.append(f"{len(cms)} ConfigMaps hold the sample dashboard")
        else:
            cm = cms[0]
            if cm["metadata"]["labels"].get("grafana_dashboard") != "1":
                problems.append("label grafana_dashboard: \"1\" missing")
            if json.loads(cm["data"]["Sample_Dashboard.json"]) != sample:
                problems.append("dashboard JSON changed on the way")
            for version, ok, detail in validate_object(cm, versions):
                if not ok:
                    problems.append(f"{version}: {detail}")
        record("dashboards", "sample dashboard (temporary copy)", not problems,
               "; ".join(problems) or f"ConfigMap {cms[0]['metadata']['name']}")
        text = helm_template(copy, {"dashboards": {"enabled": False}})
        off = [o for o in load_docs(text) if o.get("kind") == "ConfigMap"]
        record("dashboards", "dashboards.enabled=false", not off,
               f"{len(off)} ConfigMaps rendered" if off else "renders nothing")

    # `helm package`: the archive (without ci/, ci-bad/: .helmignore) renders the same.
    with tempfile.TemporaryDirectory() as tmp:
        try:
            archive = helm.package(str(chart_dir), destination=tmp)
            with tempfile.TemporaryDirectory() as unpacked:
                helm.expand(unpacked, archive)
                packed = Path(unpacked) / "txpipe"
                leaked = [p.name for p in packed.iterdir() if p.name in ("ci", "ci-bad")]
                same = helm_template(packed, None) == helm_template(chart_dir, None)
            record("package", Path(archive).name, same and not leaked,
                   f"packaged {', '.join(leaked)}" if leaked else
                   ("renders like the chart directory" if same else "renders differently"))
        except helm.HelmError as e:
            record("package", str(chart_dir.relative_to(repo)), False, str(e))

    # 5. crds/ copy.
    for src in sorted((repo / "crds").glob("*.yaml")):
        dst = chart_dir / "crds" / src.name
        same = dst.exists() and dst.read_bytes() == src.read_bytes()
        record("crds-copy", str(dst.relative_to(repo)), same,
               "" if same else f"differs from crds/{src.name}: cp crds/*.yaml charts/txpipe/crds/")
    extra = {p.name for p in (chart_dir / "crds").glob("*")} - {
        p.name for p in (repo / "crds").glob("*.yaml")}
    if extra:
        record("crds-copy", "charts/txpipe/crds", False, f"not in crds/: {sorted(extra)}")

    # 6. install.yaml.
    current = install_yaml.read_text() if install_yaml.exists() else ""
    same = current == install_text
    record("install-yaml", str(install_yaml.relative_to(repo)), same,
           INSTALL_COMMAND if same else "out of date: make install-yaml")
    validate_rendered("install.yaml", install_text, versions)

    # Report.
    w_check = max(len(r[1]) for r in ROWS)
    w_version = max(len(r[2]) for r in ROWS)
    w_subject = min(max(len(r[3]) for r in ROWS), 80)
    print(f"{'RESULT':6}  {'CHECK':{w_check}}  {'VERSION':{w_version}}  {'OBJECT':{w_subject}}  DETAIL")
    for ok, check, version, subject, detail in ROWS:
        print(f"{'PASS' if ok else 'FAIL':6}  {check:{w_check}}  {version:{w_version}}  "
              f"{subject:{w_subject}}  {detail}")
    failed = sum(1 for r in ROWS if not r[0])
    print(f"\n{len(ROWS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
