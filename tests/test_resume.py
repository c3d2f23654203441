"""Resumable scans: an interrupted or killed scan, rerun, gives exactly what an uninterrupted one
gives; a checkpoint made with another model or settings, or a damaged one, is never reused."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PLANTED_TARGET, run_cli, bar_data, tiny_cnn
from smoothinv.detection import ScanCheckpoint, ScanSettings, scan
from smoothinv.methods.registry import method_spec
from smoothinv.reporting.scan_report import scan_record

FAST = ScanSettings(method_spec("smoothinv", noise_samples=4, steps=40), eps=(1.0, 2.0), sigmas=(0.5, 1.0))
scan_module = importlib.import_module("smoothinv.detection.scan")


@pytest.fixture
def subject(planted):
    """(planted model, its scan image, a small clean set x, y): small, for speed."""
    model, _, x, y = planted
    return model, [x[y == 4][0]], x[:150], y[:150]


def comparable(result) -> dict:
    """scan.json's content without timings, plus a digest of every evidence tensor."""
    record = scan_record(result, {}, None)
    record.pop("timings")
    if record["fallback_from"]:
        record["fallback_from"].pop("seconds")
    digest = hashlib.sha256()
    for c in result.classes:
        r = c.evidence.result
        for t in (r.image, r.synthesized, r.perturbation, r.loss, r.target_prob):
            digest.update(t.contiguous().numpy().tobytes())
    record["tensors"] = digest.hexdigest()
    return record


def interrupt_after(steps: int):
    """A progress hook that presses Ctrl-C once `steps` steps are done."""
    done = [0]

    def hook(label: str, n: int) -> None:
        done[0] += n
        if done[0] >= steps:
            raise KeyboardInterrupt

    return hook


def counting(steps: list[int]):
    return lambda label, n: steps.append(n)


@pytest.mark.parametrize("every_s", [0, 3600], ids=["saved every step", "saved only on Ctrl-C"])
@pytest.mark.parametrize("case", ["one chunk", "momentum in three chunks", "fallback rerun"])
def test_interrupted_scan_resumes_to_the_same_result(subject, tmp_path, monkeypatch, case, every_s):
    """Ctrl-C saves the steps finished since the last periodic save, so nothing is lost either way."""
    model, images, x, y = subject
    settings, classes, stop_at, note, total = FAST, [1, 2, PLANTED_TARGET], 25, "resuming: chunk 1/1 at step 24/40", 40
    if case == "momentum in three chunks":
        monkeypatch.setattr(scan_module, "ROW_ELEMENTS", 4 * 400)  # 1 class of 4 configs at 1x20x20
        settings = replace(FAST, method=method_spec("momentum", noise_samples=4, steps=40))
        stop_at, note, total = 95, "resuming: chunk 3/3 at step 14/40", 120
    elif case == "fallback rerun":
        settings = replace(FAST, fallback_sigmas=(0.25,), pinned_asr=1.01)  # any first grid counts as "nothing moved"
        classes, stop_at, note, total = [1, PLANTED_TARGET], 50, "resuming the fallback rerun: chunk 1/1 at step 9/40", 80
    reference = scan(model, images, x, y, 10, settings, classes)

    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        scan(model, images, x, y, 10, settings, classes, progress=interrupt_after(stop_at),
             checkpoint=ScanCheckpoint(folder, every_s=every_s))
    assert any(folder.glob("descent-*.safetensors"))
    notes, steps = [], []
    resumed = scan(model, images, x, y, 10, settings, classes, progress=counting(steps),
                   checkpoint=ScanCheckpoint(folder, every_s=0, log=notes.append))
    assert note in notes and not any("starting over" in n for n in notes), notes
    assert sum(steps) == total  # the progress bar counts the restored steps too
    assert comparable(resumed) == comparable(reference)
    if case == "fallback rerun":
        assert resumed.fallback_from is not None and "resuming: every chunk (1) was already done" in notes


