#!/usr/bin/env python3
"""Kubernetes checks of the txpipe operator without a cluster (`make k8s`).

1. The generated CRD (`txpipe-operator crd`) passes kubernetes-validate (strict).
2. Every example pipeline (manifests/examples/*.yaml) validates against the CRD's
   openAPIV3Schema with jsonschema (Draft 2020-12). The schema is translated: `nullable`
   becomes a `null` type, `x-kubernetes-int-or-string` an integer|string `anyOf`, and objects
   get `additionalProperties: false` unless `x-kubernetes-preserve-unknown-fields` (the API
   server's strict field validation, kubectl's default); other `x-kubernetes-*` keys and
   `format` are ignored.
3. The bad examples (manifests/examples/bad/*.yaml) marked `"layer": "schema"` in
   bad/expected.json are rejected by that schema with the expected message; those marked
   `"layer": "cel"` must pass the schema (their CEL rules are evaluated by
   `cargo test -p txpipe-operator --test crd`).
4. Every object `txpipe-operator render -f FILE --service-monitor-available --tls-secrets`
   prints for each example passes kubernetes-validate in strict mode for Kubernetes 1.30 and
   for the newest version kubernetes-validate knows; with `spec.tls.mode: managed` that includes
   the CA and certificate Secrets (issued from a throw-away CA). ServiceMonitors (a CRD of the
   Prometheus Operator) and cert-manager `Certificate`s (cert-manager.io/v1), which are not in
   the Kubernetes schemas, get a shape check instead: required fields, types, allowed values
   and no unknown spec field (`check_certificate`, written from the cert-manager v1 API
   reference).
6. Every environment variable the operator renders into a container is one that the container's
   program accepts: each name must appear as `[env: NAME=...]` (or `[env: NAME]`, value hidden)
   in `<program> --help` (the
   programs are looked up next to the operator binary; `cargo build --workspace`), so a renamed
   flag cannot leave a pipeline silently running on a default.

7. The certificates of `spec.tls.mode: managed` work with the real programs: the Secrets that
   `render --tls-secrets` prints for manifests/examples/tls-managed.yaml (issued by the
   operator's code from a throw-away CA) start a TLS broker with broker-0's certificate; a
   producer with the producer certificate produces (dialling `localhost`, one of the broker's
   DNS names), one with the worker certificate is refused PermissionDenied (its principal
   `spiffe://txpipe/worker` may not produce transactions).

Prints one PASS/FAIL row per check and exits 1 on any failure (2 on usage errors).

Usage: scripts/validate_k8s.py [OPERATOR_BINARY] [--repo DIR]
Requires: kubernetes-validate, jsonschema, PyYAML (scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

MIN_K8S_VERSION = "1.30"
CRD_GROUP_VERSION = "txpipe.io/v1alpha1"
CRD_KIND = "TransactionPipeline"


@dataclass
class Row:
    check: str
    subject: str
    version: str
    ok: bool
    detail: str = ""


ROWS: list[Row] = []


def record(check: str, subject: str, ok: bool, detail: str = "", version: str = "-") -> None:
    detail = " | ".join(line.strip() for line in detail.splitlines() if line.strip())
    if len(detail) > 400:
        detail = detail[:397] + "..."
    ROWS.append(Row(check, subject, version, ok, detail))


def run(binary: Path, *args: str) -> str:
    """Runs the operator binary and returns stdout; raises with stderr on failure."""
    proc = subprocess.run(
        [str(binary), *args], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{binary} {' '.join(args)}` exited {proc.returncode}: {proc.stderr.strip()}"
        )
    return proc.stdout


RENDER_FLAGS = ["--service-monitor-available", "--tls-secrets"]


def render(binary: Path, path: Path) -> str:
    """`render -f PATH`, as if the ServiceMonitor CRD were installed and with the managed TLS
    Secrets (so their shapes are checked too); drops a flag an older binary does not know."""
    flags = list(RENDER_FLAGS)
    while True:
        try:
            return run(binary, "render", "-f", str(path), *flags)
        except RuntimeError as e:
            unknown = [f for f in flags if f in str(e)]
            if not unknown:
                raise
            flags.remove(unknown[0])


class K8sLoader(yaml.SafeLoader):
    """PyYAML's safe loader without YAML 1.1 timestamps: like the Kubernetes YAML reader
    (sigs.k8s.io/yaml), it keeps `2027-01-19T12:00:00Z` (e.g. an annotation) a string."""


K8sLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=K8sLoader) if d is not None]


# --------------------------------------------------------------------------------------------
# CRD schema -> JSON schema
# --------------------------------------------------------------------------------------------


def translate(node: Any) -> Any:
    """Translates one OpenAPI v3 (Kubernetes structural) schema node to JSON Schema 2020-12."""
    if isinstance(node, list):
        return [translate(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "format"):
            continue
        if key in ("properties",):
            out[key] = {k: translate(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = translate(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = translate(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        branches = [{"type": "integer"}, {"type": "string"}]
        if node.get("nullable"):
            branches.append({"type": "null"})
        out.pop("type", None)
        out["anyOf"] = branches
    elif node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") == "object" and "additionalProperties" not in node and not preserve:
        # Strict field validation: a field the schema does not declare is an error.
        out["additionalProperties"] = False
    return out


def crd_json_schema(crd: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of the CRD's storage version, with apiVersion/kind/metadata added (the
    API server validates those itself)."""
    versions = crd["spec"]["versions"]
    version = next((v for v in versions if v.get("storage")), versions[0])
    schema = translate(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    group_version = f"{crd['spec']['group']}/{version['name']}"
    schema.setdefault("properties", {})
    schema["properties"]["apiVersion"] = {"const": group_version}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    schema["properties"]["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 63}},
        "required": ["name"],
    }
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind"})
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def schema_errors(validator: jsonschema.Validator, doc: dict[str, Any]) -> list[str]:
    errors = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
        path = ".".join(str(p) for p in e.absolute_path) or "<root>"
        errors.append(f"{path}: {e.message}")
    return errors


# --------------------------------------------------------------------------------------------
# Rendered objects
# --------------------------------------------------------------------------------------------


def monitor_header(obj: dict[str, Any], api_version: str = "monitoring.coreos.com/v1"
                   ) -> tuple[list[str], dict[str, Any] | None]:
    """Problems in the apiVersion/metadata of a custom object of `api_version` (default
    monitoring.coreos.com/v1), and its spec (None when it is not an object)."""
    problems = []
    if obj.get("apiVersion") != api_version:
        problems.append(f"apiVersion {obj.get('apiVersion')!r}")
    meta = obj.get("metadata") or {}
    if not meta.get("name") or not meta.get("namespace"):
        problems.append("metadata.name and metadata.namespace are required")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return problems + ["spec must be an object"], None
    return problems, spec


def check_service_monitor(obj: dict[str, Any]) -> list[str]:
    """Minimal shape of a monitoring.coreos.com/v1 ServiceMonitor."""
    problems, spec = monitor_header(obj)
    if spec is None:
        return problems
    labels = (spec.get("selector") or {}).get("matchLabels")
    if not isinstance(labels, dict) or not labels:
        problems.append("spec.selector.matchLabels must be a non-empty map")
    elif not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        problems.append("spec.selector.matchLabels must map strings to strings")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        problems.append("spec.endpoints must be a non-empty list")
    else:
        for i, ep in enumerate(endpoints):
            if not isinstance(ep, dict) or not isinstance(ep.get("port"), str):
                problems.append(f"spec.endpoints[{i}].port must be a port name")
            elif "path" in ep and not str(ep["path"]).startswith("/"):
                problems.append(f"spec.endpoints[{i}].path must start with /")
    known = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels",
             "podTargetLabels", "sampleLimit", "scrapeProtocols", "attachMetadata"}
    unknown = set(spec) - known
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    return problems


