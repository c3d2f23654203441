"""End to end: plant a backdoor, recover it from one clean image, compare with a non-target."""

from __future__ import annotations

import json
import os

import pytest
import torch

from smoothinv.engine.metrics import accuracy, attack_success_rate
from smoothinv.engine.sweep import Grid, run_sweep

from conftest import PLANTED_TARGET as TARGET

OTHER = 2


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Overrides conftest's: these tests train real models and use every core, unless pytest-xdist
    runs test files side by side (one worker per core), where one thread each is fastest."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_planted_backdoor_is_learned(planted):
    model, trigger, x, y = planted
    assert accuracy(model, x, y) > 0.9
    assert attack_success_rate(model, trigger, x, y, TARGET) > 0.9


def test_smoothinv_recovers_target_and_not_other_class(planted):
    model, _, x, y = planted
    image = x[y == 4][0]
    grid = Grid.for_shape(image.shape, eps=[2.0], sigmas=[0.5, 1.0])
    options = {"steps": 150, "noise_samples": 8}
    found = run_sweep(model, image, TARGET, x, y, grid, options=options, seed=0)
    other = run_sweep(model, image, OTHER, x, y, grid, options=options, seed=0, baseline=None)
    assert found.best.asr > 0.8, [r.asr for r in found.runs]
    assert other.best.asr < 0.35, [r.asr for r in other.runs]
    assert found.best.asr > other.best.asr + 0.5
    # the recovered perturbation concentrates where the trigger is (top-left 3x3 + a margin)
    p = found.best.result.perturbation.abs()[0]
    assert p[:6, :6].sum() > 0.3 * p.sum()


def test_demo_runs_and_recovers_backdoor(tmp_path, capsys):
    from rich.console import Console

    from smoothinv.demo import run_demo

    console = Console(file=open(tmp_path / "log.txt", "w"))
    summary = run_demo(tmp_path / "demo", seed=0, console=console, progress_console=console)
    assert summary["clean_accuracy"] > 0.95
    assert summary["true_trigger_asr"] > 0.95
    assert summary["recovered_asr"] > 0.9
    assert summary["contrast_asr"] < 0.3
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["recovered_asr"] == summary["recovered_asr"]
    for name in ("model.safetensors", "clean.npz", "image.png", "recovered/overview.png", "recovered/result.json"):
        assert (tmp_path / "demo" / name).is_file(), name
