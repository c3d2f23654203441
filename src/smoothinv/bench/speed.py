"""`smoothinv bench speed`: the default scan beside the exhaustive one, in one process on one machine,
and how the default scan's time grows with the number of classes.

Both scans of a model get the same inputs as `bench detect` (one seeded clean test image, the
first `clean_images` other test images) and the same torch thread count, one after the other,
so their times are a ratio measured side by side. The scaling part scans each model of
`scaling` with the default settings and divides its time by the first one's.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..detection.scan import ScanResult, ScanSettings, scan
from ..zoo import read_manifest
from ..errors import SmoothInvError
from .detect import zoo_subject

Log = Callable[[str], None]


def _timed_scan(record: dict[str, Any], settings: ScanSettings, data_root: str | Path | None, clean_images: int,
                seed: int) -> tuple[ScanResult, float]:
    subject = zoo_subject(record, data_root, clean_images, seed)
    start = time.perf_counter()
    result = scan(subject.model, [subject.image], subject.clean_images, subject.clean_labels, subject.num_classes,
                  settings)
    return result, time.perf_counter() - start


def _outcome(result: ScanResult, seconds: float, record: dict[str, Any]) -> dict[str, Any]:
    truth = record.get("target")
    return {"seconds": round(seconds, 1), "verdict": result.verdict, "flagged": result.targets,
            "score": round(max((c.score for c in result.classes), default=0.0), 4),
            "target_found": None if truth is None else truth in result.targets,
            "classes_on_full_grid": len(result.classes),
            "fallback": result.fallback_from is not None, "precision": result.precision,
            "split_s": result.seconds}


def speed_benchmark(models: Sequence[str], scaling: Sequence[str], *, data_root: str | Path | None = None,
                    clean_images: int = 500, seed: int = 0, log: Log = print) -> dict[str, Any]:
    """{"threads", "comparison": a row per model of `models` (exhaustive and default scan, time
    ratio, same verdict and targets?), "scaling": a row per model of `scaling` (default scan; time
    relative to the first)}."""
    manifest = read_manifest()
    unknown = [name for name in [*models, *scaling] if name not in manifest]
    if unknown:
        raise SmoothInvError(f"not in the zoo: {', '.join(unknown)}; see `smoothinv zoo list`")
    comparison = []
    for name in models:
        record = manifest[name]
        log(f"{name}: exhaustive scan ...")
        full, full_s = _timed_scan(record, ScanSettings.exhaustive(seed=seed), data_root, clean_images, seed)
        log(f"{name}: default scan ...")
        fast, fast_s = _timed_scan(record, ScanSettings(seed=seed), data_root, clean_images, seed)
        row = {"model": name, "classes": len(record["class_names"]), "truth": record.get("target"),
               "exhaustive": _outcome(full, full_s, record), "default": _outcome(fast, fast_s, record),
               "speedup": round(full_s / fast_s, 2), "same_verdict": full.verdict == fast.verdict,
               "same_targets": full.targets == fast.targets}
        log(f"{name}: exhaustive {full_s:.0f}s {full.targets}, default {fast_s:.0f}s {fast.targets}: "
            f"{row['speedup']}x")
        comparison.append(row)
    rows = []
    for name in scaling:
        record = manifest[name]
        log(f"{name}: default scan of {len(record['class_names'])} classes ...")
        result, seconds = _timed_scan(record, ScanSettings(seed=seed), data_root, clean_images, seed)
        rows.append({"model": name, "classes": len(record["class_names"]), "truth": record.get("target"),
                     **_outcome(result, seconds, record),
                     "screen": None if result.screen is None else {"full_grid": result.screen.full,
                                                                   "left_out": len(result.screen.left_out),
                                                                   "seconds": round(result.screen.seconds, 1)},
                     "noise_sinks": None if result.noise_sink is None else sorted(result.noise_sink.sink_classes)})
        log(f"{name}: {seconds:.0f}s, flagged {result.targets}")
    for row in rows:
        row["relative_time"] = round(row["seconds"] / rows[0]["seconds"], 2)
    return {"threads": torch.get_num_threads(), "clean_images": clean_images, "seed": seed,
            "comparison": comparison, "scaling": rows}