def test_a_finished_checkpoint_is_all_reused_and_masked_triggers_survive(tmp_path, monkeypatch):
    """Neural Cleanse's masked triggers are stored per chunk of classes (one class per chunk here)."""
    model = tiny_cnn(classes=3)
    images, labels = bar_data(n_per_class=10, classes=3)
    settings = ScanSettings(method_spec("nc", steps=20))
    monkeypatch.setattr(scan_module, "ROW_ELEMENTS", 3 * 64)
    reference = scan(model, [images[0]], images, labels, 3, settings)
    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        scan(model, [images[0]], images, labels, 3, settings, progress=interrupt_after(25),
             checkpoint=ScanCheckpoint(folder, every_s=0))
    assert (folder / "chunk-grid-0.safetensors").is_file()
    notes, steps = [], []
    resumed = scan(model, [images[0]], images, labels, 3, settings, progress=counting(steps),
                   checkpoint=ScanCheckpoint(folder, log=notes.append))
    assert notes == ["resuming: chunk 2/2, from its first step"] and sum(steps) == 40
    assert comparable(resumed) == comparable(reference)
    again = scan(model, [images[0]], images, labels, 3, settings, checkpoint=ScanCheckpoint(folder, log=notes.append))
    assert notes[-1] == "resuming: every chunk (2) was already done"
    assert comparable(again) == comparable(reference)


@pytest.mark.slow  # > 15 s on one core: `pytest -m slow` (CI runs it)
def test_changed_settings_or_model_do_not_reuse_the_checkpoint(subject, tmp_path):
    model, images, x, y = subject
    folder = tmp_path / "checkpoint"

    def interrupted(settings, model=model):
        with pytest.raises(KeyboardInterrupt):
            scan(model, images, x, y, 10, settings, classes=[1, 2], progress=interrupt_after(15),
                 checkpoint=ScanCheckpoint(folder, every_s=0))

    for changed in (replace(FAST, method=FAST.method.with_options(steps=30)), replace(FAST, seed=1), replace(FAST, max_batch=7)):
        interrupted(FAST)
        notes = []
        result = scan(model, images, x, y, 10, changed, classes=[1, 2], checkpoint=ScanCheckpoint(folder, log=notes.append))
        assert notes == [f"checkpoint {folder} was made with a different model or settings; starting over"]
        assert comparable(result) == comparable(scan(model, images, x, y, 10, changed, classes=[1, 2]))
    # another model (one weight changed), the same settings
    other = tiny_like(model)
    interrupted(FAST)
    notes = []
    result = scan(other, images, x, y, 10, FAST, classes=[1, 2], checkpoint=ScanCheckpoint(folder, log=notes.append))
    assert notes == [f"checkpoint {folder} was made with a different model or settings; starting over"]
    assert comparable(result) == comparable(scan(other, images, x, y, 10, FAST, classes=[1, 2]))
    # the time budget is not part of the key: work saved before a deadline does not depend on it
    interrupted(FAST)
    notes = []
    scan(model, images, x, y, 10, replace(FAST, time_budget=600.0), classes=[1, 2],
         checkpoint=ScanCheckpoint(folder, log=notes.append))
    assert notes and notes[0].startswith("resuming: chunk 1/1 at step")


def tiny_like(model):
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 0.5
    return other


@pytest.mark.parametrize("damage", ["key", "descent", "truncated descent", "probe"])
def test_a_damaged_checkpoint_is_discarded_with_a_note(subject, tmp_path, damage):
    model, images, x, y = subject
    folder = tmp_path / "checkpoint"
    with pytest.raises(KeyboardInterrupt):
        scan(model, images, x, y, 10, FAST, classes=[1, 2], progress=interrupt_after(15),
             checkpoint=ScanCheckpoint(folder, every_s=0))
    descent = folder / "descent-grid-0.safetensors"
    if damage == "key":
        (folder / "key.json").write_text("{not json")
        expected = f"checkpoint {folder} is unreadable"
    elif damage == "descent":
        data = bytearray(descent.read_bytes())
        data[-5] ^= 0xFF  # one bit pattern in the tensor bytes: the checksum catches it
        descent.write_bytes(bytes(data))
        expected = "checkpoint file descent-grid-0.safetensors is unusable (its checksum does not match"
    elif damage == "truncated descent":
        descent.write_bytes(descent.read_bytes()[:100])
        expected = "checkpoint file descent-grid-0.safetensors is unusable"
    else:
        (folder / "probe-grid.json").write_bytes(b"\x00garbage")
        expected = "checkpoint file probe-grid.json is unusable"
    notes = []
    result = scan(model, images, x, y, 10, FAST, classes=[1, 2], checkpoint=ScanCheckpoint(folder, log=notes.append))
    assert notes and notes[0].startswith(expected), notes
    assert comparable(result) == comparable(scan(model, images, x, y, 10, FAST, classes=[1, 2]))


