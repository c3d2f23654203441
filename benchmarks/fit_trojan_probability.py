"""Fit the trojan probability (smoothinv.population.calibration) on the stored zoo scans.

    python3 benchmarks/fit_trojan_probability.py [--write] [--summary DIR/summary.json ...]

Data (no scan is rerun; docs/benchmarks.md, "Trojan probability"):
- benchmarks/results/detect-default.json: the default scan (σ = 0.25, class screen, bf16 descent)
  of the 19 CIFAR-10 ResNet-20 and Fashion-MNIST zoo models, the score as stored;
- benchmarks/results/detect-diverse-smoothinv.json: the 18 models of the diverse zoo (plain CNN,
  VGG, PreAct-ResNet), scanned with σ ∈ {0.25, 0.5, 1} in fp32 before issue 14; each is rescored
  from its stored σ = 0.25 runs alone with today's rule, the grid the default scan runs (this
  reproduces issue 14's numbers: weakest target 3.37, largest innocent 2.14).

It prints, for the feature log(1 + score) (shipped) and the raw score: the in-sample fit and two
honest estimates of its error, leave-one-out (each model predicted by a fit on the 36 others) and
leave-one-kind-out (each architecture predicted by a fit on the other kinds). `--write` stores the
log(1 + score) fit, its data and these numbers in src/smoothinv/population/trojan_calibration.json.
`--summary` fits on the rows of `scan-many` summaries with known truth instead (a population of
your own models, scanned with the default settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from smoothinv.detection.decision import DecisionRule, class_scores
from smoothinv.population.calibration import (CALIBRATION_FILE, FEATURES, RIDGE, auroc, brier, cross_entropy,
                                              fit_logistic, leave_one_out, sigmoid)

ROOT = Path(__file__).resolve().parent
DEFAULT = ROOT / "results" / "detect-default.json"
DIVERSE = ROOT / "results" / "detect-diverse-smoothinv.json"


def default_rows() -> list[dict]:
    rows = json.loads(DEFAULT.read_text())["rows"]
    return [{"model": r["model"], "kind": r["arch"], "score": r["score"], "backdoored": r["backdoored"],
             "source": DEFAULT.name} for r in rows]


def rescored_at_025(row: dict) -> float:
    """The model's score (highest class score) from its σ = 0.25 runs alone, by today's rule."""
    labels = sorted(int(c) for c in row["classes"])
    eps = sorted({run["eps"] for c in row["classes"].values() for run in c["runs"]})
    asr = torch.tensor([[max([run["asr"] for run in row["classes"][str(c)]["runs"]
                              if run["eps"] == e and run["sigma"] == 0.25] or [0.0]) for e in eps] for c in labels],
                       dtype=torch.float64)
    return round(float(class_scores(asr, DecisionRule()).score.max()), 4)


def diverse_rows() -> list[dict]:
    rows = json.loads(DIVERSE.read_text())["rows"]
    return [{"model": r["model"], "kind": r["arch"], "score": rescored_at_025(r), "backdoored": r["backdoored"],
             "source": f"{DIVERSE.name} (sigma 0.25 runs, rescored)"} for r in rows]


def summary_rows(paths: list[Path]) -> list[dict]:
    """The scanned rows with known truth of `scan-many` summaries."""
    rows = []
    for path in paths:
        for r in json.loads(path.read_text())["rows"]:
            if r["status"] == "done" and r.get("backdoored") is not None:
                rows.append({"model": r["model"], "kind": r.get("kind") or "unknown", "score": r["score"],
                             "backdoored": r["backdoored"], "source": str(path)})
    return rows


def evaluate(rows: list[dict], feature: str) -> dict:
    f = FEATURES.get(feature)
    x = [f(r["score"]) for r in rows]
    y = [bool(r["backdoored"]) for r in rows]
    a, b = fit_logistic(x, y)
    fitted = [sigmoid(a + b * v) for v in x]
    loo = leave_one_out(x, y)
    loko = [0.0] * len(rows)
    for kind in sorted({r["kind"] for r in rows}):
        inside = [i for i, r in enumerate(rows) if r["kind"] != kind]
        ka, kb = fit_logistic([x[i] for i in inside], [y[i] for i in inside])
        for i, r in enumerate(rows):
            if r["kind"] == kind:
                loko[i] = sigmoid(ka + kb * x[i])

    def scores(p: list[float]) -> dict:
        return {"cross_entropy": round(cross_entropy(p, y), 4), "brier": round(brier(p, y), 4),
                "auroc": round(auroc([q for q, t in zip(p, y) if t], [q for q, t in zip(p, y) if not t]), 4),
                "accuracy_at_0.5": round(sum((q >= 0.5) == t for q, t in zip(p, y)) / len(y), 4)}

    return {"feature": feature, "intercept": round(a, 6), "slope": round(b, 6), "in_sample": scores(fitted),
            "leave_one_out": scores(loo), "leave_one_kind_out": scores(loko),
            "per_model": [{"model": r["model"], "fitted": round(p, 4), "leave_one_out": round(q, 4),
                           "leave_one_kind_out": round(k, 4)} for r, p, q, k in zip(rows, fitted, loo, loko)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {CALIBRATION_FILE}")
    parser.add_argument("--summary", type=Path, action="append", default=[],
                        help="fit on this scan-many summary.json instead of the stored benches (repeatable)")
    args = parser.parse_args()
    rows = summary_rows(args.summary) if args.summary else default_rows() + diverse_rows()
    prior = sum(r["backdoored"] for r in rows) / len(rows)
    base = cross_entropy([prior] * len(rows), [r["backdoored"] for r in rows])
    print(f"{len(rows)} models, {sum(r['backdoored'] for r in rows)} backdoored; constant-prior cross-entropy "
          f"{base:.4f} (p = {prior:.3f} for every model)")
    results = {name: evaluate(rows, name) for name in ("log1p_score", "score")}
    print("| feature | intercept | slope | split | cross-entropy | Brier | AUROC | accuracy at 0.5 |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for split in ("in_sample", "leave_one_out", "leave_one_kind_out"):
            s = r[split]
            print(f"| {name} | {r['intercept']:.3f} | {r['slope']:.3f} | {split} | {s['cross_entropy']:.4f} | "
                  f"{s['brier']:.4f} | {s['auroc']:.4f} | {s['accuracy_at_0.5']:.4f} |")
    shipped = results["log1p_score"]
    print("| model | kind | truth | score | p (fit) | p (leave-one-out) | p (leave-one-kind-out) |")
    print("|---|---|---|---|---|---|---|")
    for r, m in zip(rows, shipped["per_model"]):
        print(f"| {r['model']} | {r['kind']} | {'backdoored' if r['backdoored'] else 'clean'} | {r['score']:.2f} | "
              f"{m['fitted']:.3f} | {m['leave_one_out']:.3f} | {m['leave_one_kind_out']:.3f} |")
    if args.write:
        document = {
            "feature": shipped["feature"], "intercept": shipped["intercept"], "slope": shipped["slope"],
            "method": "smoothinv",
            "description": (f"logistic fit of P(backdoored) on log(1 + score) of the default scan, {len(rows)} zoo models "
                            f"(leave-one-out cross-entropy {shipped['leave_one_out']['cross_entropy']:.3f} nats, "
                            f"AUROC {shipped['leave_one_out']['auroc']:.3f})"),
            "ridge": RIDGE,
            "command": "python3 benchmarks/fit_trojan_probability.py --write"
                       + "".join(f" --summary {p}" for p in args.summary),
            "fit": {"in_sample": shipped["in_sample"], "leave_one_out": shipped["leave_one_out"],
                    "leave_one_kind_out": shipped["leave_one_kind_out"], "constant_prior_cross_entropy": round(base, 4),
                    "raw_score_alternative": {k: results["score"][k] for k in
                                              ("intercept", "slope", "in_sample", "leave_one_out", "leave_one_kind_out")}},
            "data": rows,
        }
        CALIBRATION_FILE.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {CALIBRATION_FILE}")


if __name__ == "__main__":
    main()
