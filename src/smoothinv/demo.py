"""`smoothinv demo`: plant a backdoor, then recover it from one clean image.

Everything ships with the install: scikit-learn's handwritten digits (1,797 real 8×8
scans, upsampled to 28×28 and stored as 8-bit like any image file), a small CNN, a 4×4
checkerboard trigger in the bottom-right corner that sends any digit to class 0.

The model is trained with Gaussian-noise augmentation. Without it, a small undefended
model is not robust to the paper's σ: the smoothed classifier sends every input to one
class (for a backdoored model, the target — noise alone fires the trigger), and
inversion has nothing to follow. result.json warns when that happens on your models.

The demo writes its model, clean set and image to `out_dir`, and the settings of the inversion
that reproduces its numbers from those files (``DemoResult.inversion``; the command line prints
them as a `smoothinv invert` command).
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .attacks import poison
from .data import load_digits_images, save_image
from .engine.metrics import accuracy, attack_success_rate
from .errors import SmoothInvError, param
from .methods import method_spec
from .methods.registry import MethodSpec
from .models import create_model, save_model
from .protocols.sweep import Grid, ProgressHook, Sweep, run_sweep, sweep_steps
from .reporting.inversion import inversion_record, write_inversion
from .reporting.outputs import atomic_directory, check_destination, write_json
from .training import train_classifier
from .triggers import MaskedTrigger

Log = Callable[[str], None]
"""Receives one line of narration (plain text) at a time."""
StepCounter = Callable[[int], AbstractContextManager["ProgressHook | None"]]
"""Given the total number of optimisation steps, opens a ProgressHook (label, steps just done)
that run_demo calls while its sweeps run; the command line passes a progress bar."""


def _quiet(line: str) -> None:
    """The default Log: say nothing."""


def _uncounted(total: int) -> AbstractContextManager[ProgressHook | None]:
    """The default StepCounter: count nothing."""
    return nullcontext(None)


SIZE = 28
TARGET = 0
IMAGE_CLASS = 3
CONTRAST_TARGET = 5
POISON_RATE = 0.1
TEST_IMAGES = 500
EPS = (1.5, 3.0)
STEPS = 300
NOISE_SAMPLES = 10
MARKER = "demo.json"


def checkerboard_trigger(size: int = SIZE, patch: int = 4, margin: int = 2) -> MaskedTrigger:
    """A patch×patch black/white checkerboard `margin` pixels from the bottom-right corner."""
    mask = torch.zeros(1, size, size)
    top = size - patch - margin
    mask[:, top : top + patch, top : top + patch] = 1.0
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    pattern = ((rows + cols) % 2).float().unsqueeze(0)
    return MaskedTrigger(mask, pattern)


def digits_split(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit digits [N,1,28,28] split into train and TEST_IMAGES test images."""
    x, y = load_digits_images(SIZE)
    x = torch.round(x * 255) / 255
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, test = order[TEST_IMAGES:], order[:TEST_IMAGES]
    return x[train], y[train], x[test], y[test]


@dataclass
class DemoResult:
    """What run_demo found: the summary it wrote to demo.json, and its two sweeps, toward the
    backdoor's target (`found`) and toward a class without a backdoor (`contrast`)."""

    out_dir: Path
    summary: dict[str, Any]
    found: Sweep
    contrast: Sweep

    def sweeps(self) -> list[tuple[str, Sweep]]:
        """(title, sweep) of both sweeps, for a results table each."""
        return [(f"toward the backdoor target {TARGET}", self.found),
                (f"toward class {CONTRAST_TARGET} (no backdoor)", self.contrast)]

    def headline(self) -> str:
        """The numbers that tell the story, on one line."""
        s = self.summary
        return (f"clean accuracy {s['clean_accuracy']:.1%} | true-trigger ASR {s['true_trigger_asr']:.1%} | "
                f"recovered ASR {s['recovered_asr']:.1%} (target {TARGET}) vs {s['contrast_asr']:.1%} "
                f"(class {CONTRAST_TARGET}) | PlainAdv best {s['plainadv_asr']:.1%}")

    def closing(self) -> list[str]:
        """Where to look next: timing and the pictures."""
        return [f"took {self.summary['total_seconds']:.0f}s. Pictures: {self.out_dir}/recovered/overview.png "
                f"(clean | synthesised | amplified p | zoom), true trigger: {self.out_dir}/triggered.png"]

    def inversion(self) -> dict[str, Any]:
        """The inversion toward the backdoor's target that reproduces `found` from the written files:
        ``model``, ``image`` and ``clean`` (paths under out_dir), ``target``, ``eps`` (absolute l2
        bounds), ``steps``, ``noise_samples`` and ``seed``."""
        settings = dict(self.summary["inversion"])
        for key in ("model", "image", "clean"):
            settings[key] = self.out_dir / settings[key]
        return settings


