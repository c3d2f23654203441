"""End to end: plant a backdoor, recover it from one clean image, compare with a non-target."""

from __future__ import annotations

import json
import os

import pytest
import torch

from smoothinv.engine.metrics import accuracy, attack_success_rate
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.sweep import Grid, run_sweep

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
    method = method_spec("smoothinv", steps=150, noise_samples=8)
    found = run_sweep(model, image, TARGET, x, y, grid, method=method, baseline=method_spec("plainadv", steps=150), seed=0)
    other = run_sweep(model, image, OTHER, x, y, grid, method=method, seed=0)
    assert found.best.asr > 0.8, [r.asr for r in found.runs]
    assert other.best.asr < 0.35, [r.asr for r in other.runs]
    assert found.best.asr > other.best.asr + 0.5
    # the recovered perturbation concentrates where the trigger is (top-left 3x3 + a margin)
    p = found.best.result.perturbation.abs()[0]
    assert p[:6, :6].sum() > 0.3 * p.sum()


@pytest.mark.slow  # > 15 s on one core: `pytest -m slow` (CI runs it)
def test_demo_runs_and_recovers_backdoor(tmp_path):
    from contextlib import contextmanager

    from smoothinv.demo import run_demo

    lines: list[str] = []
    counted: dict[str, int] = {"total": 0, "done": 0}

    @contextmanager
    def steps(total):
        counted["total"] = total
        yield lambda label, n: counted.__setitem__("done", counted["done"] + n)

    result = run_demo(tmp_path / "demo", seed=0, log=lines.append, steps=steps)
    summary = result.summary
    assert any(line.startswith("training small_cnn") for line in lines)
    assert counted["total"] > 0 and counted["done"] == counted["total"]
    assert [title for title, _ in result.sweeps()][0].startswith("toward the backdoor target")
    assert "recovered ASR" in result.headline() and "overview.png" in result.closing()[-1]
    inversion = result.inversion()  # what `smoothinv demo` prints as the `smoothinv invert` command
    assert inversion["target"] == 0 and inversion["seed"] == 0 and inversion["eps"] == [1.5, 3.0]
    assert all(inversion[key].is_file() for key in ("model", "image", "clean"))
    assert summary["clean_accuracy"] > 0.95
    assert summary["true_trigger_asr"] > 0.95
    assert summary["recovered_asr"] > 0.9
    assert summary["contrast_asr"] < 0.3
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["recovered_asr"] == summary["recovered_asr"]
    for name in ("model.safetensors", "clean.npz", "image.png", "recovered/overview.png", "recovered/result.json"):
        assert (tmp_path / "demo" / name).is_file(), name