CERT_USAGES = {"signing", "digital signature", "content commitment", "key encipherment",
               "key agreement", "data encipherment", "cert sign", "crl sign", "encipher only",
               "decipher only", "any", "server auth", "client auth", "code signing",
               "email protection", "s/mime", "ipsec end system", "ipsec tunnel", "ipsec user",
               "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"}
CERT_SPEC_FIELDS = {"secretName", "secretTemplate", "issuerRef", "commonName", "subject",
                    "dnsNames", "uris", "ipAddresses", "emailAddresses", "duration",
                    "renewBefore", "renewBeforePercentage", "privateKey", "usages", "isCA",
                    "keystores", "literalSubject", "revisionHistoryLimit",
                    "additionalOutputFormats", "nameConstraints", "otherNames",
                    "encodeUsagesInRequest", "signatureAlgorithm"}


def check_certificate(obj: dict[str, Any]) -> list[str]:
    """Shape of a cert-manager.io/v1 Certificate (kubernetes-validate has no schema for it)."""
    problems, spec = monitor_header(obj, "cert-manager.io/v1")
    if spec is None:
        return problems
    unknown = set(spec) - CERT_SPEC_FIELDS
    if unknown:
        problems.append(f"unknown spec fields {sorted(unknown)}")
    if not isinstance(spec.get("secretName"), str) or not spec["secretName"]:
        problems.append("spec.secretName must be a non-empty string")
    issuer = spec.get("issuerRef") or {}
    if not isinstance(issuer.get("name"), str) or not issuer["name"]:
        problems.append("spec.issuerRef.name must be a non-empty string")
    if issuer.get("kind", "Issuer") not in ("Issuer", "ClusterIssuer"):
        problems.append(f"spec.issuerRef.kind {issuer.get('kind')!r}")
    for key in ("dnsNames", "uris"):
        if key in spec and not (isinstance(spec[key], list)
                                and all(isinstance(v, str) and v for v in spec[key])):
            problems.append(f"spec.{key} must be a list of non-empty strings")
    if not any(spec.get(k) for k in ("commonName", "dnsNames", "uris")):
        problems.append("one of spec.commonName, spec.dnsNames, spec.uris is required")
    duration = spec.get("duration")
    if duration is not None and not (isinstance(duration, str) and duration[:-1].isdigit()
                                     and duration[-1] in "hms"):
        problems.append(f"spec.duration {duration!r} is not a Go duration like 2160h")
    pct = spec.get("renewBeforePercentage")
    if pct is not None and not (isinstance(pct, int) and 0 < pct < 100):
        problems.append("spec.renewBeforePercentage must be an integer between 1 and 99")
    key = spec.get("privateKey") or {}
    if key.get("algorithm", "RSA") not in ("RSA", "ECDSA", "Ed25519"):
        problems.append(f"spec.privateKey.algorithm {key.get('algorithm')!r}")
    if key.get("rotationPolicy", "Always") not in ("Always", "Never"):
        problems.append(f"spec.privateKey.rotationPolicy {key.get('rotationPolicy')!r}")
    bad_usages = [u for u in spec.get("usages") or [] if u not in CERT_USAGES]
    if bad_usages:
        problems.append(f"unknown spec.usages {bad_usages}")
    return problems


