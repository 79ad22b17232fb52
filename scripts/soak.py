#!/usr/bin/env python3
"""Soak benchmark (issue 12): N transactions (default 10,000,000) through local mode with the
default settings (3 broker replicas, 4 workers at 0.5 CPU), sampling the resident memory (RSS)
of every broker process every few seconds from /proc, and printing per broker the peak and the
slope of RSS over the second half of the run (least squares, MiB per minute): a flat memory
profile has a slope near 0 and a peak under the target (256 MiB per replica).

Usage: scripts/soak.py [--count N] [--interval-s S] [--txpipe target/release/txpipe]
                       [--out DIR] [-- extra txpipe run args]
Prints a table and writes DIR/soak.json (samples and figures) plus txpipe's own report.
A figure, not a test: it exits with txpipe's status (non-zero when the audit fails) and never
judges the memory figures itself.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def ppid(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def brokers(parent):
    """{pid: label} of the txpipe-broker processes started by process `parent` (not brokers
    of other runs or tests), labelled by their data directory's name."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"txpipe-broker") or ppid(pid) != parent:
            continue
        label = f"pid-{pid}"
        for i, a in enumerate(argv):
            value = None
            if a == b"--data-dir" and i + 1 < len(argv):
                value = argv[i + 1]
            elif a.startswith(b"--data-dir="):
                value = a.split(b"=", 1)[1]
            if value:
                label = os.path.basename(value.decode().rstrip("/")) or label
        out[int(pid)] = label
    return out


def rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def slope(points):
    """Least-squares slope of (t_s, mib) points, MiB per minute; None with fewer than 3."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(p[0] for p in points) / n
    mv = sum(p[1] for p in points) / n
    var = sum((p[0] - mt) ** 2 for p in points)
    if var == 0:
        return None
    cov = sum((p[0] - mt) * (p[1] - mv) for p in points)
    return cov / var * 60.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=10_000_000)
    ap.add_argument("--interval-s", type=float, default=5.0)
    ap.add_argument("--txpipe", default="target/release/txpipe")
    ap.add_argument("--out", default=None)
    ap.add_argument("extra", nargs="*")
    args = ap.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="txpipe-soak.")
    os.makedirs(out, exist_ok=True)
    cmd = [args.txpipe, "run", "--count", str(args.count), "--progress", "never",
           "--report-json", os.path.join(out, "report.json"), *args.extra]
    print("soak:", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd)
    samples = {}  # label -> [(t_s, mib)]
    while proc.poll() is None:
        t = time.monotonic() - t0
        for pid, label in brokers(proc.pid).items():
            m = rss_mib(pid)
            if m is not None:
                samples.setdefault(label, []).append((round(t, 1), round(m, 1)))
        time.sleep(args.interval_s)
    elapsed = time.monotonic() - t0
    figures = {}
    print(f"soak: {args.count:,} transactions in {elapsed:.0f} s "
          f"({args.count / elapsed:,.0f} tx/s including start-up), txpipe exit {proc.returncode}")
    print(f"{'process':<10} {'samples':>7} {'peak MiB':>9} {'last MiB':>9} {'slope MiB/min (2nd half)':>25}")
    for label in sorted(samples):
        pts = samples[label]
        half = [p for p in pts if p[0] >= elapsed / 2]
        s = slope(half)
        figures[label] = {
            "samples": len(pts),
            "peak_mib": max(p[1] for p in pts),
            "last_mib": pts[-1][1],
            "slope_mib_per_min_second_half": None if s is None else round(s, 2),
        }
        f = figures[label]
        st = "n/a" if s is None else f"{s:+.2f}"
        print(f"{label:<10} {f['samples']:>7} {f['peak_mib']:>9.1f} {f['last_mib']:>9.1f} {st:>25}")
    with open(os.path.join(out, "soak.json"), "w") as f:
        json.dump({"count": args.count, "elapsed_s": round(elapsed, 1), "exit": proc.returncode,
                   "figures": figures, "samples": samples}, f, indent=1)
    print(f"soak: samples and figures in {out}/soak.json, txpipe's report in {out}/report.json")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
