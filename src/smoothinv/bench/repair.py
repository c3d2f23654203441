"""`smoothinv bench repair`: every backdoored zoo model scanned, repaired by each method, measured and
scanned again.

Per model: the default scan (the `bench detect` inputs: one seeded clean test image, 500 other test
images for transfer). A model whose scan flags no class cannot be repaired from the scan and gets a
row saying so. Otherwise each method fine-tunes the model on `train_images` seeded images of the
dataset's training split, and the true trigger's ASR (restricted to the source classes of a
label-specific attack) and clean accuracy are measured on the first `eval_images` test images
before and after. Models repaired by a method in `rescan` are scanned again with the same inputs.

The report is rewritten after each model, so an interrupted run keeps what it finished; a rerun
with the same settings and output skips the models already there.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..data.clean_sets import choose_indices
from ..data.datasets import load_dataset
from ..detection.scan import ScanSettings, scan
from ..errors import SmoothInvError
from ..files import atomic_write
from ..repair import REPAIRS, Probe, build_repair, measure
from ..repair.findings import scan_result_findings
from ..zoo import list_zoo, load_zoo_model
from .detect import zoo_subject

Log = Callable[[str], None]
REPAIR_METHODS = ("unlearn", "nc-unlearn", "fine-pruning", "fine-tune")
GOAL_ASR = 0.05
GOAL_ACCURACY_DROP = 0.02


@dataclass(frozen=True)
class RepairBenchSettings:
    """What every model of the benchmark gets."""

    methods: tuple[str, ...] = REPAIR_METHODS
    train_images: int = 1000
    eval_images: int | None = None
    rescan: tuple[str, ...] = ("unlearn",)
    seed: int = 0


def repair_benchmark(settings: RepairBenchSettings, *, names: Sequence[str] | None = None,
                     data_root: str | Path | None = None, out: str | Path | None = None,
                     log: Log = print) -> dict[str, Any]:
    """{"settings", "rows": one per backdoored zoo model (or those `names`), "summary"}; written to
    `out` (JSON) after each model when given, and resumed from it."""
    for method in (*settings.methods, *settings.rescan):
        REPAIRS.canonical(method)
    records = [r for r in list_zoo() if r.get("attack") and (not names or r["name"] in names)]
    if names and len(records) < len(set(names)):
        missing = sorted(set(names) - {r["name"] for r in records})
        raise SmoothInvError(f"not a backdoored zoo model: {', '.join(missing)}; see `smoothinv zoo list`")
    wanted = _settings_record(settings)
    done = _resumable(out, wanted)
    rows = []
    for record in records:
        if record["name"] in done:
            log(f"{record['name']}: already in {out}, skipped")
            rows.append(done[record["name"]])
            continue
        rows.append(_model_row(record, settings, data_root, log))
        if out is not None:
            _write(out, _report(wanted, rows))
    return _report(wanted, rows)


def _report(wanted: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"settings": wanted, "threads": torch.get_num_threads(), "rows": rows, "summary": summarize(rows)}


def _model_row(record: dict[str, Any], settings: RepairBenchSettings, data_root: str | Path | None,
               log: Log) -> dict[str, Any]:
    name, target = record["name"], record["target"]
    zm = load_zoo_model(name)
    assert zm.attack is not None
    subject = zoo_subject(record, data_root, 500, settings.seed)
    log(f"{name}: scanning ...")
    scan_settings = ScanSettings(seed=settings.seed)
    start = time.perf_counter()
    result = scan(subject.model, [subject.image], subject.clean_images, subject.clean_labels, subject.num_classes,
                  scan_settings)
    row: dict[str, Any] = {"model": name, "target": target, "flagged": result.targets,
                           "scan_s": round(time.perf_counter() - start, 1), "methods": {}}
    findings = scan_result_findings(result)
    if not findings.targets:
        row["skipped"] = "the scan flagged no class, so there is no recovered trigger to repair with"
        log(f"{name}: {row['skipped']}")
        return row
    dataset = load_dataset(record["dataset"], data_root)
    train_x, train_y = dataset.split(train=True)
    keep = choose_indices(len(train_y), settings.train_images, settings.seed)
    tune_x, tune_y = train_x[keep], train_y[keep]
    test_x, test_y = dataset.split(train=False)
    if settings.eval_images is not None:
        test_x, test_y = test_x[: settings.eval_images], test_y[: settings.eval_images]
    probe = Probe("true trigger", zm.attack.trigger(tuple(test_x.shape[1:])), target,
                  None if zm.attack.source_classes is None else tuple(zm.attack.source_classes))
    before = measure(zm.module, test_x, test_y, [probe])
    row["before"] = {"clean_accuracy": round(before.clean_accuracy, 4), "true_asr": round(before.asr[probe.name], 4)}
    row["train_images"], row["eval_images"] = len(tune_y), len(test_y)
    for method in settings.methods:
        log(f"{name}: {method} ...")
        repaired = build_repair(method, findings)(zm.module, tune_x, tune_y, seed=settings.seed)
        after = measure(repaired.model, test_x, test_y, [probe])
        entry: dict[str, Any] = {
            "clean_accuracy": round(after.clean_accuracy, 4), "true_asr": round(after.asr[probe.name], 4),
            "accuracy_drop": round(before.clean_accuracy - after.clean_accuracy, 4),
            "seconds": round(repaired.seconds, 1),
            "details": {k: v for k, v in repaired.details.items() if k != "recipe"},
        }
        entry["meets_goal"] = entry["true_asr"] < GOAL_ASR and entry["accuracy_drop"] <= GOAL_ACCURACY_DROP
        if method in settings.rescan:
            log(f"{name}: rescanning the {method} repair ...")
            again = scan(repaired.model, [subject.image], subject.clean_images, subject.clean_labels,
                         subject.num_classes, scan_settings)
            entry["rescan"] = {"verdict": again.verdict, "flagged": again.targets}
        row["methods"][method] = entry
        log(f"{name}: {method}: true ASR {row['before']['true_asr']:.1%} -> {entry['true_asr']:.1%}, clean accuracy "
            f"{row['before']['clean_accuracy']:.1%} -> {entry['clean_accuracy']:.1%} in {entry['seconds']:.0f}s")
    return row


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per method, over the models the scan found the target of: how many meet the goal, mean
    true-trigger ASR after, mean accuracy drop, mean seconds."""
    found = [r for r in rows if r["target"] in r.get("flagged", []) and r.get("methods")]
    summary: dict[str, Any] = {"models": len(rows), "target_found": len(found)}
    methods = sorted({m for r in found for m in r["methods"]})
    for method in methods:
        entries = [r["methods"][method] for r in found if method in r["methods"]]
        summary[method] = {
            "meets_goal": sum(e["meets_goal"] for e in entries), "of": len(entries),
            "mean_true_asr": round(sum(e["true_asr"] for e in entries) / len(entries), 4),
            "mean_accuracy_drop": round(sum(e["accuracy_drop"] for e in entries) / len(entries), 4),
            "mean_seconds": round(sum(e["seconds"] for e in entries) / len(entries), 1),
            "judged_clean_after": sum(1 for e in entries if e.get("rescan", {}).get("verdict") == "clean"),
        }
    return summary


