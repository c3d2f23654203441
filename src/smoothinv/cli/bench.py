"""`smoothinv bench detect|merge|table2|speed|repair`."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from ..bench.detect import detect_benchmark, merge_reports
from ..bench.repair import REPAIR_METHODS, RepairBenchSettings, repair_benchmark, repair_table
from ..bench.speed import speed_benchmark
from ..bench.table2 import METHODS, markdown, table2
from ..detection import ScanSettings
from ..detection.detectors import DATA_FREE, Detector, ScanDetector
from ..detection.scan import SCAN_SIGMAS
from .scan import EXHAUSTIVE_HELP
from ..errors import SmoothInvError
from ..methods import list_methods
from ..methods.registry import method_options
from ..population import BACKENDS
from ..repair import REPAIRS
from ..reporting.outputs import check_file_destination, write_json, write_text
from .messages import for_command_line
from .methods import spec_from_flags, specs_from_flags, typed
from .scan_many import choose_backend
from .params import BOUNDS, MAX_IMAGES

BENCH_DENOISER_HELP = ("T in the smoothed classifier: 'auto' (the shipped denoiser of each model's dataset), a shipped "
                       "denoiser's name or a diffusers DDPM folder; default: none.")
err = Console(stderr=True)
stdout = Console(soft_wrap=True)


@click.group("bench")
def bench_group() -> None:
    """Benchmarks on the model zoo."""


@bench_group.command("detect")
@click.option("--method", default="smoothinv", show_default=True, type=click.Choice(sorted([*list_methods(), *DATA_FREE.names()])),
              help="A trigger-inversion method run by the one-image scan, or mmbd (data-free MM-BD, its reference settings).")
@click.option("--model", "names", multiple=True, help="Only these zoo models (repeatable).")
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--steps", default=200, show_default=True, type=BOUNDS.steps)
@click.option("--noise-samples", default=8, show_default=True, type=BOUNDS.noise_samples)
@click.option("--sigma", type=BOUNDS.positive_sigmas, help=f"Noise levels, comma-separated.  [default: {','.join(map(str, SCAN_SIGMAS))}]")
@click.option("--exhaustive", is_flag=True, help=EXHAUSTIVE_HELP)
@click.option("--clean-images", default=500, show_default=True, type=click.IntRange(10, MAX_IMAGES))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--out", type=click.Path(path_type=Path), help="Write the rows and summary as JSON here.")
@click.option("--pictures", type=click.Path(path_type=Path),
              help="Folder for each model's evidence pictures (true target and flagged classes), to look at the misses.")
@click.option("--denoiser", help=BENCH_DENOISER_HELP)
@click.option("--backend", default="inline", show_default=True, type=click.Choice(["auto", *BACKENDS.names()]),
              help="Where the models run, as in scan-many: inline (one after the other in this process), local "
                   "(worker processes), ray; auto = ray where installed, else local.")
@click.option("--workers", type=click.IntRange(1, 100_000), help="Models at once (with --backend local or ray).")
def detect_command(method: str, names: tuple[str, ...], data_root: Path | None, steps: int, noise_samples: int,
                   sigma: tuple[float, ...] | None, exhaustive: bool, clean_images: int, seed: int, out: Path | None,
                   pictures: Path | None, denoiser: str | None, backend: str, workers: int | None) -> None:
    """Scan every zoo model; print verdict accuracy, AUROC, target identification and time."""
    if out is not None:
        check_file_destination(out)  # before hours of scanning
    if pictures is not None and pictures.exists() and (not pictures.is_dir() or any(pictures.iterdir())):
        raise click.UsageError(f"--pictures {pictures} exists and is not an empty folder; give a new one "
                               "(pictures of earlier runs are never replaced)")
    detector = _detector(method, steps, noise_samples, sigma, exhaustive)
    if denoiser is not None and method in DATA_FREE:
        raise click.UsageError(f"--denoiser does not apply to --method {method} (it does not smooth the model)")
    if denoiser is not None and "denoiser" not in method_options(method):
        raise click.UsageError(f"--denoiser does not apply to --method {method}")
    report = detect_benchmark(detector, names=names or None, data_root=data_root, clean_images=clean_images, seed=seed,
                              pictures=pictures, denoiser=denoiser,
                              log=lambda line: err.print(escape(for_command_line(line)), highlight=False),
                              backend=choose_backend(backend, None, None), workers=workers)
    _print_detection(report)
    if out is not None:
        write_json(out, report)


def _detector(method: str, steps: int, noise_samples: int, sigma: tuple[float, ...] | None, exhaustive: bool) -> Detector:
    """The scan with `method`, or a data-free detector (which takes none of the scan's flags)."""
    if method not in DATA_FREE:
        spec = spec_from_flags(method, {"steps": steps, "noise_samples": noise_samples})
        base = ScanSettings.exhaustive() if exhaustive else ScanSettings()
        return ScanDetector(replace(base, method=spec, sigmas=tuple(sigma) if sigma else base.sigmas,
                                    model_sigmas=base.model_sigmas and not sigma, probe_samples=noise_samples))
    ctx = click.get_current_context()
    given = [f"--{name.replace('_', '-')}" for name in ("steps", "noise_samples", "sigma", "exhaustive")
             if typed(ctx, name)]
    if given:
        raise click.UsageError(f"{', '.join(given)} does not apply to --method {method} (it runs its reference settings)")
    return DATA_FREE.get(method)()


@bench_group.command("merge")
@click.argument("shards", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Write the merged report as JSON here.")
def merge_command(shards: tuple[Path, ...], out: Path) -> None:
    """Join `bench detect --out` files of one run split over processes (disjoint --model sets)."""
    reports = []
    for path in shards:
        try:
            reports.append(json.loads(path.read_text()))
        except FileNotFoundError:
            raise SmoothInvError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SmoothInvError(f"{path}: not a readable JSON report ({e})") from None
    report = merge_reports(reports)
    _print_detection(report)
    write_json(out, report)


def _print_detection(report: dict) -> None:
    stdout.print("| model | truth | verdict | flagged | score | s |")
    stdout.print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        truth = f"target {r['true_target']}" if r["backdoored"] else "clean"
        stdout.print(f"| {r['model']} | {truth} | {r['verdict']} | {r['flagged']} | {r['score']:.2f} | {r['seconds']:.0f} |")
    stdout.print(json.dumps(report["summary"]))


@bench_group.command("table2")
@click.option("--method", "methods", multiple=True, type=click.Choice(sorted(list_methods())),
              help="Methods to compare (repeatable).  [default: smoothinv plainadv nc topoprior pixelinv]")
@click.option("--model", "names", multiple=True, help="Only these zoo models (repeatable).")
@click.option("--images", default=10, show_default=True, type=click.IntRange(1, MAX_IMAGES), help="Single clean images per model.")
@click.option("--steps", type=BOUNDS.steps, help="Override every method's step count.")
@click.option("--noise-samples", default=10, show_default=True, type=BOUNDS.noise_samples)
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--out", type=click.Path(path_type=Path), help="Write the rows as CSV here (markdown goes to stdout).")
@click.option("--denoiser", help=BENCH_DENOISER_HELP + " Methods that do not smooth run as without it.")
def table2_command(methods: tuple[str, ...], names: tuple[str, ...], images: int, steps: int | None, noise_samples: int,
                   data_root: Path | None, seed: int, out: Path | None, denoiser: str | None) -> None:
    """Average ASR of the backdoor each method recovers from single clean images (paper Table 2)."""
    if out is not None:
        check_file_destination(out)  # before hours of inversions
    specs = specs_from_flags(methods or METHODS, {"steps": steps, "noise_samples": noise_samples})
    if denoiser is not None and not any("denoiser" in method_options(s.name) for s in specs):
        raise click.UsageError(f"--denoiser does not apply to --method {', '.join(s.name for s in specs)}")
    rows = table2(methods=specs, names=names or None, images=images, data_root=data_root, seed=seed, denoiser=denoiser,
                  log=lambda line: err.print(escape(line), highlight=False))
    stdout.print(markdown(rows))
    if out is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["model", "attack", "method", "asr", "images", "seconds_per_image", "asr_per_image", "denoiser"])
        for r in rows:
            writer.writerow([r["model"], r["attack"], r["method"], r["asr"], r["images"], r["seconds_per_image"],
                             " ".join(map(str, r["asr_per_image"])), r["denoiser"] or ""])
        write_text(out, buffer.getvalue())


SPEED_MODELS = ("cifar10-badnets", "cifar10-clean-s0", "fmnist-badnets")
SCALING_MODELS = ("cifar10-badnets", "glyphs100-badnets", "glyphs100-clean")


@bench_group.command("speed")
@click.option("--model", "models", multiple=True,
              help=f"Zoo models to scan both ways, exhaustive and default (repeatable).  [default: {' '.join(SPEED_MODELS)}]")
@click.option("--scaling", "scaling", multiple=True,
              help="Zoo models whose default scan times are compared with the first's, to see the cost grow with the "
                   f"number of classes (repeatable).  [default: {' '.join(SCALING_MODELS)}]")
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--clean-images", default=500, show_default=True, type=click.IntRange(10, MAX_IMAGES))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--out", type=click.Path(path_type=Path), help="Write the measurements as JSON here.")
def speed_command(models: tuple[str, ...], scaling: tuple[str, ...], data_root: Path | None, clean_images: int,
                  seed: int, out: Path | None) -> None:
    """Time the default scan against the exhaustive one in one process, and against the number of classes."""
    if out is not None:
        check_file_destination(out)
    report = speed_benchmark(models or SPEED_MODELS, scaling or SCALING_MODELS, data_root=data_root,
                             clean_images=clean_images, seed=seed, log=lambda line: err.print(escape(line), highlight=False))
    stdout.print(f"torch threads: {report['threads']}")
    stdout.print("| model | classes | exhaustive s | flagged | default s | flagged | speed-up | same verdict, targets |")
    stdout.print("|---|---|---|---|---|---|---|---|")
    for r in report["comparison"]:
        e, d = r["exhaustive"], r["default"]
        stdout.print(f"| {r['model']} | {r['classes']} | {e['seconds']:.0f} | {e['flagged']} | {d['seconds']:.0f} | "
                     f"{d['flagged']} | {r['speedup']:.1f}x | {'yes' if r['same_verdict'] and r['same_targets'] else 'NO'} |")
    stdout.print("| model | classes | default s | relative | flagged | truth | classes on the full grid |")
    stdout.print("|---|---|---|---|---|---|---|")
    for r in report["scaling"]:
        stdout.print(f"| {r['model']} | {r['classes']} | {r['seconds']:.0f} | {r['relative_time']:.2f}x | {r['flagged']} | "
                     f"{r['truth']} | {r['classes_on_full_grid']} |")
    if out is not None:
        write_json(out, report)


