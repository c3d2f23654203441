"""The hostile-input suite: one fixture per way an auditor attacked the CLI.

Every case asserts the same contract (see ``assert_refused``): the exit status, exactly one
``error:`` line, no traceback, no file created outside the output (``Sandbox`` snapshots a
folder before and after), nothing partial left, and the input files untouched.

Commands run in-process through ``run_cli`` (fast); cases that need a real process (signals,
``kill -9``) use ``run_subprocess``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_line
from conftest import run_cli as shared_run_cli
from smoothinv.models import create_model, save_model


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> Run:
    """`smoothinv ARGS` in-process: (exit status, stdout, stderr)."""
    return Run(*shared_run_cli(monkeypatch, capsys, *args))


def run_subprocess(*args: object, cwd: Path | None = None, timeout: float = 120, env: dict | None = None
                   ) -> subprocess.CompletedProcess[str]:
    """`python -m smoothinv ARGS` in a child process with one torch thread."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200", **(env or {})}
    full_env.pop("SMOOTHINV_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "smoothinv", *(str(a) for a in args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def error_message(stderr: str, *, alone: bool = False) -> str:
    """The one `error: …` line (the last line on stderr); no traceback anywhere."""
    return error_line(stderr, alone=alone)


class Sandbox:
    """A folder whose every file is fingerprinted, so a test can assert what changed.

    ``snapshot()`` → {relative path: sha256 or "<dir>"}; ``assert_unchanged(before, allow=...)``
    checks that nothing outside the allowed relative paths appeared, vanished or changed.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def snapshot(self) -> dict[str, str]:
        state: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            for name in dirnames:
                state[os.path.relpath(os.path.join(dirpath, name), self.root)] = "<dir>"
            for name in filenames:
                path = os.path.join(dirpath, name)
                rel = os.path.relpath(path, self.root)
                if os.path.islink(path):
                    state[rel] = "<link>" + os.readlink(path)
                else:
                    state[rel] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        return state

    def assert_unchanged(self, before: dict[str, str], allow: tuple[str, ...] = ()) -> None:
        after = self.snapshot()

        def allowed(rel: str) -> bool:
            return any(rel == a or rel.startswith(a.rstrip("/") + "/") for a in allow)

        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and not allowed(k))
        assert not changed, f"files changed, created or removed: {changed[:10]}"


def assert_refused(run: Run, *mentions: str, code: int = 2, out: Path | None = None,
                   sandbox: Sandbox | None = None, before: dict[str, str] | None = None) -> str:
    """The contract for bad input: exit `code`, one `error:` line naming `mentions`, no traceback,
    no output directory nor `.NAME.partial-*` left, and the sandbox unchanged."""
    assert run.code == code, f"exit {run.code}\nstdout: {run.stdout}\nstderr: {run.stderr}"
    message = error_message(run.stderr)
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    if out is not None:
        assert not out.exists() or not any(out.iterdir()) or (before and out.name in {Path(k).parts[0] for k in before}), \
            f"{out} was written"
        if out.parent.exists():
            leftovers = sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial"))
            assert not leftovers, f"partial output left: {leftovers}"
    if sandbox is not None and before is not None:
        sandbox.assert_unchanged(before)
    return message


def gray_png(path: Path, seed: int, size: tuple[int, int] = (28, 28)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=size, dtype=np.uint8), mode="L").save(path)
    return path


@pytest.fixture(scope="session")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good inputs for a fast run: a tiny untrained 1×28×28 10-class safetensors model, an image,
    an ImageFolder and an .npz clean set. Tests copy what they mutate."""
    root = tmp_path_factory.mktemp("hostile_inputs")
    torch.manual_seed(0)
    model = create_model("small_cnn", 10).eval().requires_grad_(False)
    paths = {"model": root / "model.safetensors"}
    save_model(paths["model"], model, arch="small_cnn", num_classes=10, input_size=(28, 28), channels=1)
    paths["image"] = gray_png(root / "image.png", seed=2)
    folder = root / "clean_folder"
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        gray_png(folder / str(label) / "0.png", seed=100 + label)
    paths["clean_folder"] = folder
    x = np.random.default_rng(3).integers(0, 256, size=(20, 28, 28, 1), dtype=np.uint8)
    paths["clean_npz"] = root / "clean.npz"
    np.savez(paths["clean_npz"], x=x, y=np.arange(20) % 10)
    return paths


FAST_INVERT = ["--steps", "2", "--noise-samples", "2", "--eps", "1", "--sigma", "0.25", "--no-baseline"]
FAST_SCAN = ["--steps", "2", "--noise-samples", "2", "--eps", "1", "--sigma", "0.25", "--fallback-sigma", "none"]


@pytest.fixture(autouse=True)
def untouched_inputs_and_cwd(request, tmp_path_factory, monkeypatch):
    """Around every hostile case: the shared inputs stay byte for byte the same, and nothing
    appears in the working directory (each case runs in a fresh, empty one)."""
    inputs_root = request.getfixturevalue("inputs")["model"].parent if "inputs" in request.fixturenames else None
    sandbox = Sandbox(inputs_root) if inputs_root is not None else None
    before = sandbox.snapshot() if sandbox is not None else None
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)  # a case may chdir elsewhere itself; this one must then stay empty too
    yield
    if sandbox is not None and before is not None:
        sandbox.assert_unchanged(before)
    assert sorted(p.name for p in cwd.iterdir()) == [], "files appeared in the working directory"

