"""`smoothinv scan`: is there a backdoor, and which class does it target?"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..data import load_clean_set, load_image
from ..detection import DecisionRule, ScanSettings, scan
from ..detection.scan import FALLBACK_SIGMAS, SCAN_SIGMAS, ScanResult, scan_steps
from ..errors import SmoothInvError
from ..methods import list_methods
from ..methods.base import check_target
from ..reporting.outputs import atomic_directory, check_destination
from ..reporting.scan_report import scan_record, write_scan
from .options import float_list, load_subject, model_options
from .progress import step_progress

err = Console(stderr=True)
stdout = Console()


@click.command("scan")
@model_options
@click.option("--image", "image_paths", required=True, multiple=True, type=click.Path(path_type=Path),
              help="A clean image (repeatable: a class the first image already belongs to is synthesised from another).")
@click.option("--clean", required=True, type=click.Path(path_type=Path), help="Held-out clean images (ImageFolder or .npz).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (written atomically).")
@click.option("--classes", help="Scan only these class indices, comma-separated (default: all).")
@click.option("--method", default="smoothinv", show_default=True, type=click.Choice(sorted(list_methods())))
@click.option("--eps", help="Absolute l2 bounds (default: the paper's eps=5 scaled to the input, x1,2,4,8).")
@click.option("--sigma", help=f"Noise levels, comma-separated.  [default: {','.join(map(str, SCAN_SIGMAS))}]")
@click.option("--fallback-sigma", default=",".join(map(str, FALLBACK_SIGMAS)), show_default=True,
              help="Noise levels to rerun at if no perturbation flips even 10% of the clean images at --sigma "
                   "(noise pins the model to one class); 'none' disables.")
@click.option("--noise-samples", default=8, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=200, show_default=True, type=click.IntRange(min=1))
@click.option("--time-budget", type=float, help="Stop synthesis after this many seconds and decide on what was found.")
@click.option("--threshold", default=DecisionRule.threshold, show_default=True, help="Score needed to flag a class.")
@click.option("--clean-limit", default=500, show_default=True, type=click.IntRange(min=1))
@click.option("--max-batch", default=256, show_default=True, type=click.IntRange(min=1))
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def scan_command(**opts: Any) -> None:
    """Synthesise a trigger toward every class from one clean image; flag the classes whose trigger transfers."""
    started = time.perf_counter()
    check_destination(opts["out"], opts["overwrite"])
    native = load_image(opts["image_paths"][0], channels=3)
    subject = load_subject(opts, fallback_size=tuple(native.shape[1:]))
    size = subject.input_size or tuple(native.shape[1:])
    images = [load_image(p, size=size, channels=subject.channels) for p in opts["image_paths"]]
    clean = load_clean_set(opts["clean"], size=size, channels=subject.channels, limit=opts["clean_limit"], seed=opts["seed"])
    clean.check_labels(subject.num_classes)
    classes = None if opts["classes"] is None else [int(c) for c in float_list(opts["classes"], "--classes") or []]
    if classes is not None:
        check_target(torch.tensor(classes), subject.num_classes)
    eps = float_list(opts["eps"], "--eps")
    sigmas = float_list(opts["sigma"], "--sigma")
    fallback = () if opts["fallback_sigma"].strip().lower() in ("", "none") else float_list(opts["fallback_sigma"],
                                                                                            "--fallback-sigma")
    if any(v <= 0 for v in fallback):
        raise SmoothInvError(f"--fallback-sigma values must be > 0 (got {opts['fallback_sigma']!r}); 'none' disables it")
    settings = ScanSettings(
        method=opts["method"], eps=None if eps is None else tuple(eps),
        sigmas=tuple(sigmas) if sigmas else SCAN_SIGMAS, noise_samples=opts["noise_samples"], steps=opts["steps"],
        time_budget=opts["time_budget"], max_batch=opts["max_batch"], seed=opts["seed"], fallback_sigmas=tuple(fallback),
        rule=DecisionRule(threshold=opts["threshold"]),
    )
    err.print(escape(f"model {subject.path.name}: {subject.num_classes} classes, input {subject.channels}x{size[0]}x{size[1]}; "
                     f"clean set {len(clean)} images; method {settings.method}"), highlight=False, soft_wrap=True)
    with step_progress(scan_steps(settings, images[0].shape, len(classes) if classes else subject.num_classes), err) as bar:
        def rescan(first: ScanResult, steps: int) -> None:
            err.print(escape(f"no perturbation flipped {settings.pinned_asr:.0%} of the clean images at sigma "
                             f"{', '.join(f'{v:g}' for v in first.sigmas)} (highest ASR {first.max_asr:.1%}); "
                             f"rescanning at sigma {', '.join(f'{v:g}' for v in settings.fallback_sigmas)}"),
                      style="yellow", highlight=False, soft_wrap=True)
            bar.restart(f"scan {settings.method}", steps)

        result = scan(subject.module, images, clean.images, clean.labels, subject.num_classes, settings, classes, bar,
                      on_fallback=rescan)
    context = {
        "smoothinv_version": __version__,
        "command": "smoothinv " + " ".join(sys.argv[1:]),
        "model": subject.describe(),
        "images": [str(p) for p in opts["image_paths"]],
        "clean_set": {"path": str(opts["clean"]), "images": len(clean), "limit": opts["clean_limit"]},
    }
    record = scan_record(result, context, clean.class_names)
    record["timings"]["wall_s"] = round(time.perf_counter() - started, 3)
    with atomic_directory(opts["out"], opts["overwrite"]) as tmp:
        write_scan(tmp, result, record, images)
    stdout.print(_table(record))
    targets = ", ".join(map(str, result.targets)) or "none"
    stdout.print(f"[bold]verdict: {result.verdict}[/] (targets: {targets}); wrote {escape(str(opts['out']))}/report.html "
                 f"in {time.perf_counter() - started:.0f}s" + (" [yellow](time budget reached)[/]" if result.timed_out else ""))
    for warning in record["warnings"]:
        err.print(escape(f"warning: {warning}"), style="yellow", highlight=False, soft_wrap=True)


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
