"""What `smoothinv invert` (and the demo) writes: result.json, pictures and the perturbation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..protocols.sweep import Grid, Run, Sweep
from .outputs import write_json
from .pictures import save_inversion_pictures

NOISE_WARNING_PROB = 0.5


def noise_warnings(sweep: Sweep) -> list[str]:
    """Configs where G already favours the target before any step: the model is not robust
    to that σ (noise alone may fire the backdoor), so the run says little."""
    out = []
    for run in sweep.runs:
        sigma = run.result.config.get("sigma", 0.0)
        start = float(run.result.target_prob[0])
        if sigma > 0 and start >= NOISE_WARNING_PROB:
            out.append(
                f"sigma={sigma:g}: the smoothed classifier gives the target {start:.2f} before any perturbation; "
                "the model is not robust to this noise, so this config is uninformative"
            )
    return sorted(set(out))


def run_record(run: Run, curves: bool) -> dict[str, Any]:
    record = run.summary()
    record["initial_target_prob"] = round(float(run.result.target_prob[0]), 6)
    if not curves:
        record.pop("loss_curve")
        record.pop("target_prob_curve")
    return record


def inversion_record(sweep: Sweep, grid: Grid, *, target: int, context: dict[str, Any]) -> dict[str, Any]:
    """The JSON document: inputs, grid, every run's ASR, the best run, warnings."""
    best = sweep.best
    return {
        **context,
        "target": target,
        "method": sweep.method,
        "grid": grid.describe(),
        "best": run_record(best, curves=True),
        "runs": [run_record(r, curves=False) for r in sweep.runs],
        "baseline": [run_record(r, curves=False) for r in sweep.baseline],
        "warnings": noise_warnings(sweep),
    }


def write_inversion(out_dir: str | Path, sweep: Sweep, record: dict[str, Any]) -> dict[str, str]:
    """Write the best run's pictures, its perturbation (.npy, float32 C×H×W) and result.json."""
    out_dir = Path(out_dir)
    best = sweep.best.result
    files = save_inversion_pictures(out_dir, best.image, best.synthesized)
    np.save(out_dir / "perturbation.npy", best.perturbation.numpy().astype(np.float32))
    files["perturbation_array"] = "perturbation.npy"
    files["result"] = "result.json"
    write_json(out_dir / "result.json", {**record, "files": files})
    return files
