"""A detection report beside the stored exhaustive ones, per model, both under the current rule.

    python3 benchmarks/compare_detection.py benchmarks/results/detect-default.json \
        benchmarks/results/detect-cifar10-smoothinv.json benchmarks/results/detect-fmnist-smoothinv.json

The exhaustive reports were written under earlier decision rules; their per-class ASRs
(`asr_by_eps`) are rescored here with today's rule (detection.decision), as
benchmarks/detection_rules.py does, so both columns are judged alike. Prints a markdown table
and each kind's summary (verdict accuracy, AUROC, targets found, seconds per model).
"""
import json, sys, torch
from smoothinv.detection.decision import DecisionRule, class_scores, flagged
from smoothinv.bench.detect import summarize
rule = DecisionRule()
new = json.load(open(sys.argv[1]))
old_rows = {}
for f in sys.argv[2:]:
    for r in json.load(open(f))["rows"]:
        labels = sorted(int(c) for c in r["classes"])
        asr = torch.tensor([r["classes"][str(c)]["asr_by_eps"] for c in labels], dtype=torch.float64)
        s = class_scores(asr, rule).score
        fl = [labels[i] for i in flagged(s, rule)]
        old_rows[r["model"]] = {**r, "flagged": fl, "score": round(float(s.max()), 4), "verdict": "backdoored" if fl else "clean",
                                "correct": bool(fl) == r["backdoored"], "target_found": (r["true_target"] in fl) if r["backdoored"] else None}
print("| model | truth | exhaustive: flagged, score, s | default: flagged, score, s |")
print("|---|---|---|---|")
for r in sorted(new["rows"], key=lambda r: r["model"]):
    o = old_rows.get(r["model"])
    truth = f"target {r['true_target']}" if r["backdoored"] else "clean"
    os_ = f"{o['flagged']}, {o['score']:.2f}, {o['seconds']:.0f}" if o else "–"
    fb = " (σ 0.12 fallback)" if r.get("fallback_from") else ""
    print(f"| {r['model']} | {truth} | {os_} | {r['flagged']}, {r['score']:.2f}, {r['seconds']:.0f}{fb} |")
for kind in ("resnet20", "small_cnn"):
    nr = [r for r in new["rows"] if r.get("arch") == kind]
    orr = [old_rows[r["model"]] for r in nr if r["model"] in old_rows]
    print(kind, "default", json.dumps(summarize(nr, "smoothinv")), "\n", kind, "exhaustive", json.dumps(summarize(orr, "smoothinv")))