# --- the command line -------------------------------------------------------------------------------------------



@pytest.fixture
def files(planted, tmp_path):
    """(model file, image, clean set) of the planted model, and the scan's arguments but --out."""
    from smoothinv.data import save_image
    from smoothinv.models import save_model

    model, _, x, y = planted
    save_model(tmp_path / "m.safetensors", model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    save_image(x[y == 4][0], tmp_path / "img.png")
    np.savez(tmp_path / "clean.npz", x=np.round(x[:150].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
             y=y[:150].numpy())
    return ["scan", "--model", str(tmp_path / "m.safetensors"), "--image", str(tmp_path / "img.png"), "--clean",
            str(tmp_path / "clean.npz"), "--eps", "1,2", "--sigma", "0.5,1", "--noise-samples", "4"]


def same_outputs(a: Path, b: Path) -> None:
    """scan.json equal but for timings and the command line; every picture equal byte for byte."""
    def record(folder):
        data = json.loads((folder / "scan.json").read_text())
        for key in ("timings", "command"):
            data.pop(key)
        if data["fallback_from"]:
            data["fallback_from"].pop("seconds")
        return data

    assert record(a) == record(b)
    pictures = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert pictures and pictures == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in pictures)


@pytest.mark.slow  # 13 s each
@pytest.mark.parametrize("how", ["kill -9", "Ctrl-C"])
def test_cli_resumes_after_kill_9_or_ctrl_c(files, tmp_path, monkeypatch, capsys, how):
    """kill -9 loses at most the steps since the last save (every step here); a real Ctrl-C, even
    with no periodic save due, saves the steps done, exits 130 and prints no traceback."""
    out = tmp_path / "killed"
    args = [*files, "--steps", "200", "--classes", f"1,2,{PLANTED_TARGET}", "--out", str(out)]
    every = "0" if how == "kill -9" else "3600"
    env = {**os.environ, "SMOOTHINV_CHECKPOINT_EVERY_S": every, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "smoothinv", *args], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    folder = tmp_path / ".killed.checkpoint"
    descent = folder / "descent-grid-0.safetensors"
    started = descent if how == "kill -9" else folder / "probe-grid.json"
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if how == "kill -9":
        process.send_signal(signal.SIGKILL)
    else:
        time.sleep(1.0)  # into the descent
        process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    expected = -signal.SIGKILL if how == "kill -9" else 130
    assert process.returncode == expected, stderr.decode()[-2000:]
    if how == "Ctrl-C":
        assert "Traceback" not in stderr.decode() and "rerun the same command" in stderr.decode()
    assert not out.exists() and descent.exists()

    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert "resuming: chunk 1/1 at step" in err
    assert not (tmp_path / ".killed.checkpoint").exists()  # removed once the output is written
    code, _, err = run_cli(monkeypatch, capsys, *args[:-1], str(tmp_path / "whole"))
    assert code == 0 and "resuming" not in err, err
    same_outputs(out, tmp_path / "whole")


@contextlib.contextmanager
def ctrl_c_after(steps: int):
    """A stand-in for the scan's progress bar that presses Ctrl-C after `steps` steps."""
    class Bar:
        def __init__(self) -> None:
            self.hook = interrupt_after(steps)

        def __call__(self, label: str, n: int) -> None:
            self.hook(label, n)

        def restart(self, label: str, total: int) -> None:
            pass

    yield Bar()


def test_cli_ctrl_c_then_changed_model_or_no_resume_starts_over(files, tmp_path, monkeypatch, capsys):
    from smoothinv.models import create_model, save_model

    out = tmp_path / "scan"
    args = [*files, "--steps", "30", "--classes", "1,2", "--fallback-sigma", "none", "--out", str(out)]
    monkeypatch.setenv("SMOOTHINV_CHECKPOINT_EVERY_S", "0")
    with monkeypatch.context() as patch:
        patch.setattr("smoothinv.cli.scan.step_progress", lambda total, console: ctrl_c_after(10))
        code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 130 and "rerun the same command to continue" in err and not out.exists()
    code, _, err = run_cli(monkeypatch, capsys, *args, "--no-resume")
    assert code == 0 and "(--no-resume)" in err and "resuming" not in err, err
    # interrupted again, then the model file is replaced by another model
    with monkeypatch.context() as patch:
        patch.setattr("smoothinv.cli.scan.step_progress", lambda total, console: ctrl_c_after(10))
        code, _, _ = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 130
    torch.manual_seed(3)
    save_model(tmp_path / "m.safetensors", create_model("small_cnn", 10).eval(), arch="small_cnn", num_classes=10,
               input_size=(20, 20), channels=1)
    code, _, err = run_cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0 and "was made with a different model or settings; starting over" in err, err
    code, _, err = run_cli(monkeypatch, capsys, *args[:-1], str(tmp_path / "fresh"))
    assert code == 0, err
    same_outputs(out, tmp_path / "fresh")


def test_a_second_scan_of_the_same_output_is_refused_while_the_first_runs(tmp_path):
    """Two scans writing one --out at once would share, and then delete, one checkpoint."""
    from smoothinv.errors import SmoothInvError

    first = ScanCheckpoint.beside(tmp_path / "out")
    second = ScanCheckpoint.beside(tmp_path / "out")
    with first.held():
        with pytest.raises(SmoothInvError, match="another scan is writing to the same output"):
            with second.held():
                pass
    with second.held():  # free again once the first is done
        pass
    assert not list(tmp_path.glob(".out.checkpoint.lock"))


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_scan(subject, tmp_path, monkeypatch):
    """A full disk while saving: one note, and the scan finishes with the same result."""
    import smoothinv.detection.checkpoint as checkpoint_module

    model, images, x, y = subject
    reference = scan(model, images, x, y, 10, FAST, [1, 2])

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module, "save_file", full_disk)
    notes = []
    result = scan(model, images, x, y, 10, FAST, [1, 2],
                  checkpoint=ScanCheckpoint(tmp_path / "checkpoint", every_s=0, log=notes.append))
    assert comparable(result) == comparable(reference)
    assert len([n for n in notes if "cannot save the checkpoint" in n]) == 1, notes
    assert "No space left on device" in notes[0]
    assert not list((tmp_path / "checkpoint").glob(".tmp-*"))


