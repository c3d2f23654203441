"""The default scan of a few zoo models, in this process, one after the other: flagged classes, score,
seconds (the `bench speed` inputs). Used to check that a change to the descent's arithmetic (BatchNorm
folding, docs/benchmarks.md) leaves the verdicts and scores where they were.

    python3 benchmarks/default_scan_check.py --out benchmarks/results/default-scan-clean.json \
        cifar10-clean-s0 cifar10-clean-s1 cifar10-clean-s2 fmnist-clean-s0 fmnist-clean-s1 fmnist-clean-s2
"""

from __future__ import annotations

import argparse
import json

from smoothinv.bench.speed import _outcome, _timed_scan
from smoothinv.detection.scan import ScanSettings
from smoothinv.zoo import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args()
    manifest, rows = read_manifest(), []
    for name in args.models:
        result, seconds = _timed_scan(manifest[name], ScanSettings(seed=0), None, 500, 0)
        rows.append({"model": name, **_outcome(result, seconds, manifest[name])})
        print(f"{name}: flagged {rows[-1]['flagged']}, score {rows[-1]['score']}, {seconds:.0f} s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
