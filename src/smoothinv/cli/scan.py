"""`smoothinv scan`: is there a backdoor, and which class does it target?"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import click
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from .. import __version__
from ..data import CleanSet, load_clean_set, load_image
from ..denoisers import DenoiserRef
from ..detection import DecisionRule, ScanSettings, scan
from ..detection.screen import ClassScreen
from ..detection.checkpoint import ScanCheckpoint, checkpoint_interval
from ..detection.scan import EXHAUSTIVE_SIGMAS, FALLBACK_SIGMAS, SCAN_SIGMAS, ScanResult, declared_sigmas, scan_steps
from ..methods import list_methods
from ..methods.base import check_target
from ..reporting.outputs import atomic_directory, check_destination
from ..reporting.scan_report import scan_record, write_scan
from .denoiser import chosen_denoiser, denoiser_option
from .options import Subject, load_subject, model_options, precision_option, trust_code_flag
from .params import BOUNDS
from .methods import spec_from_flags
from .progress import step_progress

err = Console(stderr=True)
stdout = Console()
EXHAUSTIVE_HELP = ("Every class on the full grid in fp32, as every scan ran before issue 14: sigma "
                   f"{','.join(map(str, EXHAUSTIVE_SIGMAS))}, no class screen, fp32. Several times slower, and linear "
                   "in the number of classes; for comparison and research.")


def scan_setting_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that set what a scan does (shared by `scan` and `scan-many`)."""
    decorators = [
        click.option("--classes", type=BOUNDS.classes, help="Scan only these class indices, comma-separated (default: all)."),
        click.option("--method", default="smoothinv", show_default=True, type=click.Choice(sorted(list_methods()))),
        click.option("--eps", type=BOUNDS.eps,
                     help="Absolute l2 bounds (default: the paper's eps=5 scaled to the input, x1,2,4,8)."),
        click.option("--sigma", type=BOUNDS.sigmas, help=f"Noise levels, comma-separated.  [default: {','.join(map(str, SCAN_SIGMAS))}, "
                                                         "or the model's own (a zero-shot CLIP: 1.0); "
                                                         f"with --exhaustive {','.join(map(str, EXHAUSTIVE_SIGMAS))}]"),
        click.option("--exhaustive", is_flag=True, help=EXHAUSTIVE_HELP),
        precision_option,
        click.option("--fallback-sigma", default=",".join(map(str, FALLBACK_SIGMAS)), show_default=True,
                     type=BOUNDS.fallback_sigmas,
                     help="Noise levels to rerun at if no perturbation flips even 10% of the clean images at --sigma "
                          "(noise pins the model to one class); 'none' disables."),
        click.option("--noise-samples", default=8, show_default=True, type=BOUNDS.noise_samples),
        click.option("--steps", default=200, show_default=True, type=BOUNDS.steps),
        click.option("--time-budget", type=BOUNDS.seconds,
                     help="Seconds the scan may take: noise probe, synthesis, ASR evaluation and any fallback rerun "
                          "(loading inputs and writing the report come on top; a forward batch in flight may overrun "
                          "it). Classes it cuts are skipped with a reason and the verdict comes from the classes "
                          "evaluated."),
        click.option("--threshold", default=DecisionRule.threshold, show_default=True, type=BOUNDS.threshold,
                     help="Score needed to flag a class."),
        click.option("--clean-limit", default=500, show_default=True, type=BOUNDS.images),
        click.option("--max-batch", default=256, show_default=True, type=BOUNDS.max_batch),
        click.option("--seed", default=0, show_default=True, type=BOUNDS.seed),
        denoiser_option,
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def scan_settings(opts: dict[str, Any], denoiser: DenoiserRef | None) -> ScanSettings:
    """The scan's settings from the flags of `scan_setting_options` (and T = `denoiser`)."""
    eps = opts["eps"]
    return ScanSettings(
        method=spec_from_flags(opts["method"], {**{k: opts[k] for k in ("steps", "noise_samples", "max_batch")},
                                                "denoiser": denoiser}),
        eps=None if eps is None else tuple(eps), sigmas=grid_sigmas(opts),
        screen=None if opts["exhaustive"] else ClassScreen(),
        precision=opts["precision"] or ("fp32" if opts["exhaustive"] else "auto"),
        time_budget=opts["time_budget"], max_batch=opts["max_batch"], probe_samples=opts["noise_samples"],
        seed=opts["seed"], fallback_sigmas=tuple(opts["fallback_sigma"]), rule=DecisionRule(threshold=opts["threshold"]),
        model_sigmas=not opts["sigma"] and not opts["exhaustive"],
    )


def grid_sigmas(opts: dict[str, Any], model: nn.Module | None = None) -> tuple[float, ...]:
    """--sigma, else the exhaustive scan's noise levels, else those `model` declares, else the default scan's."""
    sigmas = opts["sigma"]
    if sigmas:
        return tuple(sigmas)
    if opts["exhaustive"]:
        return EXHAUSTIVE_SIGMAS
    return (declared_sigmas(model) if model is not None else None) or SCAN_SIGMAS


@click.command("scan")
@model_options
@click.option("--image", "image_paths", required=True, multiple=True, type=click.Path(path_type=Path),
              help="A clean image (repeatable: a class the first image already belongs to is synthesised from another).")
@click.option("--clean", required=True, type=click.Path(path_type=Path), help="Held-out clean images (ImageFolder or .npz).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (written atomically).")
@scan_setting_options
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--no-resume", is_flag=True,
              help="Discard the work saved by an earlier, interrupted run of this scan instead of continuing it.")