def _settings_record(settings: RepairBenchSettings) -> dict[str, Any]:
    return {**asdict(settings), "methods": list(settings.methods), "rescan": list(settings.rescan)}


def _resumable(out: str | Path | None, wanted: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The rows of an earlier run with the same settings written to `out`; any other file there is
    refused rather than overwritten."""
    if out is None or not Path(out).exists():
        return {}
    try:
        earlier = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        earlier = None
    if not isinstance(earlier, dict) or not isinstance(earlier.get("rows"), list) or "settings" not in earlier:
        raise SmoothInvError(f"{out} exists and is not a repair benchmark report; give another output file")
    if earlier["settings"] != wanted:
        raise SmoothInvError(f"{out} holds a repair benchmark run with other settings; give another output file "
                             "to keep it, or delete it")
    return {row["model"]: row for row in earlier["rows"] if isinstance(row, dict) and "model" in row}


def _write(out: str | Path, report: dict[str, Any]) -> None:
    with atomic_write(out, "w") as f:
        json.dump(report, f, indent=1)


def repair_table(report: dict[str, Any]) -> list[str]:
    """Markdown: a row per model, a column group per method."""
    methods = report["settings"]["methods"]
    head = "| model | target (flagged) | before: ASR / acc | " + " | ".join(
        f"{m}: ASR / acc / s" for m in methods) + " | rescan |"
    lines = [head, "|" + "---|" * (4 + len(methods))]
    for row in report["rows"]:
        flagged = f"{row['target']} ({', '.join(map(str, row['flagged'])) or 'none'})"
        if "before" not in row:
            lines.append(f"| {row['model']} | {flagged} | {row.get('skipped', '')} |" + " – |" * (len(methods) + 1))
            continue
        b = row["before"]
        cells = []
        for m in methods:
            e = row["methods"].get(m)
            cells.append("–" if e is None else f"{e['true_asr']:.1%} / {e['clean_accuracy']:.1%} / {e['seconds']:.0f}")
        rescans = [f"{m}: {e['rescan']['verdict']} {e['rescan']['flagged']}" for m, e in row["methods"].items()
                   if "rescan" in e]
        lines.append(f"| {row['model']} | {flagged} | {b['true_asr']:.1%} / {b['clean_accuracy']:.1%} | "
                     + " | ".join(cells) + f" | {'; '.join(rescans) or '–'} |")
    return lines
