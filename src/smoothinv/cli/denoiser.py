"""`--denoiser` (T in the smoothed classifier) for the commands that smooth, and `smoothinv denoiser`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import click
from rich.console import Console
from rich.markup import escape

from ..data.datasets import load_dataset
from ..denoiser_training import DenoiserRecipe, train_denoiser
from ..denoisers import DenoiserRef, OneShotDenoiser, list_denoisers, load_denoiser, open_denoiser, resolve_denoiser
from ..denoisers.quality import denoising_psnr
from ..errors import SmoothInvError
from ..reporting.outputs import check_file_destination, write_json
from .params import BOUNDS, MAX_IMAGES

err = Console(stderr=True)
stdout = Console(soft_wrap=True)

DENOISER_HELP = ("T in the smoothed classifier (SmoothInv 'w/ diffusion'): a shipped denoiser's name (see "
                 "`smoothinv denoiser list`) or a diffusers DDPM/DDIM folder; default: none.")


def denoiser_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--denoiser", help=DENOISER_HELP)(command)


def chosen_denoiser(text: str | None, *, trust_code: bool, channels: int, size: Sequence[int],
                    sigmas: Sequence[float]) -> tuple[DenoiserRef | None, OneShotDenoiser | None]:
    """--denoiser resolved, opened and checked against the model's images before any long work;
    warns on stderr about σ outside the range it was trained for."""
    if text is None:
        return None, None
    ref = resolve_denoiser(text, trust_code=trust_code)
    denoiser = open_denoiser(ref)
    denoiser.check_images(channels, (int(size[0]), int(size[1])))
    outside = denoiser.outside_training(list(sigmas))
    if outside:
        low, high = denoiser.info.trained_sigma or (0, 0)
        err.print(escape(f"warning: denoiser {ref.name} was trained for sigma {low:.3g}–{high:.3g}; sigma "
                         f"{', '.join(f'{s:g}' for s in outside)} lies outside it"), style="yellow",
                  highlight=False, soft_wrap=True)
    return ref, denoiser


@click.group("denoiser")
def denoiser_group() -> None:
    """Diffusion denoisers for SmoothInv 'w/ diffusion': list, measure, train."""


@denoiser_group.command("list")
def list_command() -> None:
    """The denoisers that ship with smoothinv."""
    for name, description in list_denoisers().items():
        stdout.print(f"{name:<20} {description}")


@denoiser_group.command("psnr")
@click.option("--denoiser", "text", required=True, help="A shipped denoiser's name or a diffusers DDPM folder.")
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "fashion-mnist"]),
              help="Test images to denoise (from --data-root).")
@click.option("--sigma", type=BOUNDS.positive_sigmas, default="0.12,0.25,0.5,1.0", show_default=True)
@click.option("--images", default=500, show_default=True, type=click.IntRange(1, MAX_IMAGES))
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--trust-code", is_flag=True, help="Allow pickled (.bin) weights. Only for files you trust.")
@click.option("--out", type=click.Path(path_type=Path), help="Write the rows as JSON here.")
def psnr_command(text: str, dataset: str, sigma: tuple[float, ...], images: int, data_root: Path | None, seed: int,
                 trust_code: bool, out: Path | None) -> None:
    """PSNR of the denoised test images against the clean ones, per sigma, beside the noisy input's."""
    if out is not None:
        check_file_destination(out)
    denoiser = load_denoiser(text, trust_code=trust_code)
    x, _ = load_dataset(dataset, data_root).split(train=False)
    x = x[:images]
    denoiser.check_images(x.shape[1], (x.shape[2], x.shape[3]))
    rows = denoising_psnr(denoiser, x, sigma, seed=seed)
    stdout.print("| sigma | t* | noisy PSNR (dB) | noisy, clipped to [0,1] | denoised |")
    stdout.print("|---|---|---|---|---|")
    for row in rows:
        row["timestep"] = denoiser.timestep(row["sigma"])
        stdout.print(f"| {row['sigma']:g} | {row['timestep']} | {row['psnr_noisy']:.2f} | {row['psnr_clipped']:.2f} | "
                     f"{row['psnr_denoised']:.2f} |")
    if out is not None:
        write_json(out, {"denoiser": denoiser.describe(list(sigma)), "dataset": dataset, "images": len(x),
                         "seed": seed, "rows": rows})


@denoiser_group.command("train")
@click.option("--dataset", required=True, type=click.Choice(["cifar10", "fashion-mnist"]))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Folder for the diffusers-format denoiser (a checkpoint there is resumed).")
@click.option("--steps", default=DenoiserRecipe.steps, show_default=True, type=click.IntRange(1, 10_000_000))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--data-root", type=click.Path(path_type=Path))
def train_command(dataset: str, out: Path, steps: int, seed: int, data_root: Path | None) -> None:
    """Train a small one-shot DDPM denoiser on a dataset's training images (docs/denoisers.md)."""
    if out.exists() and not (out / "checkpoint.pt").is_file() and any(out.iterdir()):
        raise SmoothInvError(f"{out} exists and holds no training checkpoint; give a new folder")
    x, _ = load_dataset(dataset, data_root).split(train=True)
    recipe = DenoiserRecipe(steps=steps, seed=seed)

    def report(step: int, total: int, loss: float, seconds: float) -> None:
        err.print(f"step {step}/{total}: loss {loss:.4f} ({seconds:.0f}s)", highlight=False)

    train_denoiser(x, recipe, out, name=out.name, dataset=dataset, on_step=report)
    stdout.print(f"wrote {escape(str(out))} (use it with --denoiser {escape(str(out))})")
