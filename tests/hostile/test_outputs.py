"""--out is never a place whose loss hurts, and it is checked before any work (findings:
`--out . --overwrite` deleted the current folder with the inputs in it; an unwritable --out
failed only after all the computing; `kill -9` left `.NAME.partial-*` behind forever)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smoothinv.errors import SmoothInvError
from smoothinv.reporting import outputs
from smoothinv.reporting.outputs import MARKER, STALE_AFTER_S, atomic_directory, write_text

from .conftest import FAST_INVERT, FAST_SCAN, Sandbox, assert_refused, run_cli


@pytest.fixture
def workdir(tmp_path: Path, inputs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding copies of the inputs, made the current directory."""
    root = tmp_path / "work"
    root.mkdir()
    for key in ("model", "image", "clean_npz"):
        shutil.copy(inputs[key], root / inputs[key].name)
    monkeypatch.chdir(root)
    return root


def _invert(out: object, *extra: object) -> list[object]:
    return ["invert", "--model", "model.safetensors", "--image", "image.png", "--target", "3",
            "--clean", "clean.npz", "--out", out, *FAST_INVERT, *extra]


def _scan(out: object, *extra: object) -> list[object]:
    return ["scan", "--model", "model.safetensors", "--image", "image.png", "--clean", "clean.npz",
            "--out", out, *FAST_SCAN, *extra]


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the command reaches the inversion: the destination must be checked first."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the inversion ran before --out was checked")

    monkeypatch.setattr("smoothinv.cli.main.run_sweep", boom)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _leftover(parent: Path, name: str, *, pid: int | None, age_s: float = 0.0, output: str = "run") -> Path:
    folder = parent / name
    folder.mkdir()
    (folder / "result.json").write_text("{}")
    if pid is not None:
        marker = {"tool": "smoothinv", "version": "0", "kind": "invert", "output": output, "pid": pid,
                  "host": socket.gethostname(), "created_unix": time.time() - age_s}
        (folder / MARKER).write_text(json.dumps(marker))
    return folder


# ---------------------------------------------------------------- 7: what --overwrite may replace


@pytest.mark.parametrize("out", [".", "./", "..", "/"])
def test_out_on_the_current_folder_or_above_is_refused(monkeypatch, capsys, workdir, no_compute, out):
    sandbox = Sandbox(workdir.parent)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(out, "--overwrite"))
    assert_refused(run, "current directory", sandbox=sandbox, before=before)


def test_out_on_the_home_directory_is_refused(monkeypatch, capsys, workdir, tmp_path, no_compute):
    home = tmp_path / "home"
    home.mkdir()
    (home / "precious.txt").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert(home, "--overwrite"))
    assert_refused(run, "home directory", sandbox=sandbox, before=before)


def test_scan_refuses_the_current_folder_too(monkeypatch, capsys, workdir):
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_scan(".", "--overwrite"))
    assert_refused(run, "current directory", sandbox=sandbox, before=before)


def test_out_holding_an_input_is_refused(monkeypatch, capsys, workdir, no_compute):
    data = workdir / "data"
    data.mkdir()
    shutil.move(workdir / "image.png", data / "image.png")
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    args = [a if a != "image.png" else "data/image.png" for a in _invert("data", "--overwrite")]
    run = run_cli(monkeypatch, capsys, *args)
    assert_refused(run, "holds the input", sandbox=sandbox, before=before)


def test_out_inside_an_input_folder_is_refused(monkeypatch, capsys, workdir, inputs, no_compute):
    shutil.copytree(inputs["clean_folder"], workdir / "clean_folder")
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    args = [a if a != "clean.npz" else "clean_folder" for a in _invert("clean_folder/results/run1")]
    run = run_cli(monkeypatch, capsys, *args)
    assert_refused(run, "inside the input folder", sandbox=sandbox, before=before)


def test_a_deleted_working_directory_does_not_break_the_check(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with atomic_directory(tmp_path / "run") as tmp:
        (tmp / "x").write_text("1")
    assert (tmp_path / "run" / "x").is_file()


def test_overwrite_refuses_a_folder_smoothinv_did_not_write(monkeypatch, capsys, workdir, no_compute):
    mine = workdir / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert("mine", "--overwrite"))
    assert_refused(run, "not written by smoothinv", sandbox=sandbox, before=before)


def test_overwrite_refuses_a_previous_output_with_files_added(monkeypatch, capsys, workdir):
    assert run_cli(monkeypatch, capsys, *_invert("run")).code == 0
    (workdir / "run" / "my-notes.txt").write_text("added by the auditor")
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert("run", "--overwrite"))
    assert_refused(run, "did not write", "my-notes.txt", sandbox=sandbox, before=before)


def test_overwrite_replaces_a_previous_output(monkeypatch, capsys, workdir):
    assert run_cli(monkeypatch, capsys, *_invert("run")).code == 0
    marker = json.loads((workdir / "run" / MARKER).read_text())
    assert marker["tool"] == "smoothinv" and marker["kind"] == "invert" and "result.json" in marker["files"]
    first = (workdir / "run" / "result.json").read_text()
    run = run_cli(monkeypatch, capsys, *_invert("run", "--overwrite", "--seed", "1"))
    assert run.code == 0, run.stderr
    assert (workdir / "run" / "result.json").read_text() != first
    assert sorted(p.name for p in workdir.iterdir()) == ["clean.npz", "image.png", "model.safetensors", "run"]


