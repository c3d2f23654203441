"""`smoothinv zoo build|import|list|sanity|report`."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from ..bench.denoising import model_denoiser
from ..data.datasets import load_dataset
from ..denoisers import open_denoiser
from ..engine.sanity import sanity_table
from ..reporting.outputs import write_text
from ..reporting.zoo_report import zoo_markdown
from ..zoo import all_recipes, get_recipe, list_zoo, load_zoo_model
from ..zoo.build import build, is_built
from ..zoo.manifest import import_records, zoo_dir as zoo_dir_path
from .params import BOUNDS

REPORT_COMMAND = "smoothinv zoo report --out docs/zoo.md"
"""The command docs/zoo.md names as the way to regenerate it."""
err = Console(stderr=True)
stdout = Console(soft_wrap=True)


@click.group("zoo")
def zoo_group() -> None:
    """Backdoored and clean models with known triggers (build, list)."""


@zoo_group.command("build")
@click.option("--recipe", "names", multiple=True, help="Build only these recipes (repeatable); default: all.")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Folder with cifar10-jpeg.tar and fashion-mnist/ (default: $SMOOTHINV_DATA or ../shared/data).")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Where models and manifest.json go (default: the package's zoo).")
@click.option("--force", is_flag=True, help="Rebuild recipes that are already built.")
def build_command(names: tuple[str, ...], data_root: Path | None, zoo_dir: Path | None, force: bool) -> None:
    """Train the zoo's models; models already built are skipped (resumable)."""
    recipes = [get_recipe(n) for n in names] if names else all_recipes()
    for recipe in recipes:
        if not force and is_built(recipe, zoo_dir):
            err.print(f"{recipe.name}: already built, skipping")
            continue
        err.print(f"{recipe.name}: training {recipe.arch} on {recipe.dataset} for {recipe.epochs} epochs ...")
        build(recipe, data_root=data_root, directory=zoo_dir, log=lambda line: err.print(escape(line), highlight=False))


@zoo_group.command("import")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--recipe", "names", multiple=True, help="Import only these models (repeatable); default: all in SOURCE.")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Zoo to import into (default: the package's zoo).")
def import_command(source: Path, names: tuple[str, ...], zoo_dir: Path | None) -> None:
    """Add models built with `zoo build --zoo-dir SOURCE` (elsewhere, or in parallel) to the zoo; hashes are checked."""
    for name in import_records(source, list(names) or None, zoo_dir):
        err.print(f"{name}: imported")


@zoo_group.command("list")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Zoo directory (default: the package's zoo).")
def list_command(zoo_dir: Path | None) -> None:
    """The built models with their clean accuracy and true-trigger ASR; recipes not built yet."""
    built = {r["name"]: r for r in list_zoo(zoo_dir)}
    for recipe in all_recipes():
        r = built.get(recipe.name)
        if r is None:
            stdout.print(f"{recipe.name:<24} (not built)")
            continue
        stdout.print(_list_row(r), highlight=False)
    if built:
        stdout.print(f"weights: {zoo_dir_path(zoo_dir)}/<name>.safetensors (pass one to scan, invert or sanity as --model)",
                     highlight=False, soft_wrap=True)


def _list_row(r: dict) -> str:
    """One `zoo list` line; fields a manifest from elsewhere may lack are left out."""
    attack = r.get("attack")
    kind = "clean" if not attack else f"{attack.get('attack', '?')} -> {r.get('target')} ({r.get('mode')})"
    acc = "" if r.get("clean_accuracy") is None else f" acc {r['clean_accuracy']:.1%}"
    asr = "" if r.get("true_trigger_asr") is None else f"  ASR {r['true_trigger_asr']:.1%}"
    seconds = "" if r.get("train_seconds") is None else f"  {r['train_seconds']:.0f}s"
    return escape(f"{r['name']:<24} {r.get('arch', '?'):<10} {kind:<32}{acc}{asr}{seconds}")


@zoo_group.command("sanity")
@click.argument("name")
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset folder (default: $SMOOTHINV_DATA or ../shared/data).")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Zoo directory (default: the package's zoo).")
@click.option("--images", default=500, show_default=True, type=BOUNDS.images, help="Test images to use.")
@click.option("--noise-samples", default=10, show_default=True, type=BOUNDS.noise_samples, help="Noise samples N of G.")
@click.option("--denoiser", help="T in G: 'auto' (the shipped denoiser of the model's dataset), a shipped denoiser's "
                                 "name or a diffusers DDPM folder; default: none.")
def sanity_command(name: str, data_root: Path | None, zoo_dir: Path | None, images: int, noise_samples: int,
                   denoiser: str | None) -> None:
    """Clean accuracy and true-trigger ASR of a zoo model's smoothed classifier at σ ∈ {0,.12,.25,.5,1}."""
    rows = zoo_sanity(name, data_root, zoo_dir, images, noise_samples, denoiser)
    for row in rows:
        asr = "" if row["trigger_asr"] is None else f"  true-trigger ASR {row['trigger_asr']:.1%}"
        stdout.print(f"sigma {row['sigma']:<5g} clean accuracy {row['clean_accuracy']:.1%}{asr}")


def zoo_sanity(name: str, data_root: Path | None, zoo_dir: Path | None, images: int, noise_samples: int,
               denoiser: str | None = None) -> list[dict[str, float]]:
    zm = load_zoo_model(name, zoo_dir)
    ref = model_denoiser(denoiser, zm.record["dataset"])
    t = None if ref is None else open_denoiser(ref)
    x, y = load_dataset(zm.record["dataset"], data_root).split(train=False)
    x, y = x[:images], y[:images]
    if t is not None:
        t.check_images(x.shape[1], (x.shape[2], x.shape[3]))
    if zm.attack is None:
        return sanity_table(zm.module, x, y, None, None, noise_samples=noise_samples, denoiser=t)
    return sanity_table(zm.module, x, y, zm.attack.trigger(tuple(x.shape[1:])), zm.attack.target,
                        noise_samples=noise_samples, source_classes=zm.attack.source_classes, denoiser=t)


@zoo_group.command("report")
@click.option("--out", default="docs/zoo.md", show_default=True, type=click.Path(path_type=Path))
@click.option("--data-root", type=click.Path(path_type=Path), help="Dataset folder (default: $SMOOTHINV_DATA or ../shared/data).")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Zoo directory (default: the package's zoo).")
@click.option("--images", default=500, show_default=True, type=BOUNDS.images, help="Test images for the sanity table.")
@click.option("--noise-samples", default=10, show_default=True, type=BOUNDS.noise_samples, help="Noise samples N of G.")
def report_command(out: Path, data_root: Path | None, zoo_dir: Path | None, images: int, noise_samples: int) -> None:
    """Write docs/zoo.md: every built model's manifest numbers and its sanity table."""
    records = list_zoo(zoo_dir)
    sanity = {}
    for record in records:
        err.print(f"sanity table: {record['name']} ...")
        sanity[record["name"]] = zoo_sanity(record["name"], data_root, zoo_dir, images, noise_samples)
    built = {r["name"] for r in records}
    missing = [r.name for r in all_recipes() if r.name not in built]
    out.parent.mkdir(parents=True, exist_ok=True)
    notes = {r.name: r.notes for r in all_recipes() if r.notes and r.name in built}
    write_text(out, zoo_markdown(records, sanity, missing, images, noise_samples, notes, command=REPORT_COMMAND))
    stdout.print(f"wrote {out} ({len(records)} models)")
