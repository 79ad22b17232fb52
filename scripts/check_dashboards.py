#!/usr/bin/env python3
"""Checks the Grafana dashboards in charts/txpipe/dashboards/ against live metrics.

What it does (bounded, about a minute; nothing needs a cluster):

1. Lints every dashboard JSON: schemaVersion, a `datasource` variable of type `datasource`
   (query `prometheus`), every panel, target and query variable on `${datasource}` (no
   hard-coded data source UID), multi/All variables with allValue `.*` (so queries also match
   series without the `namespace`/`pipeline` labels, as outside Kubernetes), unique panel ids.
2. Starts a small local run (`txpipe run`: 3 brokers, 4 workers) in a temporary directory and
   finds the admin ports of its brokers and workers from their command lines
   (`--admin-listen=...` of the run's child processes, via /proc).
3. Starts Prometheus (/usr/bin/prometheus) on 127.0.0.1 with a temporary config scraping those
   ports every second and a temporary storage directory, and waits (bounded) for samples.
4. `promtool check metrics` on every target's /metrics body: any problem fails, except the
   ones in ALLOWED_LINT (each with its reason).
5. Runs every panel target's PromQL against Prometheus' /api/v1/query (dashboard variables
   replaced by their All value `.*`, `$__rate_interval` by 10s, `$__range` by 5m) while the
   run is producing, and requires a result with at least one finite value. The targets that
   read cAdvisor or kube-state-metrics series are listed in NEEDS_K8S (with the reason): they
   must still parse and evaluate, but can only be empty here. A target that reads such a series
   without being listed fails, and so does a listed entry that no longer exists.
6. Prints a PASS/FAIL table per panel target, stops everything it started and exits 1 on any
   failure.

Usage: python3 scripts/check_dashboards.py [--txpipe target/release/txpipe] [--keep]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "charts" / "txpipe" / "dashboards"

# Panel targets that read series only a Kubernetes cluster has (cAdvisor in the kubelet,
# kube-state-metrics). Key: (dashboard uid, panel title, refId) -> reason.
NEEDS_K8S: dict[tuple[str, str, str], str] = {
    ("txpipe-workers", "CPU vs limit (process metrics)", "B"):
        "kube-state-metrics kube_pod_container_resource_limits (target A, process_cpu_seconds_total, "
        "is checked; outside Kubernetes the limit is the panel's 0.5 threshold line)",
    ("txpipe-workers", "CPU per worker vs limit", "A"):
        "cAdvisor container_cpu_usage_seconds_total (the same without Kubernetes: "
        "CPU vs limit (process metrics), target A)",
    ("txpipe-workers", "CPU per worker vs limit", "B"):
        "kube-state-metrics kube_pod_container_resource_limits",
    ("txpipe-workers", "CPU throttling", "A"):
        "cAdvisor container_cpu_cfs_throttled_periods_total / container_cpu_cfs_periods_total",
    ("txpipe-workers", "Worker replicas vs HPA", "A"):
        "kube-state-metrics kube_deployment_status_replicas",
    ("txpipe-workers", "Worker replicas vs HPA", "B"):
        "kube-state-metrics kube_deployment_status_replicas_available",
    ("txpipe-workers", "Worker replicas vs HPA", "C"):
        "kube-state-metrics kube_horizontalpodautoscaler_status_desired_replicas",
    ("txpipe-workers", "Worker replicas vs HPA", "D"):
        "kube-state-metrics kube_horizontalpodautoscaler_spec_min_replicas",
    ("txpipe-workers", "Worker replicas vs HPA", "E"):
        "kube-state-metrics kube_horizontalpodautoscaler_spec_max_replicas",
}
K8S_METRIC = re.compile(r"\b(?:kube_|container_)[a-zA-Z0-9_]+")

# promtool lint problems accepted: (metric name, substring of the message) -> reason.
ALLOWED_LINT: dict[tuple[str, str], str] = {}

# Grafana built-ins, replaced for the instant queries.
BUILTINS = {
    "__rate_interval": "10s",
    "__interval": "2s",
    "__range": "5m",
    "__range_s": "300",
}


def log(msg: str) -> None:
    print(f"check_dashboards: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")


class Deadline:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# ---------------------------------------------------------------------------------- JSON lint
def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def lint_dashboard(path: Path, d: dict) -> list[str]:
    errs = []
    ds = {"type": "prometheus", "uid": "${datasource}"}
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        errs.append(f"schemaVersion {d.get('schemaVersion')!r} < 36")
    if not d.get("uid") or not d.get("title"):
        errs.append("missing uid or title")
    variables = d.get("templating", {}).get("list", [])
    dsv = [v for v in variables if v.get("name") == "datasource"]
    if len(dsv) != 1 or dsv[0].get("type") != "datasource" or dsv[0].get("query") != "prometheus":
        errs.append("needs one variable `datasource` of type datasource, query prometheus")
    for v in variables:
        if v.get("type") == "query":
            if v.get("datasource") != ds:
                errs.append(f"variable {v.get('name')}: datasource must be {ds}")
            if v.get("includeAll") and v.get("allValue") != ".*":
                errs.append(f"variable {v.get('name')}: includeAll needs allValue '.*'")
    ids = set()
    for p in walk_panels(d.get("panels", [])):
        if p.get("id") in ids:
            errs.append(f"duplicate panel id {p.get('id')}")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            errs.append(f"panel {p.get('title')!r}: no gridPos")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != ds:
            errs.append(f"panel {p.get('title')!r}: datasource must be {ds}")
        if not p.get("targets"):
            errs.append(f"panel {p.get('title')!r}: no targets")
        refs = set()
        for t in p.get("targets", []):
            if t.get("datasource") != ds:
                errs.append(f"panel {p.get('title')!r} {t.get('refId')}: datasource must be {ds}")
            if not t.get("expr") or not t.get("refId") or t["refId"] in refs:
                errs.append(f"panel {p.get('title')!r}: target without expr or with a bad refId")
            refs.add(t.get("refId"))

    # No hard-coded data source UID anywhere (the built-in annotation is Grafana's own).
    def scan(o):
        if isinstance(o, dict):
            src = o.get("datasource")
            if isinstance(src, dict) and src.get("uid") not in ("${datasource}", "-- Grafana --"):
                errs.append(f"hard-coded datasource uid {src.get('uid')!r}")
            if isinstance(src, str) and src not in ("${datasource}", "$datasource"):
                errs.append(f"hard-coded datasource {src!r}")
            for x in o.values():
                scan(x)
        elif isinstance(o, list):
            for x in o:
                scan(x)

    scan(d.get("panels", []))
    scan(variables)
    return errs


def substitute(expr: str, names: set[str]) -> tuple[str, list[str]]:
    unknown = []

    def repl(m):
        name = m.group(1) or m.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in names:
            return ".*"
        unknown.append(name)
        return m.group(0)

    out = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", repl, expr)
    return out, unknown


# ---------------------------------------------------------------------------------- processes
def children_admin(ppid: int) -> dict[str, str]:
    """role (broker-<i>/worker-<i> or the binary name + pid) -> admin address of `ppid`'s children."""
    found = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            status = Path(f"/proc/{e}/status").read_text()
            if f"\nPPid:\t{ppid}\n" not in status:
                continue
            argv = Path(f"/proc/{e}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode("utf-8", "replace") for a in argv if a]
        if not argv:
            continue
        exe = os.path.basename(argv[0])
        kind = "broker" if exe.startswith("txpipe-broker") else "worker" if exe.startswith("txpipe-worker") else None
        if kind is None:
            continue
        admin = name = None
        for i, a in enumerate(argv):
            for flag in ("--admin-listen", "--node-id", "--name"):
                val = None
                if a.startswith(flag + "="):
                    val = a.split("=", 1)[1]
                elif a == flag and i + 1 < len(argv):
                    val = argv[i + 1]
                if val is None:
                    continue
                if flag == "--admin-listen":
                    admin = val
                elif flag == "--node-id":
                    name = f"broker-{val}"
                else:
                    name = val
        if admin:
            found[name or f"{kind}-pid{e}"] = (kind, admin)
    return found


def stop(proc: subprocess.Popen | None, what: str, group: bool = False, grace: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    log(f"stopping {what} (pid {proc.pid})")
    try:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
        proc.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


# ---------------------------------------------------------------------------------- Prometheus
class Prom:
    def __init__(self, base: str):
        self.base = base

    def query(self, q: str) -> tuple[bool, object]:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            code, body = http_get(url, timeout=10)
            j = json.loads(body)
        except (OSError, ValueError) as e:
            return False, f"request failed: {e}"
        if j.get("status") != "success":
            return False, f"{j.get('errorType')}: {j.get('error')}"
        return True, j["data"]

    def series(self, match: str) -> list[dict]:
        url = f"{self.base}/api/v1/series?" + urllib.parse.urlencode({"match[]": match})
        try:
            code, body = http_get(url, timeout=10)
            j = json.loads(body)
        except (OSError, ValueError):
            return []
        return j.get("data", []) if j.get("status") == "success" else []

    def scalar(self, q: str) -> float | None:
        ok, data = self.query(q)
        if not ok or not isinstance(data, dict):
            return None
        res = data.get("result", [])
        if data.get("resultType") == "vector" and res:
            return float(res[0]["value"][1])
        if data.get("resultType") == "scalar":
            return float(res[1])
        return None


def finite_values(data: dict) -> tuple[int, int]:
    """(series, series with a finite value) of a query result."""
    rt, res = data.get("resultType"), data.get("result")
    if rt == "vector":
        vals = [float(s["value"][1]) for s in res]
    elif rt == "matrix":
        vals = [float(v[1]) for s in res for v in s["values"][-1:]]
    elif rt == "scalar":
        vals = [float(res[1])]
    else:
        vals = []
    return len(vals), sum(1 for v in vals if math.isfinite(v))


# ---------------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--txpipe", default=str(ROOT / "target" / "release" / "txpipe"))
    ap.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    ap.add_argument("--promtool", default=shutil.which("promtool") or "/usr/bin/promtool")
    ap.add_argument("--count", type=int, default=400_000, help="transactions of the local run")
    ap.add_argument("--rate", type=int, default=10_000, help="producer rate, transactions/s")
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--timeout", type=float, default=170.0, help="bound of the whole check, s")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--lint-only", action="store_true", help="only the JSON checks (no run)")
    args = ap.parse_args()
    started = time.monotonic()
    deadline = Deadline(args.timeout)
    failures: list[str] = []

    # 1. JSON lint.
    boards = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        d = json.loads(path.read_text())
        errs = lint_dashboard(path, d)
        for e in errs:
            failures.append(f"{path.name}: {e}")
        boards.append((path, d))
    if not boards:
        log(f"no dashboards in {DASHBOARDS}")
        return 1
    log(f"{len(boards)} dashboards, JSON lint: {len(failures)} problem(s)")
    if args.lint_only:
        for f in failures:
            print(f"FAIL {f}")
        print("PASSED" if not failures else "FAILED")
        return 1 if failures else 0

    for tool in (args.txpipe, args.prometheus, args.promtool):
        if not (os.path.isfile(tool) and os.access(tool, os.X_OK)):
            log(f"missing executable {tool} (build with `make release`; apt-get install prometheus)")
            return 1

    tmp = Path(tempfile.mkdtemp(prefix="txpipe-dashboards-"))
    run = prom = None
    run_out = prom_out = None
    rows: list[tuple[str, str, str, str, str]] = []
    lint_report: list[str] = []
    run_rc = None
    try:
        # 2. The local run.
        run_out = open(tmp / "run.out", "w")
        cmd = [
            args.txpipe, "run", f"--count={args.count}", f"--rate={args.rate}",
            f"--brokers={args.brokers}", f"--workers={args.workers}", "--progress=never",
            f"--data-dir={tmp / 'run'}", "--stall-timeout-s=60",
            # Plaintext: Prometheus here scrapes the brokers' admin ports over plain HTTP (with
            # TLS they serve HTTPS and want the run's CA); the metric names are the same.
            "--insecure",
        ]
        log("starting " + " ".join(cmd[1:]))
        run = subprocess.Popen(cmd, stdout=run_out, stderr=subprocess.STDOUT, cwd=ROOT,
                               start_new_session=True)
        want = args.brokers + args.workers
        targets: dict[str, tuple[str, str]] = {}
        while deadline.left() > 0 and run.poll() is None:
            targets = children_admin(run.pid)
            if len(targets) >= want:
                break
            time.sleep(0.2)
        if len(targets) < want:
            raise RuntimeError(f"found {len(targets)} of {want} broker/worker admin ports "
                               f"(run exit {run.poll()}; see {tmp / 'run.out'})")
        for role, (kind, addr) in sorted(targets.items()):
            log(f"  {role}: {kind} admin http://{addr}/metrics")

        # 3. Prometheus.
        port = free_port()
        by_kind: dict[str, list[str]] = {"broker": [], "worker": []}
        for kind, addr in targets.values():
            by_kind[kind].append(addr)
        cfg = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s",
               "  evaluation_interval: 1s", "scrape_configs:"]
        for kind, addrs in by_kind.items():
            cfg += [f"  - job_name: txpipe-{kind}", "    static_configs:",
                    "      - targets: [" + ", ".join(f"'{a}'" for a in sorted(addrs)) + "]"]
        (tmp / "prometheus.yml").write_text("\n".join(cfg) + "\n")
        prom_out = open(tmp / "prometheus.log", "w")
        prom = subprocess.Popen(
            [args.prometheus, f"--config.file={tmp / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            stdout=prom_out, stderr=subprocess.STDOUT, cwd=tmp)
        api = Prom(f"http://127.0.0.1:{port}")
        while deadline.left() > 0:
            if prom.poll() is not None:
                raise RuntimeError(f"prometheus exited {prom.returncode}: {(tmp / 'prometheus.log').read_text()[-2000:]}")
            try:
                if http_get(api.base + "/-/ready", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        log(f"prometheus ready on {api.base} after {time.monotonic() - started:.1f} s")

        # Samples: every target up for >= 5 scrapes and decisions flowing.
        n = len(targets)
        ok = False
        while deadline.left() > 0:
            up = api.scalar("count(count_over_time(up[30s]) >= 5 and on (instance) up == 1)") or 0
            rate = api.scalar("sum(rate(txpipe_worker_decisions_total[10s]))") or 0
            if up >= n and rate > 0:
                ok = True
                break
            time.sleep(0.5)
        if not ok:
            raise RuntimeError("no samples from every target within the time bound")
        log(f"samples from {n} targets, decisions flowing, after {time.monotonic() - started:.1f} s")

        # 4. promtool check metrics on every body.
        seen: dict[str, set[str]] = {}
        for role, (kind, addr) in sorted(targets.items()):
            code, body = http_get(f"http://{addr}/metrics", timeout=5)
            if code != 200:
                failures.append(f"{role}: GET /metrics answered {code}")
                continue
            p = subprocess.run([args.promtool, "check", "metrics"], input=body, text=True,
                               capture_output=True, timeout=30)
            lines = [l.strip() for l in (p.stdout + p.stderr).splitlines() if l.strip()]
            if p.returncode != 0 and not lines:
                lines = [f"promtool exit {p.returncode}"]
            for l in lines:
                seen.setdefault(l, set()).add(kind)
        for l, kinds in sorted(seen.items()):
            metric = l.split(" ", 1)[0]
            why = next((r for (m, sub), r in ALLOWED_LINT.items() if m == metric and sub in l), None)
            tag = f"allowed ({why})" if why else "FAIL"
            lint_report.append(f"  promtool [{','.join(sorted(kinds))}] {l} -> {tag}")
            if not why:
                failures.append(f"promtool: {l}")

        # 5. Every panel target.
        declared = set()
        for path, d in boards:
            uid = d["uid"]
            names = {v["name"] for v in d.get("templating", {}).get("list", [])}
            # The variables' own queries: the metric must have series; the label may be absent.
            for v in d.get("templating", {}).get("list", []):
                if v.get("type") != "query":
                    continue
                m = re.match(r"label_values\((.*),\s*(\w+)\)$", v.get("definition", ""))
                if not m:
                    failures.append(f"{uid}: variable {v['name']}: not label_values(metric, label)")
                    continue
                sel, _ = substitute(m.group(1), names)
                series = api.series(sel)
                values = sorted({s.get(m.group(2)) for s in series if s.get(m.group(2))})
                status = "PASS" if series else "FAIL"
                detail = (f"values {values}" if values else
                          f"no `{m.group(2)}` label here (outside Kubernetes); All = .* matches")
                if not series:
                    failures.append(f"{uid}: variable {v['name']}: no series for {sel}")
                    detail = f"no series for {sel}"
                rows.append((uid, f"$ {v['name']}", "var", status, detail))
            for p in walk_panels(d.get("panels", [])):
                if p.get("type") == "row":
                    continue
                for t in p.get("targets", []):
                    key = (uid, p["title"], t["refId"])
                    expr, unknown = substitute(t["expr"], names)
                    if unknown:
                        failures.append(f"{key}: unknown variables {unknown}")
                        rows.append((uid, p["title"], t["refId"], "FAIL", f"unknown variables {unknown}"))
                        continue
                    reason = NEEDS_K8S.get(key)
                    if reason:
                        declared.add(key)
                    ok, data = api.query(expr)
                    if not ok:
                        failures.append(f"{key}: {data}")
                        rows.append((uid, p["title"], t["refId"], "FAIL", str(data)[:120]))
                        continue
                    nseries, nfinite = finite_values(data)
                    if reason:
                        status = "NEEDS-K8S"
                        detail = f"{reason}; parses, {nseries} series here"
                    elif K8S_METRIC.search(t["expr"]):
                        status = "FAIL"
                        detail = "reads a Kubernetes-only series but is not listed in NEEDS_K8S"
                    elif nfinite:
                        status, detail = "PASS", f"{nseries} series"
                    elif nseries:
                        status, detail = "FAIL", f"{nseries} series, all NaN"
                    else:
                        status, detail = "FAIL", "empty result"
                    if status == "FAIL":
                        failures.append(f"{key}: {detail}")
                    rows.append((uid, p["title"], t["refId"], status, detail))
        for key in sorted(set(NEEDS_K8S) - declared):
            failures.append(f"NEEDS_K8S entry {key} matches no panel target")

        # 6. Let the run finish (it must pass its audit), within the bound.
        stop(prom, "prometheus")
        while deadline.left() > 0 and run.poll() is None:
            time.sleep(0.5)
        run_rc = run.poll()
        if run_rc is None:
            log("the run did not finish within the time bound; stopping it")
            stop(run, "txpipe run", group=True)
        elif run_rc != 0:
            failures.append(f"txpipe run exited {run_rc} (see {tmp / 'run.out'})")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        failures.append(f"error: {e}")
    finally:
        stop(prom, "prometheus")
        stop(run, "txpipe run", group=True)
        for f in (run_out, prom_out):
            if f:
                f.close()

    # Report.
    w = max([len(r[1]) for r in rows] + [10])
    print(f"{'dashboard':<16} {'panel':<{w}} {'ref':<4} {'result':<9} detail")
    for uid, title, ref, status, detail in rows:
        print(f"{uid:<16} {title:<{w}} {ref:<4} {status:<9} {detail}")
    for l in lint_report:
        print(l)
    npass = sum(1 for r in rows if r[3] == "PASS" and r[2] != "var")
    nk8s = sum(1 for r in rows if r[3] == "NEEDS-K8S")
    nfail = sum(1 for r in rows if r[3] == "FAIL" and r[2] != "var")
    panels = sum(1 for _, d in boards for p in walk_panels(d["panels"]) if p.get("type") != "row")
    ntargets = sum(1 for r in rows if r[2] != "var")
    print(f"\n{len(boards)} dashboards, {panels} panels, {ntargets} targets: "
          f"{npass} PASS, {nk8s} NEEDS-K8S (listed), {nfail} FAIL; promtool problems: "
          f"{len(lint_report)}; run exit {run_rc}; {time.monotonic() - started:.1f} s")
    if failures:
        print("\nFAILED:")
        for f in failures:
            print(f"  {f}")
        print(f"(temporary files kept in {tmp})")
        return 1
    if args.keep:
        print(f"(temporary files kept in {tmp})")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print("PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
