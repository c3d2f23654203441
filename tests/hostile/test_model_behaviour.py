"""Models that misbehave after loading: NaN/inf only on some batches or without gradients (the
tool reported ASR 100% and flagged class 0), models that loop forever (the tool hung and ignored
Ctrl-C), and Ctrl-C during start-up (it printed a traceback).

The models are TorchScript, so each run passes --trust-code (code-carrying formats are refused
otherwise); the point here is what happens once such a model runs.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from smoothinv.detection import ScanSettings, scan
from smoothinv.methods.registry import method_spec
from smoothinv.engine.logits import CheckedModel, check_logits
from smoothinv.engine.metrics import attack_success_rate
from smoothinv.engine.sanity import sanity_table
from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model
from smoothinv.triggers import AdditiveTrigger

from .conftest import FAST_INVERT, FAST_SCAN, assert_refused, error_message, run_cli, run_subprocess


class _LiesOnLargeBatches(nn.Module):
    """A real small_cnn whose logits turn NaN (or +inf) for batches larger than the 2-image probe."""

    def __init__(self, value: float, no_grad_only: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = create_model("small_cnn", 10)
        self.value = value
        self.no_grad_only = no_grad_only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        lie = x.shape[0] > 2
        if self.no_grad_only:
            lie = lie and not torch.is_grad_enabled()
        if lie:
            out = out.clone()
            out[:, 1:] = self.value
            out[:, 0] = self.value
        return out


class _ReturnsTuple(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


class _LoopsOnLargeBatches(nn.Module):
    """Answers the 2-image probe, then never returns (a loop inside one native call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 2:
            i = 0
            while i >= 0:
                i = (i + 1) % 1000
        return x.flatten(1)[:, :10] * 1.0


class _LoopsAlways(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        i = 0
        while i >= 0:
            i = (i + 1) % 1000
        return x.flatten(1)[:, :10] * 1.0


def _script(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(module.eval()).save(str(path))
    return path


@pytest.fixture(scope="module")
def liars(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("liars")
    return {
        "nan": _script(_LiesOnLargeBatches(float("nan"), no_grad_only=False), root / "nan_large.pt"),
        "inf_no_grad": _script(_LiesOnLargeBatches(float("inf"), no_grad_only=True), root / "inf_nograd.pt"),
        "loops_later": _script(_LoopsOnLargeBatches(), root / "loops_later.pt"),
        "loops": _script(_LoopsAlways(), root / "loops.pt"),
    }


def _common(liars, inputs, name):
    return ["--model", liars[name], "--trust-code", "--arch", "small_cnn", "--input-size", "28,28",
            "--channels", "1"]


@pytest.mark.parametrize("name", ["nan", "inf_no_grad"])
def test_invert_refuses_late_non_finite_logits(monkeypatch, capsys, tmp_path, inputs, liars, name):
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "invert", "--model", liars[name], "--trust-code", "--image", inputs["image"],
                  "--target", "3", "--clean", inputs["clean_npz"], "--out", out, *FAST_INVERT)
    assert_refused(run, "NaN/inf", out=out)


@pytest.mark.parametrize("name", ["nan", "inf_no_grad"])
def test_scan_refuses_late_non_finite_logits(monkeypatch, capsys, tmp_path, inputs, liars, name):
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "scan", "--model", liars[name], "--trust-code", "--image", inputs["image"],
                  "--clean", inputs["clean_npz"], "--out", out, *FAST_SCAN, "--no-resume")
    assert_refused(run, "NaN/inf", out=out)
    assert "verdict" not in run.stdout


@pytest.mark.parametrize("name", ["nan", "inf_no_grad"])
def test_sanity_refuses_late_non_finite_logits(monkeypatch, capsys, inputs, liars, name):
    run = run_cli(monkeypatch, capsys, "sanity", "--model", liars[name], "--trust-code", "--clean", inputs["clean_npz"],
                  "--attack", '{"attack": "badnets", "target": 0}', "--noise-samples", "2", "--sigma", "0,0.25")
    assert_refused(run, "NaN/inf")
    assert "ASR" not in run.stdout


def test_every_api_path_checks_logits():
    """ASR, smoothing, sanity and the scan's noise probe all refuse a model that lies on big batches."""
    model = _LiesOnLargeBatches(float("nan"), no_grad_only=False).eval()
    images = torch.rand(8, 1, 28, 28)
    labels = torch.arange(8) % 4
    trigger = AdditiveTrigger(torch.zeros(1, 28, 28))
    with pytest.raises(SmoothInvError, match="NaN/inf"):
        attack_success_rate(model, trigger, images, labels, target=0)
    with pytest.raises(SmoothInvError, match="NaN/inf"):
        sanity_table(model, images, labels, trigger, 0, sigmas=(0.0,), noise_samples=2)
    with pytest.raises(SmoothInvError, match="NaN/inf"):
        scan(model, [images[0]], images, labels, 10, ScanSettings(method_spec("smoothinv", noise_samples=2, steps=2),
                                                                   eps=(1.0,), sigmas=(0.25,), fallback_sigmas=()))


def test_checked_model_names_what_is_wrong():
    with pytest.raises(SmoothInvError, match=r"shape \[3\]"):
        check_logits(torch.zeros(3), 3)
    with pytest.raises(SmoothInvError, match="1 of 2 images"):
        check_logits(torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]), 2)
    with pytest.raises(SmoothInvError, match="tuple"):
        CheckedModel(_ReturnsTuple())(torch.zeros(1, 2))
    assert CheckedModel(nn.Flatten())(torch.zeros(2, 3, 1)).shape == (2, 3)


