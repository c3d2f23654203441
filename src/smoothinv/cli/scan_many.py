"""`smoothinv scan-many`: scan a whole population of models, one task per model, on Ray or a local
process pool, crash-safe and resumable; and `smoothinv trojai`, the TrojAI-style single-model entry."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from ..population import BACKENDS, LoadingHints, PopulationRun, ScanJob, SpecDefaults, TrojanCalibration, run_population
from ..population.backends import Backend
from ..population.entries import ModelEntry
from ..population.inputs import FileInputs
from ..population.folder import PopulationFolder
from ..population.ray_backend import RayBackend, ray_available
from ..population.spec import ListedEntry, read_listing
from ..population.subject import Loading
from ..population.summary import PopulationSummary
from ..population.trojai import TrojaiRequest, trojan_probability
from ..detection import ScanSettings
from .messages import for_command_line
from .options import model_reading_options, trust_code_flag
from .params import BOUNDS
from .scan import scan_setting_options, scan_settings

err = Console(stderr=True)
stdout = Console(soft_wrap=True)
BACKEND_HELP = ("Where the scans run: ray (Ray: this machine's cores, or the cluster at --address), local (a pool of "
                "worker processes here), inline (one after the other in this process: no isolation, no --model-timeout); "
                "auto = ray where it is installed (pip install \"smoothinv[ray]\"), else local.")


def choose_backend(name: str, address: str | None, gpus_per_task: float | None) -> Backend:
    """The backend `name` ("auto": Ray when installed, else the local pool); --address means Ray."""
    if address is not None and name not in ("auto", "ray"):
        raise click.UsageError(f"--address joins a Ray cluster; it does not apply to --backend {name}")
    if name == "ray" or address is not None or (name == "auto" and ray_available()):
        return RayBackend(address=address, gpus_per_task=gpus_per_task)
    return BACKENDS.get("local" if name == "auto" else name)()


@click.command("scan-many")
@click.argument("spec", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="Output folder: models/<name>/ per model, summary.json, summary.csv, index.html. A rerun into it "
                   "skips the models already done with the same settings.")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", *BACKENDS.names()]),
              help=BACKEND_HELP)
@click.option("--address", help="Join a running Ray cluster instead of starting Ray here: auto, or ray://host:port.")
@click.option("--workers", type=click.IntRange(1, 100_000),
              help="Models scanned at once (default: as many as cores / --threads, one per GPU where there are GPUs).")
@click.option("--threads", type=click.IntRange(1, 4096),
              help="Torch threads per model (default: cores / --workers; workers x threads should not exceed the cores).")
@click.option("--gpus-per-task", type=click.FloatRange(0, 64),
              help="GPUs each Ray task asks for (default: 1 where the cluster has GPUs; 0.5 lets two share one).")
@click.option("--model-timeout", type=BOUNDS.seconds,
              help="Seconds one model may take in all (loading, scan, report); past it, its worker is stopped and the "
                   "model gets an error row.")
@click.option("--retry-failed", is_flag=True, help="Scan again the models that failed in an earlier run into --out.")
@click.option("--model", "names", multiple=True, help="Only this model of the population, by name (repeatable).")
@click.option("--clean", type=click.Path(path_type=Path),
              help="A clean set for every model the listing gives none (ImageFolder, .npz or TrojAI-style examples).")
@click.option("--image", "image_paths", multiple=True, type=click.Path(path_type=Path),
              help="A clean image for every model the listing gives none (repeatable; default: a seeded pick from "
                   "the clean set).")
@click.option("--data-root", type=click.Path(path_type=Path),
              help="Where datasets are read from, for a zoo folder or a listing's dataset column "
                   "(default: $SMOOTHINV_DATA, else ../shared/data).")
@model_reading_options
@scan_setting_options
def scan_many_command(**opts: Any) -> None:
    """Scan every model of a folder, a zoo or a CSV/JSON listing; one summary and index.html for all.

    SPEC is a folder of model files (all scanned with --clean), a zoo folder (with manifest.json), or a .csv/.json
    listing each model with its own options: model, name, arch, num_classes, input_size, channels, mean, std, clean,
    images, dataset, denoiser, kind, backdoored, target (docs: README, "Scanning many models")."""
    started = time.perf_counter()
    if opts["denoiser"] is not None and opts["method"] not in ("smoothinv", "momentum"):
        raise click.UsageError(f"--denoiser does not apply to --method {opts['method']}")
    hints = LoadingHints(opts["arch"], opts["num_classes"], opts["input_size"],
                         None if opts["channels"] is None else int(opts["channels"]),
                         None if opts["mean"] is None else tuple(opts["mean"]),
                         None if opts["std"] is None else tuple(opts["std"]))
    defaults = SpecDefaults(hints, opts["clean"], tuple(opts["image_paths"]), opts["denoiser"], opts["data_root"])
    listing = _only(read_listing(opts["spec"], defaults), opts["names"])
    folder = PopulationFolder(opts["out"])
    inputs = [opts["spec"], *(p for item in listing for p in _input_paths(item.entry))]
    rerun = folder.prepare(inputs)
    command = "smoothinv " + " ".join(sys.argv[1:])
    job = ScanJob(scan_settings(opts, None), opts["clean_limit"], None if opts["classes"] is None else tuple(opts["classes"]),
                  None, command)
    calibration = TrojanCalibration.shipped()
    if job.name != calibration.method:
        err.print(escape(f"note: no trojan probability for --method {job.name} (the calibration is for "
                         f"{calibration.method} scans)"), style="yellow", highlight=False)
    elif job.settings != ScanSettings() or job.clean_limit != 500:
        err.print("note: the trojan probability is calibrated on the default scan; with other settings read it as "
                  "a rough guide", style="yellow", highlight=False)
    log = lambda line: err.print(escape(for_command_line(line)), highlight=False, soft_wrap=True)  # noqa: E731
    if rerun:
        log(f"continuing the population scan in {folder.path}")
    backend = choose_backend(opts["backend"], opts["address"], opts["gpus_per_task"])
    summary = PopulationSummary(str(opts["spec"]), job.describe(), calibration.describe(), command)
    loading = Loading(trust_code_flag(opts), opts["device"], opts["probe_timeout"])
    with folder.held(), backend:
        run = PopulationRun(job, folder.store, backend, loading, opts["workers"], opts["threads"], opts["model_timeout"],
                            opts["retry_failed"], calibration, log, lambda rows: summary.write(folder.path, rows),
                            for_command_line)
        summary.run = {"backend": backend.name, "address": opts["address"]}
        try:
            rows = run_population(listing, run)
        except KeyboardInterrupt:
            err.print("the models finished so far are stored; rerun the same command to continue", style="yellow")
            raise
        if run.parallelism is not None:
            summary.run.update(workers=run.parallelism.workers, threads=run.parallelism.threads)
        summary.write(folder.path, rows)
    _print_rows(rows)
    errors = sum(r["status"] != "done" for r in rows)
    flagged = sum(r["verdict"] == "backdoored" for r in rows)
    stdout.print(f"[bold]{len(rows)} models: {flagged} backdoored, {len(rows) - flagged - errors} clean, {errors} "
                 f"error{'s' if errors != 1 else ''}[/]; wrote {escape(str(folder.path))}/index.html in "
                 f"{time.perf_counter() - started:.0f}s")


def _input_paths(entry: ModelEntry) -> list[Path]:
    """The files a model's scan reads, which the output folder must never hold or lie in."""
    paths = [entry.path]
    if isinstance(entry.inputs, FileInputs):
        paths += [entry.inputs.clean, *entry.inputs.images]
    return paths


