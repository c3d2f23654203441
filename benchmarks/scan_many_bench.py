"""Time `smoothinv scan-many` on zoo models: sequential in one process against 2 workers x 1 thread on
Ray (and on the local pool), a `kill -9` of the driver half way and the rerun, and oversubscribed
threads (docs/benchmarks.md, "Scanning a population").

    SMOOTHINV_DATA=/work/shared/data python3 benchmarks/scan_many_bench.py --work /tmp/scan-many \\
        --out benchmarks/results/scan-many.json [--skip-local]

Every run is the real command line on the zoo folder (`--model` picks the subset) with the default
scan, so what is timed is what a user runs. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ZOO = Path(__file__).resolve().parents[1] / "src" / "smoothinv" / "zoo" / "store"
SUBSET = ("fmnist-badnets", "fmnist-blind-p", "fmnist-blind-s", "fmnist-clean-s0", "fmnist-clean-s1",
          "fmnist-clean-s2", "fmnist-htba", "cifar10-badnets", "cifar10-clean-s0")
OVERSUBSCRIBED = ("fmnist-badnets", "fmnist-clean-s0")
STABLE = ("model", "verdict", "targets", "score", "trojan_probability", "error", "status")


def command(out: Path, *args: str, models: tuple[str, ...] = SUBSET) -> list[str]:
    return ["smoothinv", "scan-many", str(ZOO), "--out", str(out), *(a for m in models for a in ("--model", m)), *args]


def run(cmd: list[str], log: Path) -> float:
    """Run `cmd` to the end; its wall time in seconds."""
    started = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return round(time.perf_counter() - started, 1)


def rows(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["rows"]


def stable(out: Path) -> list[dict]:
    return [{k: r[k] for k in STABLE} for r in rows(out)]


def killed_half_way(work: Path, args: list[str]) -> dict:
    """Start the run, `kill -9` the driver once half the models are stored, rerun; times and what was lost."""
    out = work / "killed"
    cmd = command(out, *args)
    log = open(work / "killed-1.log", "w")
    started = time.perf_counter()
    process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    half = (len(SUBSET) + 1) // 2
    while process.poll() is None and len(list((out / "models").glob("*/row.json"))) < half:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = round(time.perf_counter() - started, 1)
    stored = sorted(p.parent.name for p in (out / "models").glob("*/row.json"))
    time.sleep(2)  # workers and Ray notice the driver is gone
    second = run(cmd, work / "killed-2.log")
    rerun_log = (work / "killed-2.log").read_text()
    plan = next((line for line in rerun_log.splitlines() if "model(s);" in line), "")
    return {"killed_after_s": first, "stored_before_kill": stored, "rerun_s": second, "total_s": round(first + second, 1),
            "rerun_plan": plan, "rows": stable(out)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied)")
    parser.add_argument("--out", type=Path, required=True, help="results JSON")
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    report: dict = {"models": list(SUBSET), "cores": len(os.sched_getaffinity(0)), "python": sys.version.split()[0]}

    def save() -> None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")

    report["sequential"] = {"command": "--backend inline --threads 2",
                            "seconds": run(command(args.work / "seq", "--backend", "inline", "--threads", "2"),
                                           args.work / "seq.log"), "rows": stable(args.work / "seq")}
    report["sequential"]["per_model_s"] = {r["model"]: r["seconds"] for r in rows(args.work / "seq")}
    save()
    ray = ["--backend", "ray", "--workers", "2", "--threads", "1"]
    report["ray"] = {"command": " ".join(ray), "seconds": run(command(args.work / "ray", *ray), args.work / "ray.log"),
                     "rows": stable(args.work / "ray")}
    report["ray"]["per_model_s"] = {r["model"]: r["seconds"] for r in rows(args.work / "ray")}
    report["ray"]["speedup"] = round(report["sequential"]["seconds"] / report["ray"]["seconds"], 2)
    report["ray"]["same_as_sequential"] = report["ray"]["rows"] == report["sequential"]["rows"]
    save()
    report["killed"] = killed_half_way(args.work, ray)
    report["killed"]["same_as_uninterrupted"] = report["killed"]["rows"] == report["ray"]["rows"]
    save()
    over = {}
    for threads in ("1", "2"):
        out = args.work / f"threads-{threads}"
        cmd = command(out, "--backend", "local", "--workers", "2", "--threads", threads, "--steps", "50",
                      "--model-timeout", "300", models=OVERSUBSCRIBED)
        over[f"2x{threads}"] = {"seconds": run(cmd, args.work / f"threads-{threads}.log"),
                                "per_model_s": {r["model"]: r["seconds"] for r in rows(out)},
                                "errors": [r["error"] for r in rows(out) if r["error"]]}
    over["slowdown"] = round(over["2x2"]["seconds"] / over["2x1"]["seconds"], 1)
    report["oversubscribed"] = {"models": list(OVERSUBSCRIBED), "settings": "--steps 50, local pool, 2 workers", **over}
    save()
    if not args.skip_local:
        local = ["--backend", "local", "--workers", "2", "--threads", "1"]
        report["local"] = {"command": " ".join(local),
                           "seconds": run(command(args.work / "local", *local), args.work / "local.log"),
                           "rows": stable(args.work / "local")}
        report["local"]["speedup"] = round(report["sequential"]["seconds"] / report["local"]["seconds"], 2)
        report["local"]["same_as_sequential"] = report["local"]["rows"] == report["sequential"]["rows"]
        save()
    shutil.copy(args.work / "ray" / "summary.json", args.out.with_name(args.out.stem + "-summary.json"))
    print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "rows"})
                      for k, v in report.items()}, indent=2))


if __name__ == "__main__":
    main()
