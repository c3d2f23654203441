"""Backdoored CLIPs (issue 16): SmoothInv's Table-2 protocol, scan verdicts and repairs on the CLIP zoo.

    python3 benchmarks/clip_bench.py table2 --out benchmarks/results/clip-table2.json
    python3 benchmarks/clip_bench.py scan --out benchmarks/results/clip-scan.json
    python3 benchmarks/clip_bench.py repair --out benchmarks/results/clip-repair.json
    python3 benchmarks/clip_bench.py rounds --rounds 3 [--embedding-weight W] --out benchmarks/results/clip-rounds.json
    python3 benchmarks/clip_bench.py inputs --out DIR     # the scan's and the repair's inputs as files for the CLI

table2: for each backdoored CLIP zoo model, SmoothInv inverts toward the true target from 10 seeded
CIFAR-10 test images (bench.table2's picks, held-out set and protocol: the paper's ε×σ grid scaled
to 32x32, every config run to its last step); the best ASR per image, and the best over σ at each ε
(the paper's Appendix A reports ε = 5 and ε = 10 separately).
scan: the default `smoothinv scan` (detection.scan, ScanSettings(); a zero-shot CLIP declares σ = 1)
of every CLIP zoo model from one seeded test image, transfer measured on 500 other test images;
`--sigma` scans at other noise levels instead.
repair: each backdoored model repaired on 1,000 seeded CIFAR-10 training images by InverTune alone
(its own target identification), by InverTune given the default scan's findings, and by
SmoothInv-trigger unlearning (the scan's findings); zero-shot clean accuracy and true-trigger ASR
measured before and after on the first 2,000 test images.
Run with OMP_NUM_THREADS=1; every JSON records the command that wrote it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from smoothinv.bench.table2 import held_out, pick_images
from smoothinv.clip_zoo import list_clip_zoo, load_clip_zoo_model
from smoothinv.data.datasets import load_dataset
from smoothinv.detection import ScanSettings, scan
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.sweep import Grid, run_sweep
from smoothinv.repair import Findings, Probe, build_repair, measure
from smoothinv.repair.findings import scan_result_findings
from smoothinv.repair.invertune import ActivationTuning, InverTune

PAPER_APPENDIX_A = {"eps5": 0.7316, "eps10": 0.9351}
"""SmoothInv on a backdoored zero-shot CLIP, from single ImageNet images (the paper's Appendix A)."""
PAPER_INVERTUNE = {"asr_reduction": 0.9787, "clean_accuracy_cost": 0.0307}
"""InverTune's average ASR reduction and clean-accuracy cost (NDSS 2026)."""


def _models(names: list[str], backdoored_only: bool) -> list[dict[str, Any]]:
    records = [r for r in list_clip_zoo() if not names or r["name"] in names]
    return [r for r in records if r.get("attack") or not backdoored_only]


def table2(args: argparse.Namespace) -> dict[str, Any]:
    x, y = load_dataset("cifar10").split(train=False)
    grid = Grid.for_shape(x.shape[1:])
    spec = method_spec("smoothinv")
    rows = []
    for record in _models(args.model, backdoored_only=True):
        zm = load_clip_zoo_model(record["name"])
        target = record["target"]
        picks = pick_images(y, target, None, args.images, args.seed)
        x_clean, y_clean = held_out(x, y, picks, target, None, args.clean_images)
        started = time.perf_counter()
        best, by_eps = [], {e: [] for e in grid.eps}
        for i in picks:
            sweep = run_sweep(zm.classifier, x[i], target, x_clean, y_clean, grid, method=spec, seed=args.seed,
                              racing=None)
            best.append(sweep.best.asr)
            for e in grid.eps:
                by_eps[e].append(max(r.asr for r in sweep.runs if abs(float(r.result.config["eps"]) - e) < 1e-9))
            print(f"{record['name']} image {i}: best ASR {best[-1]:.1%}", flush=True)
        rows.append({"model": record["name"], "target": target, "asr": round(sum(best) / len(best), 4),
                     "asr_per_image": [round(a, 4) for a in best],
                     "asr_by_eps": {f"{e:.4f}": round(sum(v) / len(v), 4) for e, v in by_eps.items()},
                     "true_trigger_asr": record["backdoor_asr"], "images": len(picks),
                     "seconds_per_image": round((time.perf_counter() - started) / len(picks), 1)})
    return {"grid": {"eps": list(grid.eps), "sigma": list(grid.sigmas)}, "paper_appendix_a": PAPER_APPENDIX_A,
            "rows": rows}


def _scan_inputs(seed: int, count: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = load_dataset("cifar10").split(train=False)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    return x[order[0]], x[order[1:1 + count]], y[order[1:1 + count]]


def scans(args: argparse.Namespace) -> dict[str, Any]:
    image, clean_x, clean_y = _scan_inputs(args.seed)
    rows = []
    for record in _models(args.model, backdoored_only=False):
        zm = load_clip_zoo_model(record["name"])
        started = time.perf_counter()
        settings = ScanSettings(seed=args.seed)
        if args.sigma:
            settings = replace(settings, sigmas=tuple(args.sigma), model_sigmas=False)
        result = scan(zm.classifier, [image], clean_x, clean_y, 10, settings)
        scores = {c.label: round(float(c.score), 3) for c in result.classes if c.score is not None}
        rows.append({"model": record["name"], "true_target": record.get("target"), "verdict": result.verdict,
                     "flagged": result.targets, "scores": scores, "sigmas": list(result.sigmas),
                     "eps": list(result.eps), "asr_by_eps": {c.label: [round(a, 4) for a in c.asr_by_eps]
                                                             for c in result.classes},
                     "seconds": round(time.perf_counter() - started, 1)})
        print(f"{record['name']}: {result.verdict} {result.targets} ({rows[-1]['seconds']}s)", flush=True)
    return {"rows": rows}


def _findings_from_scan(name: str, seed: int) -> Findings:
    """Rerun the model's default scan (seeded, so it is the one clip-scan.json recorded) for its triggers."""
    image, clean_x, clean_y = _scan_inputs(seed)
    return scan_result_findings(scan(load_clip_zoo_model(name).classifier, [image], clean_x, clean_y, 10,
                                     ScanSettings(seed=seed)))


def repairs(args: argparse.Namespace) -> dict[str, Any]:
    train_x, train_y = load_dataset("cifar10").split(train=True)
    test_x, test_y = load_dataset("cifar10").split(train=False)
    pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
    tune_x, tune_y = train_x[pick], train_y[pick]
    eval_x, eval_y = test_x[:args.eval_images], test_y[:args.eval_images]
    rows = []
    for record in _models(args.model, backdoored_only=True):
        zm = load_clip_zoo_model(record["name"])
        probe = Probe("true trigger", zm.attack.trigger((3, 32, 32)), record["target"])
        before = measure(zm.classifier, eval_x, eval_y, [probe])
        findings = _findings_from_scan(record["name"], args.seed)
        for method in args.method:
            if method != "invertune" and not findings.targets:
                rows.append({"model": record["name"], "method": method, "skipped": "the scan flagged no class"})
                continue
            repair = (InverTune() if method == "invertune" else InverTune(findings) if method == "invertune-scan"
                      else build_repair(method, findings))
            repaired = repair(zm.classifier, tune_x, tune_y, seed=args.seed)
            after = measure(repaired.model, eval_x, eval_y, [probe])
            b, a = before.asr["true trigger"], after.asr["true trigger"]
            row = {"model": record["name"], "method": method, "target": record["target"],
                   "scan_targets": list(findings.targets),
                   "clean_accuracy_before": round(before.clean_accuracy, 4),
                   "clean_accuracy_after": round(after.clean_accuracy, 4),
                   "asr_before": round(b, 4), "asr_after": round(a, 4),
                   "asr_reduction": round((b - a) / b, 4) if b > 0 else None,
                   "seconds": round(repaired.seconds, 1),
                   "details": {k: v for k, v in repaired.details.items() if k in
                               ("identified_target", "identification", "recipe")}}
            if method.startswith("invertune"):
                row["details"]["rounds"] = [{"inverted_trigger_mask_l1": r["inversion"]["mask_l1"],
                                             **{k: r["tuning"][k] for k in ("impact", "layers", "best_loss")}}
                                            for r in repaired.details["rounds"]]
            rows.append(row)
            print(f"{record['name']} {method}: ASR {b:.1%} -> {a:.1%}, accuracy {before.clean_accuracy:.1%} -> "
                  f"{after.clean_accuracy:.1%} ({repaired.seconds:.0f}s)", flush=True)
    return {"train_images": args.train_images, "eval_images": args.eval_images, "paper_invertune": PAPER_INVERTUNE,
            "rows": rows}


def rounds(args: argparse.Namespace) -> dict[str, Any]:
    """InverTune told the true target, one round of inversion and tuning at a time (each round
    `InverTune(target=..., rounds=1)` on the previous round's model, seeded seed + round, as
    `InverTune(rounds=N)` runs them), measured after every round: what the round count and the
    tuning weights buy."""
    train_x, train_y = load_dataset("cifar10").split(train=True)
    test_x, test_y = load_dataset("cifar10").split(train=False)
    pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]
    tune_x, tune_y = train_x[pick], train_y[pick]
    eval_x, eval_y = test_x[:args.eval_images], test_y[:args.eval_images]
    tuning = ActivationTuning(embedding_weight=args.embedding_weight, feature_weight=args.feature_weight)
    rows = []
    for record in _models(args.model, backdoored_only=True):
        zm = load_clip_zoo_model(record["name"])
        target = record["target"]
        probe = Probe("true trigger", zm.attack.trigger((3, 32, 32)), target)
        before = measure(zm.classifier, eval_x, eval_y, [probe])
        model, after_rounds = zm.classifier, []
        for round_ in range(args.rounds):
            repair = InverTune(target=target, rounds=1, tuning=tuning)
            repaired = repair(model, tune_x, tune_y, seed=args.seed + round_)
            model = repaired.model
            after = measure(model, eval_x, eval_y, [probe, Probe("inverted", repair.inverted[-1], target)])
            after_rounds.append({"asr": round(after.asr["true trigger"], 4),
                                 "inverted_trigger_asr": round(after.asr["inverted"], 4),
                                 "clean_accuracy": round(after.clean_accuracy, 4),
                                 "seconds": round(repaired.seconds, 1)})
            print(f"{record['name']} round {round_ + 1}: ASR {after.asr['true trigger']:.1%}, accuracy "
                  f"{after.clean_accuracy:.1%} ({repaired.seconds:.0f}s)", flush=True)
        rows.append({"model": record["name"], "target": target, "asr_before": round(before.asr["true trigger"], 4),
                     "clean_accuracy_before": round(before.clean_accuracy, 4), "after_rounds": after_rounds})
    return {"tuning": asdict(tuning), "train_images": args.train_images, "eval_images": args.eval_images, "rows": rows}


def inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The scan's and the repair's inputs as files for the command line, in the directory --out
    names: image.png (the scan image), test500.npz (its transfer images), train1000.npz (the
    repair set; --train-images)."""
    import numpy as np
    from PIL import Image

    args.out.mkdir(parents=True, exist_ok=True)
    image, clean_x, clean_y = _scan_inputs(args.seed)
    train_x, train_y = load_dataset("cifar10").split(train=True)
    pick = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(args.seed))[:args.train_images]

    def as_bytes(x: torch.Tensor) -> np.ndarray:
        return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    Image.fromarray(as_bytes(image[None])[0]).save(args.out / "image.png")
    np.savez(args.out / "test500.npz", x=as_bytes(clean_x), y=clean_y.numpy())
    np.savez(args.out / f"train{args.train_images}.npz", x=as_bytes(train_x[pick]), y=train_y[pick].numpy())
    return {"files": sorted(p.name for p in args.out.iterdir())}


PHASES = {"table2": table2, "scan": scans, "repair": repairs, "rounds": rounds, "inputs": inputs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=sorted(PHASES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", action="append", default=[], help="Only these CLIP zoo models (repeatable).")
    parser.add_argument("--method", action="append", default=None, help="Repair methods (repair phase).")
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--clean-images", type=int, default=500)
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, action="append", default=[], help="Scan at this σ (repeatable).")
    parser.add_argument("--rounds", type=int, default=2, help="Rounds of inversion and tuning (rounds phase).")
    parser.add_argument("--embedding-weight", type=float, default=ActivationTuning.embedding_weight)
    parser.add_argument("--feature-weight", type=float, default=ActivationTuning.feature_weight)
    args = parser.parse_args()
    args.method = args.method or ["invertune", "invertune-scan", "unlearn"]
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = PHASES[args.phase](args)
    result.update({"command": "OMP_NUM_THREADS=1 python3 " + " ".join(sys.argv),
                   "seconds": round(time.perf_counter() - started, 1), "threads": 1,
                   "torch": torch.__version__})
    if args.phase == "inputs":
        print(f"wrote {', '.join(result['files'])} in {args.out}")
        return
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