def scan_command(**opts: Any) -> None:
    """Synthesise a trigger toward every class from one clean image; flag the classes whose trigger transfers."""
    started = time.perf_counter()
    check_destination(opts["out"], opts["overwrite"], inputs=(*opts["image_paths"], opts["clean"], opts["model_path"]))
    native = load_image(opts["image_paths"][0], channels=3)
    subject = load_subject(opts, fallback_size=tuple(native.shape[1:]))
    size = subject.input_size or tuple(native.shape[1:])
    images = [load_image(p, size=size, channels=subject.channels) for p in opts["image_paths"]]
    clean = load_clean_set(opts["clean"], size=size, channels=subject.channels, limit=opts["clean_limit"], seed=opts["seed"])
    clean.check_labels(subject.num_classes)
    classes = None if opts["classes"] is None else list(opts["classes"])
    if classes is not None:
        check_target(torch.tensor(classes), subject.num_classes)
    ref, _ = chosen_denoiser(opts["denoiser"], trust_code=trust_code_flag(opts), channels=subject.channels, size=size,
                             sigmas=[*grid_sigmas(opts, subject.loaded.module), *opts["fallback_sigma"]])
    settings = scan_settings(opts, ref).for_model(subject.loaded.module)
    err.print(escape(f"model {subject.path.name}: {subject.num_classes} classes, input {subject.channels}x{size[0]}x{size[1]}; "
                     f"clean set {len(clean)} images; method {settings.method.name}"), highlight=False, soft_wrap=True)
    checkpoint = _checkpoint(opts, subject)
    with checkpoint.held():
        _run_scan(opts, subject, images, clean, classes, settings, checkpoint, started)


def _run_scan(opts: dict[str, Any], subject: Subject, images: list[torch.Tensor], clean: CleanSet,
              classes: list[int] | None, settings: ScanSettings, checkpoint: ScanCheckpoint, started: float) -> None:
    """Scan, write the output, then drop the checkpoint (the caller holds it)."""
    if opts["no_resume"] and checkpoint.directory.exists():
        checkpoint.discard()
        checkpoint.log(f"discarded the work an earlier run saved in {checkpoint.directory} (--no-resume)")
    with step_progress(scan_steps(settings, images[0].shape, len(classes) if classes else subject.num_classes), err) as bar:
        def rescan(first: ScanResult, steps: int) -> None:
            err.print(escape(f"no perturbation flipped {settings.pinned_asr:.0%} of the clean images at sigma "
                             f"{', '.join(f'{v:g}' for v in first.sigmas)} (highest ASR {first.max_asr:.1%}); "
                             f"rescanning at sigma {', '.join(f'{v:g}' for v in settings.fallback_sigmas)}"),
                      style="yellow", highlight=False, soft_wrap=True)
            bar.restart(f"scan {settings.method.name}", steps)

        try:
            result = scan(subject.module, images, clean.images, clean.labels, subject.num_classes, settings, classes,
                          bar, on_fallback=rescan, checkpoint=checkpoint)
        except KeyboardInterrupt:
            if checkpoint.directory.is_dir():
                err.print("the work done so far is saved; rerun the same command to continue it", style="yellow")
            raise
    context = {
        "smoothinv_version": __version__,
        "command": "smoothinv " + " ".join(sys.argv[1:]),
        "model": subject.describe(),
        "images": [str(p) for p in opts["image_paths"]],
        "clean_set": {"path": str(opts["clean"]), "images": len(clean), "limit": opts["clean_limit"]},
    }
    record = scan_record(result, context, clean.class_names)
    record["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    with atomic_directory(opts["out"], opts["overwrite"], inputs=(*opts["image_paths"], opts["clean"], opts["model_path"]), kind="scan") as tmp:
        write_scan(tmp, result, record, images)
    checkpoint.discard()
    stdout.print(_table(record))
    targets = ", ".join(map(str, result.targets)) or "none"
    stdout.print(f"[bold]verdict: {result.verdict}[/] (targets: {targets}); wrote {escape(str(opts['out']))}/report.html "
                 f"in {time.perf_counter() - started:.0f}s" + (" [yellow](time budget reached)[/]" if result.timed_out else ""))
    for warning in record["warnings"]:
        err.print(escape(f"warning: {warning}"), style="yellow", highlight=False, soft_wrap=True)


def _checkpoint(opts: dict[str, Any], subject: Subject) -> ScanCheckpoint:
    """The scan's checkpoint next to --out, keyed by the model file's hash and loading options."""
    model_id = json.dumps({k: v for k, v in subject.describe().items() if k != "path"}, sort_keys=True)
    return ScanCheckpoint.beside(opts["out"], model_id=model_id, every_s=checkpoint_interval(),
                                 log=lambda note: err.print(escape(note), style="yellow", highlight=False,
                                                            soft_wrap=True))


def _table(record: dict[str, Any]) -> Table:
    table = Table(title="per-class transfer ASR (max over sigma) at each eps", title_justify="left")
    table.add_column("class")
    for e in record["settings"]["eps"] if record["classes"] and len(record["classes"][0]["asr_by_eps"]) > 1 else ["-"]:
        table.add_column(f"eps {e:g}" if e != "-" else "ASR", justify="right")
    table.add_column("score", justify="right")
    for c in record["classes"]:
        table.add_row(str(c["class"]), *(f"{a:.0%}" for a in c["asr_by_eps"]), f"{c['score']:.1f}",
                      style="bold red" if c["flagged"] else None)
    return table
