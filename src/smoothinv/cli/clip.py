"""`smoothinv clip zeroshot` (a CLIP checkpoint -> a zero-shot classifier file) and
`smoothinv clip zoo build|list` (the CLIP zoo)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from ..clip_zoo import CLIP_RECIPES, build_all, clip_recipe, clip_zoo_dir, list_clip_zoo
from ..clip_zoo.captions import CLASS_LISTS
from ..data import load_clean_set
from ..engine.metrics import accuracy
from ..errors import SmoothInvError
from ..models import load_model
from ..models.clip import DEFAULT_TEMPLATES, load_clip, save_zeroshot_classifier, zeroshot_classifier
from ..reporting.outputs import check_file_destination
from .params import BOUNDS

err = Console(stderr=True)
stdout = Console(soft_wrap=True)
MAX_CLASS_FILE_BYTES = 4 << 20
MAX_CLASSES = 100_000


@click.group("clip")
def clip_group() -> None:
    """CLIP models: zero-shot classifier files, and a zoo of small backdoored CLIPs."""


@clip_group.command("zeroshot")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A CLIP checkpoint (OpenAI / open_clip key names): .safetensors, or a .pt state dict.")
@click.option("--classes", required=True, help="cifar10, or a text file with one class name per line.")
@click.option("--template", "templates", multiple=True,
              help="A prompt with {} for the class name (repeatable; the embeddings are averaged). "
                   f"[default: {DEFAULT_TEMPLATES[0]}]")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="The zero-shot classifier file to write.")
@click.option("--clean", type=click.Path(path_type=Path),
              help="Labelled clean images (ImageFolder or .npz) to print the zero-shot accuracy on.")
@click.option("--clean-limit", type=BOUNDS.images, help="Use at most this many clean images (a seeded subset).")
@click.option("--gelu", is_flag=True, help="The checkpoint's MLPs use exact GELU (open_clip's non-quickgelu configs).")
@click.option("--trust-code", is_flag=True, help="Allow pickled checkpoints that run code when loaded.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def zeroshot_command(checkpoint: Path, classes: str, templates: tuple[str, ...], out: Path, clean: Path | None,
                     clean_limit: int | None, gelu: bool, trust_code: bool, overwrite: bool) -> None:
    """Write a CLIP zero-shot classifier file that every --model option reads."""
    if out.exists() and not overwrite:
        raise SmoothInvError(f"{out} exists; pass --overwrite to replace it")
    check_file_destination(out)
    if out.resolve() == checkpoint.resolve():
        raise SmoothInvError("--out must not be the --checkpoint file")
    names = class_names(classes)
    model = load_clip(checkpoint, quick_gelu=not gelu, trust_code=trust_code)
    classifier = zeroshot_classifier(model, names, list(templates) or DEFAULT_TEMPLATES)
    save_zeroshot_classifier(out, classifier, class_names=names)
    size = classifier.visual.image_size
    stdout.print(escape(f"wrote {out}: {len(names)} classes, {size}x{size} images, "
                        f"{len(templates) or 1} template(s)"), highlight=False)
    if clean is not None:
        data = load_clean_set(clean, size=(size, size), channels=3, limit=clean_limit)
        if len(data) == 0:
            raise SmoothInvError(f"clean set {clean} holds no images")
        data.check_labels(len(names))
        score = accuracy(load_model(out).module, data.images, data.labels)
        stdout.print(f"zero-shot accuracy {score:.1%} on {len(data)} clean images")


def class_names(spec: str) -> list[str]:
    """A known list's names (`cifar10`), or a text file's non-empty lines."""
    if spec in CLASS_LISTS:
        return list(CLASS_LISTS[spec])
    path = Path(spec)
    if not path.is_file():
        raise SmoothInvError(f"--classes {spec!r} is neither a known list ({', '.join(CLASS_LISTS)}) nor a file")
    if path.stat().st_size > MAX_CLASS_FILE_BYTES:
        raise SmoothInvError(f"class file {path} is over {MAX_CLASS_FILE_BYTES >> 20} MiB; one name per line expected")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SmoothInvError(f"class file {path} is not UTF-8 text") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise SmoothInvError(f"class file {path} names no class; put one class name per line")
    if len(names) > MAX_CLASSES:
        raise SmoothInvError(f"class file {path} names {len(names)} classes; at most {MAX_CLASSES} are allowed")
    repeated = sorted({n for n in names if names.count(n) > 1}) if len(names) < 10_000 else []
    if repeated or len(set(names)) != len(names):
        raise SmoothInvError(f"class file {path} names a class twice ({', '.join(repeated[:3])}); "
                             "each class needs one name")
    return names


@clip_group.group("zoo")
def clip_zoo_group() -> None:
    """Small CLIPs trained here on captioned CIFAR-10: clean, checkerboard (BadNets) and Blend backdoors."""


@clip_zoo_group.command("build")
@click.option("--model", "names", multiple=True, help="Build only these models (repeatable); default: all.")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Folder with cifar10-jpeg.tar (default: $SMOOTHINV_DATA or ../shared/data).")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="Where models and manifest.json go (default: the package's).")
def clip_build_command(names: tuple[str, ...], data_root: Path | None, zoo_dir: Path | None) -> None:
    """Train the CLIP zoo; models already built from the same recipe are skipped (resumable)."""
    recipes = [clip_recipe(n) for n in names] if names else CLIP_RECIPES.in_registration_order()
    build_all(recipes, data_root=data_root, directory=zoo_dir,
              log=lambda line: err.print(escape(line), highlight=False))


@clip_zoo_group.command("list")
@click.option("--zoo-dir", type=click.Path(path_type=Path), help="The CLIP zoo folder (default: the package's).")
def clip_list_command(zoo_dir: Path | None) -> None:
    """The built CLIP zoo models: zero-shot accuracy, backdoor ASR, training time."""
    records = list_clip_zoo(zoo_dir)
    if not records:
        err.print(f"no CLIP zoo model built in {clip_zoo_dir(zoo_dir)}; run `smoothinv clip zoo build`")
        return
    for r in records:
        asr = "-" if r.get("backdoor_asr") is None else f"{r['backdoor_asr']:.1%}"
        stdout.print(escape(f"{r['name']:14} target {str(r.get('target')):4} zero-shot accuracy "
                            f"{r['zeroshot_accuracy']:.1%}  backdoor ASR {asr:6}  {r['train_seconds']:.0f}s  "
                            f"{r['zeroshot']['file']}"), highlight=False)