def validate_object(obj: dict[str, Any], versions: list[str]) -> list[tuple[str, bool, str]]:
    """[(version, ok, detail)] for one rendered object."""
    if obj.get("kind") == "ServiceMonitor":
        problems = check_service_monitor(obj)
        return [("shape", not problems, "; ".join(problems))]
    if obj.get("kind") == "Certificate":
        problems = check_certificate(obj)
        return [("shape", not problems, "; ".join(problems))]
    results = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
            results.append((version, True, ""))
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path) or "<root>"
            results.append((version, False, f"{path}: {e.message}"))
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError,
                kubernetes_validate.utils.VersionNotSupportedError) as e:
            results.append((version, False, getattr(e, "message", str(e))))
    return results


def object_name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


# Variables rendered into a container that are not flags of its program: the broker's pod name,
# only referenced as $(TXPIPE_POD_NAME) in its BROKER_TLS_* paths (spec.tls).
ENV_NOT_FLAGS: set[str] = {"TXPIPE_POD_NAME"}
_HELP: dict[str, str] = {}


def program_help(bin_dir: Path, program: str) -> str | None:
    """`program --help` from bin_dir (cached), or None when the program is not built."""
    if program not in _HELP:
        path = bin_dir / program
        if not path.exists():
            return None
        _HELP[program] = subprocess.run(
            [str(path), "--help"], capture_output=True, text=True, check=False).stdout
    return _HELP[program]