@bench_group.command("repair")
@click.option("--method", "methods", multiple=True, type=click.Choice(sorted(REPAIRS.names())),
              help=f"Repair methods (repeatable).  [default: {' '.join(REPAIR_METHODS)}]")
@click.option("--model", "names", multiple=True, help="Only these backdoored zoo models (repeatable).")
@click.option("--train-images", default=1000, show_default=True, type=click.IntRange(2, 1_000_000),
              help="Clean training images each repair fine-tunes on (seeded, from the training split).")
@click.option("--eval-images", type=click.IntRange(1, 1_000_000), help="Test images to measure on (default: all).")
@click.option("--rescan", "rescan", multiple=True, type=click.Choice(["none", *sorted(REPAIRS.names())]),
              help="Methods whose repaired models are scanned again (repeatable; 'none').  [default: unlearn]")
@click.option("--data-root", type=click.Path(path_type=Path))
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@click.option("--out", type=click.Path(path_type=Path),
              help="Write the report as JSON here, after each model; rerunning with the same settings continues it.")
def repair_command(methods: tuple[str, ...], names: tuple[str, ...], train_images: int, eval_images: int | None,
                   rescan: tuple[str, ...], data_root: Path | None, seed: int, out: Path | None) -> None:
    """Scan every backdoored zoo model, repair it with each method, measure the true trigger and clean accuracy."""
    if out is not None and not out.exists():
        check_file_destination(out)
    settings = RepairBenchSettings(methods=methods or REPAIR_METHODS, train_images=train_images, eval_images=eval_images,
                                   rescan=() if "none" in rescan else (rescan or ("unlearn",)), seed=seed)
    report = repair_benchmark(settings, names=names or None, data_root=data_root, out=out,
                              log=lambda line: err.print(escape(line), highlight=False))
    stdout.print(f"torch threads: {report['threads']}; {settings.train_images} training images")
    for line in repair_table(report):
        stdout.print(line)
    stdout.print(json.dumps(report["summary"]))