def test_without_overwrite_a_previous_output_is_kept(monkeypatch, capsys, workdir):
    assert run_cli(monkeypatch, capsys, *_invert("run")).code == 0
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert("run"))
    assert_refused(run, "--overwrite", sandbox=sandbox, before=before)


# ---------------------------------------------------------------- 9: unwritable --out, found first


def test_out_under_a_file_is_refused_before_any_work(monkeypatch, capsys, workdir, no_compute):
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert("image.png/results/run1"))
    assert_refused(run, "image.png", "not a directory", sandbox=sandbox, before=before)


def test_out_that_is_a_file_is_refused(monkeypatch, capsys, workdir, no_compute):
    sandbox = Sandbox(workdir)
    before = sandbox.snapshot()
    run = run_cli(monkeypatch, capsys, *_invert("image.png", "--overwrite"))
    assert_refused(run, "is a file", sandbox=sandbox, before=before)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions, so a chmod 0o555 folder is still writable")
def test_out_in_a_read_only_folder_is_refused_before_any_work(monkeypatch, capsys, workdir, no_compute):
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        sandbox = Sandbox(workdir)
        before = sandbox.snapshot()
        run = run_cli(monkeypatch, capsys, *_invert("locked/run"))
        assert_refused(run, "not writable", sandbox=sandbox, before=before)
    finally:
        locked.chmod(0o755)


def test_unwritable_parent_is_refused_by_the_probe(tmp_path, monkeypatch):
    """The probe (create and remove a folder) decides, not os.access alone: as root, os.access says yes."""
    def refuse(*args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(outputs.tempfile, "mkdtemp", refuse)
    with pytest.raises(SmoothInvError, match="not writable"):
        outputs.check_destination(tmp_path / "run", overwrite=False)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 10: leftovers of killed runs


def test_stale_partials_of_this_output_are_cleaned(monkeypatch, capsys, workdir):
    dead = _dead_pid()
    stale = _leftover(workdir, ".run.partial-abc12345", pid=dead)
    stale_old = _leftover(workdir, ".run.old-def67890", pid=dead)
    ancient = _leftover(workdir, ".run.partial-ancient1", pid=os.getppid(), age_s=STALE_AFTER_S + 60)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = _leftover(workdir, ".run.partial-running1", pid=alive.pid)
        lookalike = _leftover(workdir, ".run.partial-notours1", pid=None)
        other_output = _leftover(workdir, ".run.partial-other001", pid=dead, output="run2")
        run = run_cli(monkeypatch, capsys, *_invert("run"))
        assert run.code == 0, run.stderr
    finally:
        alive.kill()
        alive.wait()
    assert not stale.exists() and not stale_old.exists() and not ancient.exists()
    assert running.exists(), "a partial of a live process was removed"
    assert lookalike.exists() and (lookalike / "result.json").read_text() == "{}", "a folder without our marker was removed"
    assert other_output.exists(), "a partial of another output was removed"


def test_kill_9_while_writing_leaves_a_partial_that_the_next_run_removes(monkeypatch, capsys, workdir):
    """A real SIGKILL inside atomic_directory, then a normal run into the same --out."""
    crash = ("import os, signal, sys\n"
             "from smoothinv.reporting.outputs import atomic_directory\n"
             "with atomic_directory(sys.argv[1], kind='invert') as tmp:\n"
             "    (tmp / 'result.json').write_text('half')\n"
             "    os.kill(os.getpid(), signal.SIGKILL)\n")
    child = subprocess.run([sys.executable, "-c", crash, str(workdir / "run")], capture_output=True, timeout=120)
    assert child.returncode == -9
    partials = list(workdir.glob(".run.partial-*"))
    assert len(partials) == 1 and (partials[0] / MARKER).is_file()
    assert not (workdir / "run").exists()
    run = run_cli(monkeypatch, capsys, *_invert("run"))
    assert run.code == 0, run.stderr
    assert not list(workdir.glob(".run.*")), "the killed run's partial was not cleaned"
    assert (workdir / "run" / "result.json").is_file()


def test_partial_carries_the_marker_while_the_block_runs(tmp_path):
    with atomic_directory(tmp_path / "run", kind="test") as tmp:
        marker = json.loads((tmp / MARKER).read_text())
        assert marker["pid"] == os.getpid() and marker["output"] == "run" and marker["kind"] == "test"
        assert "files" not in marker  # not a finished output: --overwrite would refuse it


def test_failed_block_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "a" / "b" / "run") as tmp:
            (tmp / "x").write_text("1")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_write_text_into_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(SmoothInvError, match="cannot write") as info:
        write_text(tmp_path / "missing" / "report.json", "{}")
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bench_file_out_is_checked_before_any_work(monkeypatch, capsys, tmp_path):
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the benchmark ran before --out was checked")

    monkeypatch.setattr("smoothinv.cli.bench.detect_benchmark", boom)
    (tmp_path / "a-file").write_text("x")
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    for out, mention in ((tmp_path / "missing" / "r.json", "does not exist"), (tmp_path, "is a directory"),
                         (tmp_path / "a-file" / "r.json", "does not exist")):
        run = run_cli(monkeypatch, capsys, "bench", "detect", "--out", out)
        assert_refused(run, mention, sandbox=sandbox, before=before)