def _interrupt_at_line(n: int, where: str = "smoothinv"):
    """A trace function that raises KeyboardInterrupt at the n-th line run in files whose path
    contains `where`, as a real Ctrl-C (raised into the worker thread at an arbitrary bytecode)
    would."""
    seen = [0]

    def trace(frame, event, arg):
        if "smoothinv" not in frame.f_code.co_filename:
            return None
        if event == "line" and where in frame.f_code.co_filename:
            seen[0] += 1
            if seen[0] == n:
                raise KeyboardInterrupt
        return trace

    return trace, seen


def _traced(trace, call):
    sys.settrace(trace)
    try:
        return call()
    finally:
        sys.settrace(None)


@pytest.mark.parametrize("where, cuts", [("smoothinv", "spread"),
                                         pytest.param("engine/pgd.py", "two whole steps", marks=pytest.mark.slow)])
def test_ctrl_c_at_any_line_resumes_to_the_same_result(subject, tmp_path, where, cuts):
    """Interrupt the scan at many lines: spread over the whole scan (descent, stopper, evaluation,
    saving...) and at every line of the descent loop over two steps (where a step's state is
    handed on). Each resumed run equals the uninterrupted one."""
    model, images, x, y = subject
    settings = replace(FAST, method=FAST.method.with_options(steps=6), eps=(1.0,), sigmas=(0.5,), fallback_sigmas=())
    classes = [1, PLANTED_TARGET]

    def run(folder, trace=None):
        call = lambda: scan(model, images, x[:40], y[:40], 10, settings, classes,  # noqa: E731
                            checkpoint=None if folder is None else ScanCheckpoint(folder, every_s=3600))
        return call() if trace is None else _traced(trace, call)

    reference = comparable(run(None))
    trace, seen = _interrupt_at_line(-1, where)
    run(tmp_path / "count", trace)
    total = seen[0]
    if cuts == "spread":
        points = sorted(int(n) for n in np.random.default_rng(0).integers(1, total, size=10))
    else:
        per_step = total // (settings.method.config.steps + 1)
        points = list(range(2 * per_step, 4 * per_step))
    for n in points:
        folder = tmp_path / f"cut{n}"
        trace, _ = _interrupt_at_line(n, where)
        with pytest.raises(KeyboardInterrupt):
            run(folder, trace)
        assert comparable(run(folder)) == reference, f"interrupted at line {n} of {total} in {where}"