def check_env(bin_dir: Path, rel: Path, obj: dict[str, Any]) -> None:
    """Check 6: every env name of every container is accepted by its program."""
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    for c in (pod.get("containers") or []) + (pod.get("initContainers") or []):
        command = c.get("command") or []
        if not command or not str(command[0]).startswith("txpipe"):
            continue
        program = Path(str(command[0])).name
        names = [e["name"] for e in c.get("env") or [] if e.get("name") not in ENV_NOT_FLAGS]
        subject = f"{rel}: {object_name(obj)} container {c.get('name')}"
        help_text = program_help(bin_dir, program)
        if help_text is None:
            record("env", subject, False,
                   f"{bin_dir / program} not found (cargo build --workspace)")
            continue
        # `[env: NAME=value]`, or `[env: NAME]` for a flag whose value is hidden (a key).
        unknown = [n for n in names
                   if f"[env: {n}=" not in help_text and f"[env: {n}]" not in help_text]
        record("env", subject, not unknown,
               f"not accepted by {program}: {unknown}" if unknown
               else f"{len(names)} variables accepted by {program}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_managed_tls(binary: Path, example: Path) -> None:
    """Check 7: the managed-mode certificates against a real broker and producer."""
    bin_dir = binary.parent
    broker, producer = bin_dir / "txpipe-broker", bin_dir / "txpipe-producer"
    subject = f"{example.name}: broker-0 + producer certificates"
    if not broker.exists() or not producer.exists():
        record("tls", subject, False, f"{broker} or {producer} not found (cargo build --workspace)")
        return
    secrets = {o["metadata"]["name"]: o for o in load_docs(render(binary, example))
               if o.get("kind") == "Secret"}
    name = next(iter(secrets.values()))["metadata"]["name"].removesuffix("-ca")
    with tempfile.TemporaryDirectory() as tmp:
        files: dict[str, dict[str, str]] = {}
        for secret_name, obj in secrets.items():
            for key, b64 in (obj.get("data") or {}).items():
                path = Path(tmp) / f"{secret_name}.{key}"
                path.write_bytes(base64.b64decode(b64))
                path.chmod(0o600)
                files.setdefault(secret_name, {})[key] = str(path)
        b = files[f"{name}-broker-0-tls"]
        port = free_port()
        log_path = Path(tmp) / "broker.log"
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                [str(broker), "--listen", f"127.0.0.1:{port}",
                 "--admin-listen", f"127.0.0.1:{free_port()}",
                 "--peer-listen", f"127.0.0.1:{free_port()}", "--data-dir", f"{tmp}/data",
                 "--tls-cert-file", b["tls.crt"], "--tls-key-file", b["tls.key"],
                 "--tls-ca-file", b["ca.crt"]],
                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            # Serving once a stream has a leader (either log line, whichever comes first).
            while not any(m in log_path.read_text()
                          for m in ("leader changed", "leader: delivery started")):
                if proc.poll() is not None or time.monotonic() > deadline:
                    why = (f"exited with status {proc.returncode}" if proc.poll() is not None
                           else "no leader within 60 s")
                    record("tls", subject, False, f"broker did not start ({why}): "
                           + log_path.read_text()[-600:])
                    return
                time.sleep(0.2)

            def produce(identity: str) -> subprocess.CompletedProcess[str]:
                c = files[f"{name}-{identity}-tls"]
                return subprocess.run(
                    [str(producer), "--brokers", f"localhost:{port}", "--count", "20",
                     "--progress", "never", "--tls-ca-file", c["ca.crt"],
                     "--tls-cert-file", c["tls.crt"], "--tls-key-file", c["tls.key"]],
                    capture_output=True, text=True, timeout=60, check=False,
                    # A throw-away PAN key (64 hex characters): producers refuse to run
                    # without one.
                    env={**os.environ, "TXPIPE_PAN_KEY": "7e" * 32})

            ok = produce("producer")
            record("tls", f"{example.name}: producer certificate produces", ok.returncode == 0,
                   ok.stderr[-300:] if ok.returncode else "20 transactions acknowledged")
            refused = produce("worker")
            denied = refused.returncode != 0 and "PermissionDenied" in refused.stderr
            record("tls", f"{example.name}: worker certificate may not produce", denied,
                   refused.stderr.strip().splitlines()[-1][-200:] if refused.stderr.strip()
                   else f"exit {refused.returncode}")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "binary", nargs="?", default="target/debug/txpipe-operator",
        help="the txpipe-operator binary (default: %(default)s)",
    )
    parser.add_argument(
        "--repo", default=str(Path(__file__).resolve().parent.parent),
        help="repository root holding manifests/examples (default: %(default)s)",
    )
    args = parser.parse_args()
    binary = Path(args.binary)
    repo = Path(args.repo)
    examples_dir = repo / "manifests" / "examples"
    bad_dir = examples_dir / "bad"
    if not binary.exists():
        print(f"error: {binary} not found (cargo build -p txpipe-operator)", file=sys.stderr)
        return 2

    latest = kubernetes_validate.latest_version()
    versions = [MIN_K8S_VERSION, ".".join(latest.split(".")[:2])]
    print(f"kubernetes-validate {kubernetes_validate.version.__version__}: "
          f"Kubernetes {versions[0]} and {versions[1]} (newest known), strict")

    # 1. The CRD itself.
    crd_docs = load_docs(run(binary, "crd"))
    crd = next((d for d in crd_docs if d.get("kind") == "CustomResourceDefinition"), None)
    if crd is None:
        print("error: `crd` printed no CustomResourceDefinition", file=sys.stderr)
        return 1
    for version, ok, detail in validate_object(crd, versions):
        record("crd", object_name(crd), ok, detail, version)
    schema = crd_json_schema(crd)
    validator = jsonschema.Draft202012Validator(schema)

    # 2. Good examples against the CRD schema, 4. their rendered objects.
    examples = sorted(examples_dir.glob("*.yaml"))
    if not examples:
        record("examples", str(examples_dir), False, "no example manifests found")
    for path in examples:
        rel = path.relative_to(repo)
        docs = load_docs(path.read_text())
        for doc in docs:
            errors = schema_errors(validator, doc)
            subject = f"{rel} ({(doc.get('metadata') or {}).get('name')})"
            record("crd-schema", subject, not errors, "; ".join(errors))
        try:
            rendered = load_docs(render(binary, path))
        except RuntimeError as e:
            record("render", str(rel), False, str(e))
            continue
        if not rendered:
            record("render", str(rel), False, "rendered no objects")
        wants_monitor = any(
            ((d.get("spec") or {}).get("monitoring") or {}).get("serviceMonitor") for d in docs
        )
        if wants_monitor and not any(o.get("kind") == "ServiceMonitor" for o in rendered):
            print(f"note: {rel} asks for a ServiceMonitor but `render -f` printed none "
                  "(ServiceMonitor CRD assumed absent); its shape check is skipped")
        for obj in rendered:
            for version, ok, detail in validate_object(obj, versions):
                record("k8s-schema", f"{rel}: {object_name(obj)}", ok, detail, version)
            check_env(binary.parent, rel, obj)

    # 7. Managed-mode certificates against the real broker and producer.
    tls_example = examples_dir / "tls-managed.yaml"
    if tls_example.exists():
        check_managed_tls(binary, tls_example)

    # 5. The operator's own install manifests (RBAC, Deployment), also strict.
    for path in sorted((repo / "manifests" / "rbac").glob("*.yaml")) + sorted(
            (repo / "manifests" / "operator").glob("*.yaml")):
        rel = path.relative_to(repo)
        for obj in load_docs(path.read_text()):
            for version, ok, detail in validate_object(obj, versions):
                record("install", f"{rel}: {object_name(obj)}", ok, detail, version)

    # 3. Bad examples.
    expected_path = bad_dir / "expected.json"
    expected = json.loads(expected_path.read_text())
    expected = {k: v for k, v in expected.items() if not k.startswith("_")}
    bad_files = sorted(bad_dir.glob("*.yaml"))
    listed, present = set(expected), {p.name for p in bad_files}
    if listed != present:
        record("bad-list", str(expected_path.relative_to(repo)), False,
               f"not listed: {sorted(present - listed)}; no file: {sorted(listed - present)}")
    for path in bad_files:
        rel = path.relative_to(repo)
        entry = expected.get(path.name)
        if entry is None:
            continue
        docs = load_docs(path.read_text())
        errors = [e for doc in docs for e in schema_errors(validator, doc)]
        layer = entry.get("layer")
        if layer == "schema":
            needle = entry.get("schemaMessage", "")
            ok = bool(errors) and any(needle in e for e in errors)
            detail = "; ".join(errors) if errors else "accepted by the schema"
            record("bad-schema", str(rel), ok,
                   detail if not ok else f"rejected: {errors[0]}")
        elif layer == "cel":
            record("bad-cel", str(rel), not errors,
                   "schema accepts it; CEL rule checked by cargo test --test crd"
                   if not errors else f"schema already rejects a CEL-layer file: {errors}")
        else:
            record("bad-list", str(rel), False, f"unknown layer {layer!r} in expected.json")

    # Report.
    w_check = max(len(r.check) for r in ROWS)
    w_subject = min(max(len(r.subject) for r in ROWS), 70)
    w_version = max(len(r.version) for r in ROWS)
    print(f"{'RESULT':6}  {'CHECK':{w_check}}  {'VERSION':{w_version}}  {'OBJECT':{w_subject}}  DETAIL")
    for r in ROWS:
        result = "PASS" if r.ok else "FAIL"
        print(f"{result:6}  {r.check:{w_check}}  {r.version:{w_version}}  "
              f"{r.subject:{w_subject}}  {r.detail}")
    failed = [r for r in ROWS if not r.ok]
    print(f"\n{len(ROWS) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
