"""Compare decision rules on stored detection reports, by kind of model (architecture).

    python3 benchmarks/detection_rules.py benchmarks/results/detect-cifar10-smoothinv.json \
        benchmarks/results/detect-diverse-smoothinv.json [--held-out-kinds K1,K2]

Each rule turns a report row's per-class transfer ASR (`asr_by_eps`, max over σ; rows written
since issue 12 also hold every run) into class scores; a class is flagged when its score reaches
the rule's threshold. For every rule the script prints verdicts, AUROC, target identification,
false alarms and innocent flags per kind, and a leave-one-kind-out evaluation: the threshold is
re-chosen on the other kinds (the smallest that flags no innocent class there, plus a margin)
and applied to the held-out kind. No scan is rerun: this reads what `bench detect` stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from typing import Callable

import torch

from smoothinv.detection.decision import DecisionRule, class_scores
from smoothinv.detection.decision import flagged as decision_flagged
from smoothinv.zoo import list_zoo

Scorer = Callable[[torch.Tensor], torch.Tensor]
"""asr [K classes, E eps] -> score [K]."""


@dataclass(frozen=True)
class Candidate:
    name: str
    scorer: Scorer
    rule: DecisionRule


def rows_of(paths: list[str]) -> list[dict]:
    arch = {r["name"]: r["arch"] for r in list_zoo()}
    rows = []
    for path in paths:
        for row in json.load(open(path))["rows"]:
            row.setdefault("arch", arch.get(row["model"], "unknown"))
            rows.append(row)
    return rows


def matrix(row: dict) -> tuple[list[int], torch.Tensor]:
    labels = sorted(int(c) for c in row["classes"])
    return labels, torch.tensor([row["classes"][str(c)]["asr_by_eps"] for c in labels], dtype=torch.float64)


def evaluate(rows: list[dict], scorer: Scorer, rule: DecisionRule) -> dict:
    """Verdict accuracy, AUROC of the top score, targets found, false alarms, innocent flags."""
    out = {"models": len(rows), "correct": 0, "found": 0, "backdoored": 0, "false_alarms": 0, "innocent_flags": 0}
    pos, neg, misses = [], [], []
    for row in rows:
        labels, asr = matrix(row)
        score = scorer(asr)
        flagged = {labels[i] for i in decision_flagged(score, rule)}
        top = float(score.max())
        truth = row["true_target"] if row["backdoored"] else None
        (pos if row["backdoored"] else neg).append(top)
        out["correct"] += bool(flagged) == row["backdoored"]
        if row["backdoored"]:
            out["backdoored"] += 1
            out["found"] += truth in flagged
            out["innocent_flags"] += bool(flagged - {truth})
        else:
            out["false_alarms"] += bool(flagged)
        if bool(flagged) != row["backdoored"] or (row["backdoored"] and flagged != {truth}):
            misses.append(f"{row['model']}: flagged {sorted(flagged)} top {top:.2f}")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    out["auroc"] = round(wins / (len(pos) * len(neg)), 3) if pos and neg else None
    out["misses"] = misses
    return out


def innocent_scores(rows: list[dict], scorer: Scorer, relative: float) -> list[float]:
    """Scores of every class that is not a backdoor target and passes the rule's relative bar
    (only those can be flagged, whatever the threshold)."""
    scores = []
    for row in rows:
        labels, asr = matrix(row)
        s = scorer(asr)
        top = float(s.max())
        scores += [float(v) for c, v in zip(labels, s)
                   if not (row["backdoored"] and c == row["true_target"]) and float(v) >= relative * top]
    return scores


def margins(rows: list[dict], cand: Candidate) -> dict[str, list]:
    innocent, targets = [], []
    for row in rows:
        labels, asr = matrix(row)
        s = cand.scorer(asr)
        top = float(s.max())
        for c, v in zip(labels, s.tolist()):
            if row["backdoored"] and c == row["true_target"]:
                targets.append((round(v, 2), row["model"]))
            elif v >= cand.rule.relative * top:
                innocent.append((round(v, 2), row["model"], c))
    return {"innocent": sorted(innocent, reverse=True)[:3], "targets": sorted(targets)[:4]}


def leave_one_kind_out(rows: list[dict], cand: Candidate, margin: float) -> dict[str, dict]:
    """Per kind: the threshold that flags no innocent class on the other kinds (+ margin), applied to it."""
    kinds = sorted({r["arch"] for r in rows})
    result = {}
    for kind in kinds:
        calibration = [r for r in rows if r["arch"] != kind]
        threshold = max(innocent_scores(calibration, cand.scorer, cand.rule.relative)) + margin
        rule = replace(cand.rule, threshold=threshold)
        result[kind] = {"threshold": round(threshold, 3), **evaluate([r for r in rows if r["arch"] == kind], cand.scorer, rule)}
    return result


def current(rule: DecisionRule = DecisionRule()) -> Scorer:
    """The shipped score: robust z of the mean transfer ASR over the ε ladder."""
    return lambda asr: class_scores(asr, rule).score


def best_eps(rule: DecisionRule = DecisionRule()) -> Scorer:
    """The score before issue 12: the highest per-ε robust z over the ε where the ASR reaches min_asr."""
    def score(asr: torch.Tensor) -> torch.Tensor:
        z = class_scores(asr, rule).z
        counted = torch.where(asr >= rule.min_asr, z, torch.full_like(z, -torch.inf)).max(dim=1).values
        return torch.where(torch.isinf(counted), z.max(dim=1).values.clamp(max=0.0), counted)
    return score


CANDIDATES = [
    Candidate("best single eps, threshold 4 (the rule before issue 12)", best_eps(), DecisionRule(4.0, relative=0.0)),
    Candidate("best single eps, threshold 4, relative bar 0.5", best_eps(), DecisionRule(4.0)),
    Candidate("best single eps, spread floor 0.075, threshold 4, relative bar", best_eps(DecisionRule(spread_floor=0.075)), DecisionRule(4.0)),
    Candidate("area over the eps ladder, threshold 3, relative bar (the rule now)", current(), DecisionRule()),
]


def _auroc(pos: list[float], neg: list[float]) -> float | None:
    if not pos or not neg:
        return None
    return round(sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg)), 3)


def class_separation(rows: list[dict]) -> dict[str, dict]:
    """How well single per-class features separate backdoor targets from innocent classes (class-level
    AUROC), per ε column: the transfer ASR, its z-score across classes, and the energy concentration
    of the best run's perturbation (rows that stored runs only)."""
    features: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        labels, asr = matrix(row)
        z = class_scores(asr, DecisionRule()).z
        for i, c in enumerate(labels):
            target = row["backdoored"] and c == row["true_target"]
            runs = row["classes"][str(c)].get("runs", [])
            ladder = sorted({r["eps"] for r in runs})
            for e in range(asr.shape[1]):
                values = {f"asr@eps{e + 1}": float(asr[i, e]), f"z@eps{e + 1}": float(z[i, e])}
                at = [r for r in runs if r["eps"] == ladder[e]] if runs else []
                if at:
                    values[f"concentration@eps{e + 1}"] = max(at, key=lambda r: r["asr"])["concentration"]
                for name, v in values.items():
                    features.setdefault(name, ([], []))[0 if target else 1].append(v)
    return {name: {"auroc": _auroc(pos, neg), "targets": len(pos), "innocent": len(neg)}
            for name, (pos, neg) in sorted(features.items())}