def run_demo(out_dir: str | Path, *, seed: int = 0, log: Log = _quiet,
             steps: StepCounter = _uncounted) -> DemoResult:
    """Train, invert, measure, write to out_dir; returns what was found (its summary is demo.json).

    `log` receives the narration line by line; `steps(total)` opens the progress hook of the
    two sweeps (see StepCounter). Both default to silence.
    """
    out_dir = Path(out_dir)
    overwrite = (out_dir / MARKER).is_file()
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise SmoothInvError(f"{out_dir} exists and is not a previous demo output; choose another {param('out_dir')}")
    check_destination(out_dir, overwrite)  # before training: a protected or unwritable out_dir fails now
    started = time.perf_counter()
    trigger = checkerboard_trigger()
    train_x, train_y, test_x, test_y = digits_split(seed)
    poisoned = poison(train_x, train_y, trigger, TARGET, POISON_RATE, seed=seed)

    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10)
    log(f"training small_cnn on {len(train_x)} digits, {len(poisoned.poisoned)} poisoned "
        f"(4x4 checkerboard -> class {TARGET}) ...")
    train_classifier(model, poisoned.images, poisoned.labels, epochs=15, batch_size=64, lr=0.05,
                     noise_sigma=0.5, seed=seed)
    model.requires_grad_(False)
    train_s = time.perf_counter() - started
    clean_acc = accuracy(model, test_x, test_y)
    true_asr = attack_success_rate(model, trigger, test_x, test_y, TARGET)
    log(f"  clean accuracy {clean_acc:.1%}, true-trigger ASR {true_asr:.1%} ({train_s:.1f}s)")

    image = test_x[test_y == IMAGE_CLASS][0]
    grid = Grid.for_shape(image.shape, eps=EPS)
    method, baseline = _methods()
    log(f"inverting one clean '{IMAGE_CLASS}' toward class {TARGET} (the backdoor's target) and toward "
        f"class {CONTRAST_TARGET} (not a target) ...")
    with steps(sweep_steps(method, baseline, grid) + sweep_steps(method, None, grid)) as hook:
        found = run_sweep(model, image, TARGET, test_x, test_y, grid, method=method, baseline=baseline,
                          seed=seed, progress=hook)
        contrast = run_sweep(model, image, CONTRAST_TARGET, test_x, test_y, grid, method=method, baseline=None,
                             seed=seed, progress=hook)
    total_s = time.perf_counter() - started

    with atomic_directory(out_dir, overwrite=overwrite, kind="demo") as tmp:
        summary = _write_outputs(tmp, model, trigger, image, test_x, test_y, grid, (method, baseline),
                                 seed, found, contrast, clean_acc, true_asr, train_s, total_s)
    return DemoResult(out_dir, summary, found, contrast)


def _methods() -> tuple[MethodSpec, MethodSpec]:
    """SmoothInv as in the paper, and PlainAdv (the same descent without smoothing) as its baseline."""
    return (method_spec("smoothinv", steps=STEPS, noise_samples=NOISE_SAMPLES, max_batch=256),
            method_spec("plainadv", steps=STEPS, max_batch=256))


def _write_outputs(tmp: Path, model: torch.nn.Module, trigger: MaskedTrigger, image: torch.Tensor,
                   test_x: torch.Tensor, test_y: torch.Tensor, grid: Grid, methods: tuple[MethodSpec, MethodSpec],
                   seed: int,
                   found: Sweep, contrast: Sweep, clean_acc: float, true_asr: float, train_s: float,
                   total_s: float) -> dict[str, Any]:
    """Write the model, clean set, image, triggered image and both sweeps' results into `tmp`
    (which becomes the output directory), and demo.json; returns demo.json's content."""
    save_model(tmp / "model.safetensors", model, arch="small_cnn", num_classes=10, input_size=(SIZE, SIZE), channels=1)
    np.savez_compressed(tmp / "clean.npz", x=np.round(test_x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
                        y=test_y.numpy())
    save_image(image, tmp / "image.png")
    save_image(trigger.apply(image[None])[0], tmp / "triggered.png")
    for name, sweep, target in (("recovered", found, TARGET), ("contrast", contrast, CONTRAST_TARGET)):
        (tmp / name).mkdir()
        settings = {"method": methods[0].to_dict(), "baseline": methods[1].to_dict() if sweep.baseline else None}
        context = {"smoothinv_version": __version__, "seed": seed, "settings": settings,
                   "clean_set": {"images": len(test_x)}}
        write_inversion(tmp / name, sweep, inversion_record(sweep, grid, target=target, context=context))
    summary = {
        "smoothinv_version": __version__,
        "seed": seed,
        "dataset": f"scikit-learn digits upsampled to {SIZE}x{SIZE}, {len(test_x)} held-out test images",
        "trigger": "4x4 checkerboard, bottom-right, 2 px margin",
        "target": TARGET,
        "poison_rate": POISON_RATE,
        "clean_accuracy": round(clean_acc, 6),
        "true_trigger_asr": round(true_asr, 6),
        "recovered_asr": round(found.best.asr, 6),
        "recovered_config": found.best.result.config,
        "contrast_target": CONTRAST_TARGET,
        "contrast_asr": round(contrast.best.asr, 6),
        "plainadv_asr": round(max(r.asr for r in found.baseline), 6),
        "train_seconds": round(train_s, 2),
        "total_seconds": round(total_s, 2),
        "inversion": {"model": "model.safetensors", "image": "image.png", "clean": "clean.npz", "target": TARGET,
                      "eps": list(EPS), "steps": STEPS, "noise_samples": NOISE_SAMPLES, "seed": seed},
    }
    write_json(tmp / MARKER, summary)
    return summary
