#!/usr/bin/env python3
"""Prints the README configuration table from the binaries' --help (clap long help).

Usage: scripts/config_table.py [bin-dir]   (default target/release)
"""
import re
import subprocess
import sys

BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release"


def options(binary):
    argv = binary.split()
    out = subprocess.run([f"{BIN}/{argv[0]}", *argv[1:], "--help"], capture_output=True, text=True).stdout
    rows, cur = [], None
    for line in out.splitlines():
        m = re.match(r"^\s{2,6}(?:-\w, )?(--[\w-]+)", line)
        if m and not line.strip().startswith("["):
            if cur:
                rows.append(cur)
            cur = {"flag": m.group(1), "desc": "", "env": "", "default": ""}
            continue
        if cur is None:
            continue
        t = line.strip()
        if t.startswith("[env: "):
            cur["env"] = t[6:].split("=")[0].rstrip("]")
        elif t.startswith("[default: "):
            cur["default"] = t[10:-1]
        elif t and not t.startswith("[") and not cur["desc"]:
            cur["desc"] = t
    if cur:
        rows.append(cur)
    for r in rows:
        # Short help puts "[env: X=] [default: Y]" at the end of the description line.
        m = re.search(r"\s*\[env: ([^=\]]+)(?:=[^\]]*)?\]", r["desc"])
        if m:
            r["env"] = r["env"] or m.group(1)
            r["desc"] = r["desc"].replace(m.group(0), "")
        m = re.search(r"\s*\[default: ([^\]]*)\]", r["desc"])
        if m:
            r["default"] = r["default"] or m.group(1)
            r["desc"] = r["desc"].replace(m.group(0), "")
        r["desc"] = r["desc"].strip()
    return [r for r in rows if r["flag"] not in ("--help", "--version")]


print("| binary | flag | env | default | meaning |")
print("|---|---|---|---|---|")
for b in ["txpipe run", "txpipe-broker", "txpipe-worker", "txpipe-producer"]:
    for r in options(b):
        d = r["desc"].replace("|", "\\|")
        env = f"`{r['env']}`" if r["env"] else "—"
        print(f"| {b} | `{r['flag']}` | {env} | {r['default'] or '—'} | {d} |")