def _only(listing: list[ListedEntry], names: tuple[str, ...]) -> list[ListedEntry]:
    """The listed models named in `names` (all when none are), in listing order."""
    if not names:
        return listing
    unknown = sorted(set(names) - {item.entry.name for item in listing})
    if unknown:
        raise click.UsageError(f"--model {', '.join(unknown)}: not in the population (it lists "
                               f"{', '.join(item.entry.name for item in listing[:8])}{', ...' if len(listing) > 8 else ''})")
    return [item for item in listing if item.entry.name in names]


def _print_rows(rows: list[dict[str, Any]]) -> None:
    stdout.print("| model | verdict | targets | score | trojan probability | s | error |")
    stdout.print("|---|---|---|---|---|---|---|")
    for r in rows:
        score = "" if r["score"] is None else f"{r['score']:.2f}"
        p = "" if r["trojan_probability"] is None else f"{r['trojan_probability']:.3f}"
        stdout.print(escape(f"| {r['model']} | {r['verdict']} | {r['targets']} | {score} | {p} | {r['seconds']:.0f} | "
                            f"{r['error'] or ''} |"), highlight=False)


@click.command("trojai", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--model_filepath", "trojai_model", required=True, type=click.Path(path_type=Path),
              help="The model to judge (TrojAI harness flag).")
@click.option("--examples_dirpath", "trojai_examples", required=True, type=click.Path(path_type=Path),
              help="Clean examples: class_<c>_example_<i>.png files, an ImageFolder or an .npz.")
@click.option("--result_filepath", "trojai_result", required=True, type=click.Path(path_type=Path),
              help="Where the trojan probability (one number in [0, 1]) is written.")
@click.option("--scratch_dirpath", "trojai_scratch", type=click.Path(path_type=Path), help="Accepted; not used.")
@model_reading_options
@scan_setting_options
@click.pass_context
def trojai_command(ctx: click.Context, **opts: Any) -> None:
    """TrojAI-style entry point: scan one model, write its trojan probability to --result_filepath.

    The examples are class_<c>_example_<i>.png files (or an ImageFolder or .npz); the scan image is a seeded pick
    among them. The harness's other flags (metaparameters, schema, learned parameters, ...) are accepted and
    ignored. Round models are pickled whole models: they load only with --trust-code, which runs code from the
    file. The probability is calibrated on the default scan (docs/benchmarks.md, "Trojan probability")."""
    ignored = ctx.args[1:] if ctx.args[:1] == ["infer"] else ctx.args  # newer rounds: `entrypoint infer --...`
    if ignored:
        err.print(escape(f"ignored: {' '.join(ignored)}"), style="yellow", highlight=False)
    hints = LoadingHints(opts["arch"], opts["num_classes"], opts["input_size"],
                         None if opts["channels"] is None else int(opts["channels"]),
                         None if opts["mean"] is None else tuple(opts["mean"]),
                         None if opts["std"] is None else tuple(opts["std"]))
    request = TrojaiRequest(opts["trojai_model"], opts["trojai_examples"], opts["trojai_result"],
                            Loading(trust_code_flag(opts), opts["device"], opts["probe_timeout"]), hints,
                            ScanJob(scan_settings(opts, None), opts["clean_limit"],
                                    None if opts["classes"] is None else tuple(opts["classes"]), opts["denoiser"],
                                    "smoothinv " + " ".join(sys.argv[1:])))
    row = trojan_probability(request)
    stdout.print(escape(f"{row['model']}: {row['verdict']} {row['targets']}, score {row['score']:.2f}, trojan "
                        f"probability {row['trojan_probability']} -> {opts['trojai_result']}"), highlight=False)