def redecide(report: dict, rule: DecisionRule = DecisionRule()) -> dict:
    """The report with every row's class scores, flags and verdict recomputed from its stored
    per-class ASRs under `rule` (the synthesis and the ASRs do not depend on the rule), and the
    summary recomputed; settings["rule"] records the rule."""
    from smoothinv.bench.detect import summarize

    rows = []
    for row in report["rows"]:
        labels, asr = matrix(row)
        scores = class_scores(asr, rule).score
        hits = [labels[i] for i in decision_flagged(scores, rule)]
        classes = {str(c): {**row["classes"][str(c)], "score": round(float(v), 4)} for c, v in zip(labels, scores)}
        rows.append({**row, "classes": classes, "flagged": hits, "verdict": "backdoored" if hits else "clean",
                     "score": round(float(scores.max()), 4), "correct": bool(hits) == row["backdoored"],
                     "target_found": (row["true_target"] in hits) if row["backdoored"] else None})
    return {**report, "settings": {**report["settings"], "rule": rule.describe()}, "rows": rows,
            "summary": summarize(rows, report["settings"]["method"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+")
    parser.add_argument("--margin", type=float, default=0.5, help="added to the calibration kinds' largest innocent score")
    parser.add_argument("--redecide", metavar="OUT", help="write the one report given, re-decided under the current rule, to OUT")
    args = parser.parse_args()
    if args.redecide:
        if len(args.reports) != 1:
            parser.error("--redecide takes exactly one report")
        with open(args.reports[0]) as f:
            report = redecide(json.load(f))
        with open(args.redecide, "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report["summary"]))
        return
    rows = [r for r in rows_of(args.reports) if r.get("classes")]
    for cand in CANDIDATES:
        print(f"## {cand.name}: largest innocent scores (that pass the relative bar), smallest target scores")
        print("   ", margins(rows, cand))
    print("## class-level separation (target vs innocent classes), all rows given")
    for name, res in class_separation(rows).items():
        print(f"  {name}: {json.dumps(res)}")
    for cand in CANDIDATES:
        print(f"## {cand.name}")
        for kind in sorted({r["arch"] for r in rows}):
            print(f"  {kind}: {json.dumps(evaluate([r for r in rows if r['arch'] == kind], cand.scorer, cand.rule))}")
        print("  leave one kind out:")
        for kind, res in leave_one_kind_out(rows, cand, args.margin).items():
            print(f"    {kind}: {json.dumps(res)}")


if __name__ == "__main__":
    sys.exit(main())