def test_sanity_with_only_target_labels_is_one_line(monkeypatch, capsys, tmp_path, inputs):
    import numpy as np

    npz = tmp_path / "only_target.npz"
    np.savez(npz, x=np.zeros((4, 28, 28, 1), dtype=np.uint8), y=np.zeros(4, dtype=np.int64))
    run = run_cli(monkeypatch, capsys, "sanity", "--model", inputs["model"], "--clean", npz,
                  "--attack", '{"attack": "badnets", "target": 0}', "--noise-samples", "2", "--sigma", "0")
    assert_refused(run, "target class 0")


def test_model_that_never_returns_is_refused_at_the_probe(tmp_path, inputs, liars):
    """Subprocess: the abandoned thread spins until the process exits, so it must not be this one."""
    start = time.monotonic()
    proc = run_subprocess("invert", "--model", liars["loops"], "--trust-code", "--input-size", "28,28",
                          "--channels", "1", "--probe-timeout", "1", "--image", inputs["image"], "--target", "3",
                          "--clean", inputs["clean_npz"], "--out", tmp_path / "out", *FAST_INVERT, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "did not return within 1 s" in error_message(proc.stderr)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "out").exists()


def test_ctrl_c_stops_a_model_stuck_in_native_code(tmp_path, inputs, liars):
    """The model passes the probe, then loops inside one TorchScript call; SIGINT must still end the
    command promptly with status 130, one line and no traceback."""
    out = tmp_path / "out"
    proc = _start_stuck_invert(liars, inputs, out)
    try:
        _wait_for_line(proc, "model ")  # printed once loading and probing are done
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Aborted" not in stderr
    assert "interrupted; the model did not return within 1 s" in stderr
    assert not out.exists()


def test_ctrl_c_during_start_up_prints_no_traceback(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "smoothinv", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    _wait_for_torch_import(proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert "Traceback" not in stderr, stderr
    assert proc.returncode in (130, -signal.SIGINT, 0), stderr


def _wait_for_torch_import(proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the child is importing torch (its shared library is mapped): a SIGINT sent earlier can
    land in Python's own start-up (runpy), before any of our code runs. Without /proc, 0.3 s."""
    maps = Path(f"/proc/{proc.pid}/maps")
    if not maps.exists():
        time.sleep(0.3)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if "libtorch" in maps.read_text():
                return
        except OSError:
            return
        time.sleep(0.005)


def _start_stuck_invert(liars, inputs, out: Path) -> subprocess.Popen:
    """`invert` on the model that answers the probe and then loops inside one native call."""
    return subprocess.Popen([sys.executable, "-m", "smoothinv", "invert", "--model", str(liars["loops_later"]),
                             "--trust-code", "--input-size", "28,28", "--channels", "1", "--image", str(inputs["image"]),
                             "--target", "3", "--clean", str(inputs["clean_npz"]), "--out", str(out), *FAST_INVERT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_env(), "SMOOTHINV_INTERRUPT_GRACE_S": "1"})


def _env() -> dict[str, str]:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    env.pop("SMOOTHINV_DEBUG", None)
    return env


def _wait_for_line(proc: subprocess.Popen, text: str, timeout: float = 60) -> None:
    import os
    import selectors

    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    seen = ""
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in seen:
        if selector.select(timeout=0.5):
            chunk = proc.stderr.read()
            if chunk:
                seen += chunk
        if proc.poll() is not None:
            break
    assert text in seen, f"never saw {text!r}; stderr so far: {seen}"


def test_sigterm_takes_the_ctrl_c_path(tmp_path, inputs, liars):
    out = tmp_path / "out"
    proc = _start_stuck_invert(liars, inputs, out)
    try:
        _wait_for_line(proc, "model ")
        time.sleep(0.3)
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert not out.exists()
