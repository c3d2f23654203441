"""`smoothinv demo`: plant a backdoor, then recover it from one clean image.

Everything ships with the install: scikit-learn's handwritten digits (1,797 real 8×8
scans, upsampled to 28×28 and stored as 8-bit like any image file), a small CNN, a 4×4
checkerboard trigger in the bottom-right corner that sends any digit to class 0.

The model is trained with Gaussian-noise augmentation. Without it, a small undefended
model is not robust to the paper's σ: the smoothed classifier sends every input to one
class (for a backdoored model, the target — noise alone fires the trigger), and
inversion has nothing to follow. result.json warns when that happens on your models.

The demo writes its model, clean set and image to --out and prints the `smoothinv
invert` command that reproduces its numbers from those files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from . import __version__
from .attacks import poison
from .data import load_digits_images, save_image
from .engine.metrics import accuracy, attack_success_rate
from .engine.sweep import Grid, Sweep, run_sweep, sweep_steps
from .errors import SmoothInvError
from .models import create_model, save_model
from .reporting.inversion import inversion_record, write_inversion
from .reporting.outputs import atomic_directory, check_destination, write_json
from .cli.progress import step_progress
from .cli.tables import sweep_table
from .training import train_classifier
from .triggers import MaskedTrigger

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


def run_demo(out_dir: str | Path, *, seed: int = 0, console: Console, progress_console: Console) -> dict[str, Any]:
    """Train, invert, measure, write to out_dir; returns the summary written to demo.json."""
    out_dir = Path(out_dir)
    overwrite = (out_dir / MARKER).is_file()
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise SmoothInvError(f"{out_dir} exists and is not a previous demo output; choose another --out")
    check_destination(out_dir, overwrite)  # before training: a protected or unwritable --out fails now
    started = time.perf_counter()
    trigger = checkerboard_trigger()
    train_x, train_y, test_x, test_y = digits_split(seed)
    poisoned = poison(train_x, train_y, trigger, TARGET, POISON_RATE, seed=seed)

    torch.manual_seed(seed)
    model = create_model("small_cnn", num_classes=10)
    console.print(f"training small_cnn on {len(train_x)} digits, {len(poisoned.poisoned)} poisoned "
                  f"(4x4 checkerboard -> class {TARGET}) ...")
    train_classifier(model, poisoned.images, poisoned.labels, epochs=15, batch_size=64, lr=0.05,
                     noise_sigma=0.5, seed=seed)
    model.requires_grad_(False)
    train_s = time.perf_counter() - started
    clean_acc = accuracy(model, test_x, test_y)
    true_asr = attack_success_rate(model, trigger, test_x, test_y, TARGET)
    console.print(f"  clean accuracy {clean_acc:.1%}, true-trigger ASR {true_asr:.1%} ({train_s:.1f}s)")

    image = test_x[test_y == IMAGE_CLASS][0]
    grid = Grid.for_shape(image.shape, eps=EPS)
    options = {"steps": STEPS, "noise_samples": NOISE_SAMPLES, "max_batch": 256}
    total = sweep_steps("pgd", "plainadv", grid, STEPS) + sweep_steps("pgd", None, grid, STEPS)
    console.print(f"inverting one clean '{IMAGE_CLASS}' toward class {TARGET} (the backdoor's target) and toward "
                  f"class {CONTRAST_TARGET} (not a target) ...")
    with step_progress(total, progress_console) as hook:
        found = run_sweep(model, image, TARGET, test_x, test_y, grid, method="pgd", baseline="plainadv",
                          options=options, seed=seed, progress=hook)
        contrast = run_sweep(model, image, CONTRAST_TARGET, test_x, test_y, grid, method="pgd", baseline=None,
                             options=options, seed=seed, progress=hook)
    total_s = time.perf_counter() - started

    with atomic_directory(out_dir, overwrite=overwrite, kind="demo") as tmp:
        summary = _write_outputs(tmp, out_dir, model, trigger, image, test_x, test_y, grid, options, seed,
                                 found, contrast, clean_acc, true_asr, train_s, total_s)
    console.print(sweep_table(found, f"toward the backdoor target {TARGET}"))
    console.print(sweep_table(contrast, f"toward class {CONTRAST_TARGET} (no backdoor)"))
    console.print(
        f"[bold]clean accuracy {clean_acc:.1%} | true-trigger ASR {true_asr:.1%} | recovered ASR "
        f"{found.best.asr:.1%} (target {TARGET}) vs {contrast.best.asr:.1%} (class {CONTRAST_TARGET}) | "
        f"PlainAdv best {max(r.asr for r in found.baseline):.1%}[/]"
    )
    console.print(f"took {total_s:.0f}s. Pictures: {out_dir}/recovered/overview.png "
                  f"(clean | synthesised | amplified p | zoom), true trigger: {out_dir}/triggered.png")
    console.print(f"reproduce with the CLI: {summary['cli_command']}")
    return summary


def _write_outputs(tmp: Path, out_dir: Path, model: torch.nn.Module, trigger: MaskedTrigger, image: torch.Tensor,
                   test_x: torch.Tensor, test_y: torch.Tensor, grid: Grid, options: dict[str, Any], seed: int,
                   found: Sweep, contrast: Sweep, clean_acc: float, true_asr: float, train_s: float,
                   total_s: float) -> dict[str, Any]:
    save_model(tmp / "model.safetensors", model, arch="small_cnn", num_classes=10, input_size=(SIZE, SIZE), channels=1)
    np.savez_compressed(tmp / "clean.npz", x=np.round(test_x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8),
                        y=test_y.numpy())
    save_image(image, tmp / "image.png")
    save_image(trigger.apply(image[None])[0], tmp / "triggered.png")
    for name, sweep, target in (("recovered", found, TARGET), ("contrast", contrast, CONTRAST_TARGET)):
        (tmp / name).mkdir()
        context = {"smoothinv_version": __version__, "seed": seed, "settings": options, "clean_set": {"images": len(test_x)}}
        write_inversion(tmp / name, sweep, inversion_record(sweep, grid, target=target, context=context))
    command = (f"smoothinv invert --model {out_dir}/model.safetensors --image {out_dir}/image.png --target {TARGET} "
               f"--clean {out_dir}/clean.npz --eps {','.join(f'{e:g}' for e in EPS)} --steps {STEPS} "
               f"--noise-samples {NOISE_SAMPLES} --seed {seed} --out {out_dir}/cli-run --overwrite")
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
        "cli_command": command,
    }
    write_json(tmp / MARKER, summary)
    return summary
