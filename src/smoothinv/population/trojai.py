"""The TrojAI-style single-model entry point: one model file and a folder of clean examples in,
one trojan probability out, written to a file (the evaluation harness's contract).

The examples folder is a TrojAI image round's (``class_<c>_example_<i>.png``, the class in the
name), an ImageFolder or an .npz. The scan image is a seeded pick among the examples and the
others measure transfer; the model runs the default scan in this process with every core, and
the probability is the shipped calibration's (calibration.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SmoothInvError
from ..files import sha256_file
from ..reporting.outputs import check_file_destination, write_text
from .backends import usable_cores
from .calibration import TrojanCalibration
from .entries import LoadingHints, ModelEntry, safe_name
from .inputs import FileInputs
from .jobs import ScanJob
from .runner import model_key, result_row
from .subject import Loading
from .task import Task, run_task


@dataclass(frozen=True)
class TrojaiRequest:
    """One model to judge: its file, its examples, where the probability goes, how to open it."""

    model: Path
    examples: Path
    result: Path
    loading: Loading = Loading()
    hints: LoadingHints = LoadingHints()
    job: ScanJob = ScanJob()


def trojan_probability(request: TrojaiRequest, calibration: TrojanCalibration | None = None) -> dict[str, Any]:
    """Scan the model, write its trojan probability (a number in [0, 1], as text) to
    `request.result`, and return the model's row (runner.result_row). Fails with one line when the
    model or its examples cannot be used; the result file is then left as it was."""
    check_file_destination(request.result)
    if not request.model.is_file():
        raise SmoothInvError(f"model file {request.model} does not exist")
    calibration = calibration or TrojanCalibration.shipped()
    entry = ModelEntry(safe_name(request.model.stem), Path(os.path.abspath(request.model)),
                       FileInputs(Path(os.path.abspath(request.examples))), request.hints)
    sha = sha256_file(entry.path)
    task = Task(entry, request.job, request.loading, usable_cores(), sha, model_key(entry, request.job,
                                                                                      request.loading, sha))
    outcome = run_task(task)
    if not outcome.ok:
        raise SmoothInvError(outcome.error or "the scan failed")
    row = result_row(entry, outcome, calibration)
    probability = row["trojan_probability"]
    if probability is None:
        raise SmoothInvError(f"the calibration is for {calibration.method} scans, not {request.job.name}")
    write_text(request.result, f"{probability}\n")
    return row
