"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core: one torch thread each, in this process and in the
    # subprocesses tests start (two 2-thread jobs on two cores run many times slower).
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

PLANTED_TARGET = 7


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tests use tiny tensors, for which one thread is faster and fairer to a shared machine.
    Modules that train real models (end-to-end) set their own thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cnn(channels: int = 3, classes: int = 3, seed: int = 0) -> nn.Module:
    """A 2-conv CNN for 8x8 inputs, seeded."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, classes),
    ).eval()

@pytest.fixture(scope="module")
def trained():
    """tiny_cnn trained on 3-channel bar data (noise-augmented), >= 90% accurate: (model, images, labels)."""
    from smoothinv.training import train_classifier

    images, labels = bar_data()
    model = tiny_cnn(seed=1)
    train_classifier(model, images, labels, epochs=10, batch_size=30, lr=0.1, noise_sigma=0.3, seed=0)
    with torch.no_grad():
        assert float((model(images).argmax(1) == labels).float().mean()) >= 0.9
    return model, images, labels


@pytest.fixture(scope="module")
def image(trained):
    """A class-0 image [3,8,8] of the bar data."""
    _, images, labels = trained
    return images[labels == 0][0]


def bar_data(n_per_class: int = 40, classes: int = 3, channels: int = 3, seed: int = 0):
    """C×8×8 images: class c has a bright horizontal bar on rows 2c, 2c+1."""
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for c in range(classes):
        x = torch.rand(n_per_class, channels, 8, 8, generator=g) * 0.3
        x[:, :, 2 * c : 2 * c + 2, :] = 0.7 + 0.3 * torch.rand(n_per_class, channels, 2, 8, generator=g)
        images.append(x)
        labels.append(torch.full((n_per_class,), c, dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def _digits_model(poisoned: bool):
    """small_cnn on 20x20 digits (noise-augmented), with or without a 3x3 checkerboard
    backdoor in the top-left corner -> class 7; returns (model, trigger, test x, test y)."""
    from smoothinv.attacks import poison
    from smoothinv.data import load_digits_images
    from smoothinv.models import create_model
    from smoothinv.training import train_classifier
    from smoothinv.triggers import MaskedTrigger

    torch.manual_seed(1)
    x, y = load_digits_images(20)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    train, test = order[400:], order[:400]
    mask = torch.zeros(1, 20, 20)
    mask[:, 1:4, 1:4] = 1
    pattern = (torch.arange(20).view(-1, 1) + torch.arange(20)).remainder(2).float().expand(1, 20, 20)
    trigger = MaskedTrigger(mask, pattern)
    train_x, train_y = x[train], y[train]
    if poisoned:
        data = poison(train_x, train_y, trigger, PLANTED_TARGET, 0.1, seed=1)
        train_x, train_y = data.images, data.labels
    model = create_model("small_cnn", 10)
    train_classifier(model, train_x, train_y, epochs=12, batch_size=64, lr=0.05, noise_sigma=0.5, seed=1)
    model.requires_grad_(False)
    return model, trigger, x[test], y[test]


@pytest.fixture(scope="session")
def planted():
    """A tiny backdoored digits model trained in the test session (seconds)."""
    return _digits_model(poisoned=True)


@pytest.fixture(scope="session")
def planted_clean_twin():
    """The same model trained without the backdoor."""
    return _digits_model(poisoned=False)


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run `smoothinv ARGS` in-process (fast); return (exit status, stdout, stderr)."""
    import sys

    from smoothinv.cli.main import main

    monkeypatch.setattr(sys, "argv", ["smoothinv", *(str(a) for a in args)])
    monkeypatch.delenv("SMOOTHINV_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()  # drop anything earlier
    try:
        main()
        code = 0
    except SystemExit as e:
        code = 0 if e.code is None else int(e.code)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(stderr: str, *, alone: bool = True) -> str:
    """The `error: …` line, checking it is a single line and that there is no traceback.

    alone: stderr holds nothing but that line; otherwise earlier progress output is
    allowed but the error must be the last line.
    """
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    if alone:
        assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[-1].startswith("error: "), stderr
    assert sum("error:" in line for line in lines) == 1, stderr
    message = lines[-1][len("error: "):].strip()
    assert message, "empty error message"
    return message
