"""The `smoothinv` command line."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
import torch
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..attacks import AttackSpec, attack_from_dict, list_attacks
from ..engine.sanity import SANITY_SIGMAS, sanity_table
from ..zoo.manifest import read_manifest
from ..data import load_clean_set, load_image
from ..protocols.sweep import Grid, Racing, run_sweep, sweep_steps
from ..errors import SmoothInvError
from ..methods import list_methods, method_spec
from ..methods.base import check_target
from .methods import spec_from_flags
from ..models import list_models
from ..reporting.inversion import inversion_record, write_inversion
from ..reporting.outputs import atomic_directory, check_destination
from .denoiser import chosen_denoiser, denoiser_group, denoiser_option
from .options import load_subject, model_options, precision_option, trust_code_flag
from .params import BOUNDS, MAX_CLASS_INDEX
from .progress import step_progress
from .tables import sweep_table
from .bench import bench_group
from .clip import clip_group
from .interrupt import run_interruptibly
from .messages import for_command_line
from .repair import repair_command
from .scan import scan_command
from .scan_many import scan_many_command, trojai_command
from .vqa import vqa_group
from .zoo import zoo_group

err = Console(stderr=True)
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())  # click >= 8.2
stdout = Console()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="smoothinv")
def cli() -> None:
    """Find, identify and picture a classifier's backdoor from one clean image (SmoothInv)."""


@cli.command()
@model_options
@click.option("--image", required=True, type=click.Path(path_type=Path), help="The single clean image (PNG/JPEG).")
@click.option("--target", required=True, help="Target class: an index, or a class name of the clean set's folders.")
@click.option("--clean", required=True, type=click.Path(path_type=Path),
              help="Held-out clean images for ASR: an ImageFolder directory or an .npz (x uint8 NxHxWxC, y).")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output directory (written atomically).")
@click.option("--eps", type=BOUNDS.eps, help="Absolute l2 bounds, comma-separated (default: paper's 5,10 scaled to the input size).")
@click.option("--sigma", type=BOUNDS.sigmas, help="Smoothing noise levels, comma-separated.  [default: 0.12,0.25,0.5,1.0]")
@click.option("--noise-samples", default=10, show_default=True, type=BOUNDS.noise_samples, help="Noise copies N per step (paper: 40).")
@click.option("--steps", default=400, show_default=True, type=BOUNDS.steps, help="Descent steps per config.")
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed, help="Seed for noise and clean-set subsampling.")
@click.option("--method", default="smoothinv", show_default=True, type=click.Choice(sorted(list_methods())),
              help="smoothinv: as in the paper; momentum: as in the authors' code; plainadv: no smoothing; "
                   "see `smoothinv methods`.")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also run PlainAdv at each eps.")
@click.option("--exhaustive", is_flag=True,
              help="Run every config to its last step, one after the other (the paper's protocol as written). By "
                   "default the configs run as one batched descent and a config stops once a transfer race on 256 "
                   "clean images shows it can no longer be the best.")
@precision_option
@click.option("--clean-limit", default=1000, show_default=True, type=BOUNDS.images, help="Use at most this many clean images (seeded).")
@click.option("--max-batch", default=256, show_default=True, type=BOUNDS.max_batch, help="Images per forward pass (lower it to save memory).")
@denoiser_option
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def invert(**opts: Any) -> None:
    """Synthesise the backdoor trigger toward --target from one clean image."""
    started = time.perf_counter()
    check_destination(opts["out"], opts["overwrite"], inputs=(opts["image"], opts["clean"], opts["model_path"]))
    native = load_image(opts["image"], channels=3)
    subject = load_subject(opts, fallback_size=tuple(native.shape[1:]))
    size = subject.input_size or tuple(native.shape[1:])
    image = load_image(opts["image"], size=size, channels=subject.channels)
    clean = load_clean_set(opts["clean"], size=size, channels=subject.channels, limit=opts["clean_limit"], seed=opts["seed"])
    clean.check_labels(subject.num_classes)
    target = parse_target(opts["target"], clean.class_names)
    check_target(torch.tensor([target]), subject.num_classes)
    if not bool((clean.labels != target).any()):
        raise SmoothInvError(f"every clean image is of the target class {target}; ASR needs images of other classes")
    grid = Grid.for_shape(image.shape, list(opts["eps"]) if opts["eps"] else None, list(opts["sigma"]) if opts["sigma"] else None)
    ref, denoiser = chosen_denoiser(opts["denoiser"], trust_code=trust_code_flag(opts), channels=subject.channels,
                                    size=size, sigmas=grid.sigmas)
    method = spec_from_flags(opts["method"], {**{k: opts[k] for k in ("steps", "noise_samples", "max_batch")},
                                              "denoiser": ref})
    baseline = (method_spec("plainadv", steps=opts["steps"], max_batch=opts["max_batch"])
                if opts["baseline"] and method.name != "plainadv" else None)
    loaded_s = time.perf_counter() - started

    err.print(escape(f"model {subject.path.name}: {subject.loaded.format}, {subject.num_classes} classes, "
                     f"input {subject.channels}x{size[0]}x{size[1]}; clean set: {len(clean)} images; "
                     f"eps grid {list(grid.eps)}"), highlight=False, soft_wrap=True)
    if opts["exhaustive"] and opts["precision"] not in (None, "fp32"):
        raise click.UsageError("--exhaustive runs the paper's protocol as written, in fp32; drop --precision")
    racing = None if opts["exhaustive"] else Racing(precision=opts["precision"] or "auto")
    with step_progress(sweep_steps(method, baseline, grid, racing), err) as hook:
        sweep = run_sweep(subject.module, image, target, clean.images, clean.labels, grid, method=method,
                          baseline=baseline, seed=opts["seed"], eval_batch=opts["max_batch"], progress=hook,
                          racing=racing)
    total_s = time.perf_counter() - started
    context = {
        "smoothinv_version": __version__,
        "command": "smoothinv " + " ".join(sys.argv[1:]),
        "model": subject.describe(),
        "image": {"path": str(opts["image"]), "shape": list(image.shape)},
        "clean_set": {"path": str(opts["clean"]), "images": len(clean), "limit": opts["clean_limit"],
                      "class_names": clean.class_names},
        "target_name": None if not clean.class_names or target >= len(clean.class_names) else clean.class_names[target],
        "seed": opts["seed"],
        "settings": {"method": method.to_dict(), "baseline": None if baseline is None else baseline.to_dict(),
                     "racing": None if racing is None else asdict(racing)},
        "denoiser": None if denoiser is None else denoiser.describe(list(grid.sigmas)),
        "timings": {"load_s": round(loaded_s, 3), "inversion_s": round(sum(r.result.seconds for r in sweep.runs + sweep.baseline), 3),
                    "evaluation_s": round(sum(r.eval_seconds for r in sweep.runs + sweep.baseline), 3),
                    "total_s": round(total_s, 3)},
    }
    record = inversion_record(sweep, grid, target=target, context=context)
    with atomic_directory(opts["out"], opts["overwrite"], inputs=(opts["image"], opts["clean"], opts["model_path"]), kind="invert") as tmp:
        write_inversion(tmp, sweep, record)
    stdout.print(sweep_table(sweep, f"target {target}: ASR of each synthesised perturbation on {len(clean)} clean images"))
    for warning in record["warnings"]:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    best = sweep.best.result.config
    settings_text = " ".join(f"{k}={best[k]:g}" for k in ("eps", "sigma") if k in best)
    stdout.print(f"best: {sweep.method} {settings_text} "
              f"ASR {sweep.best.asr:.1%}; wrote {opts['out']}/ (result.json, overview.png, …) in {total_s:.1f}s")


@cli.command()
@click.option("--out", default="smoothinv-demo", show_default=True, type=click.Path(path_type=Path),
              help="Where to write the demo's model, data and results.")
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
def demo(out: Path, seed: int) -> None:
    """Plant a backdoor in a small digits classifier, then recover it from one clean image."""
    from ..demo import run_demo

    result = run_demo(out, seed=seed, log=lambda line: stdout.print(escape(line), highlight=False),
                      steps=lambda total: step_progress(total, err))
    for title, sweep in result.sweeps():
        stdout.print(sweep_table(sweep, title))
    stdout.print(f"[bold]{escape(result.headline())}[/]")
    for line in result.closing():
        stdout.print(escape(line), highlight=False)
    stdout.print(escape(f"reproduce with the CLI: {demo_invert_command(result.inversion(), out)}"), highlight=False)


def demo_invert_command(settings: dict[str, Any], out: Path) -> str:
    """The `smoothinv invert` command that reproduces the demo's inversion (`DemoResult.inversion`),
    writing into `out`/cli-run."""
    eps = ",".join(f"{e:g}" for e in settings["eps"])
    return (f"smoothinv invert --model {settings['model']} --image {settings['image']} --target {settings['target']} "
            f"--clean {settings['clean']} --eps {eps} --steps {settings['steps']} "
            f"--noise-samples {settings['noise_samples']} --seed {settings['seed']} --out {out}/cli-run --overwrite")


@cli.command("models")
def models_command() -> None:
    """List the architectures --arch accepts."""
    for info in list_models():
        stdout.print(f"{info.name:<16} {info.channels}x{info.input_size[0]}x{info.input_size[1]}  "
                  f"{info.num_classes:>4} classes  {info.description}")


@cli.command("methods")
def methods_command() -> None:
    """List the inversion methods --method accepts."""
    for name, description in list_methods().items():
        stdout.print(f"{name:<10} {description}")


@cli.command()
@model_options
@click.option("--attack", "attack_text", required=True,
              help='The true trigger: a JSON attack spec, e.g. \'{"attack": "badnets", "target": 0}\', or a zoo model name.')
@click.option("--clean", required=True, type=click.Path(path_type=Path), help="Clean test images (ImageFolder or .npz).")
@click.option("--sigma", type=BOUNDS.sigmas, help="Noise levels, comma-separated.  [default: 0,0.12,0.25,0.5,1.0]")
@click.option("--noise-samples", default=10, show_default=True, type=BOUNDS.noise_samples, help="Noise samples N of G.")
@click.option("--clean-limit", default=500, show_default=True, type=BOUNDS.images, help="Use at most this many clean images (seeded).")
@click.option("--seed", default=0, show_default=True, type=BOUNDS.seed)
@denoiser_option
def sanity(**opts: Any) -> None:
    """Clean accuracy and true-trigger ASR of the smoothed classifier per sigma (paper Table 5)."""
    spec = parse_attack(opts["attack_text"])
    subject = load_subject(opts)
    size = subject.input_size or (32, 32)
    clean = load_clean_set(opts["clean"], size=size, channels=subject.channels, limit=opts["clean_limit"], seed=opts["seed"])
    clean.check_labels(subject.num_classes)
    check_target(torch.tensor([spec.target]), subject.num_classes)
    sigmas = list(opts["sigma"] or SANITY_SIGMAS)
    _, denoiser = chosen_denoiser(opts["denoiser"], trust_code=trust_code_flag(opts), channels=subject.channels,
                                  size=size, sigmas=sigmas)
    rows = sanity_table(subject.module, clean.images, clean.labels, spec.trigger(tuple(clean.images.shape[1:])),
                        spec.target, sigmas=sigmas, noise_samples=opts["noise_samples"],
                        source_classes=spec.source_classes, seed=opts["seed"], denoiser=denoiser)
    if denoiser is not None:
        stdout.print(escape(f"denoiser {denoiser.name} (t* per sigma: "
                            f"{', '.join(f'{s:g}→{denoiser.timestep(s)}' for s in sigmas if s > 0)})"), highlight=False)
    for row in rows:
        stdout.print(f"sigma {row['sigma']:<5g} clean accuracy {row['clean_accuracy']:.1%}  "
                     f"true-trigger ASR {row['trigger_asr']:.1%}")


def parse_attack(text: str) -> AttackSpec:
    """A JSON attack spec, or the attack of a built zoo model."""
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SmoothInvError(f"--attack is not valid JSON: {e}") from None
        return attack_from_dict(data)
    record = read_manifest().get(text)
    if record is None or record["attack"] is None:
        raise SmoothInvError(f"--attack {text!r} is neither a JSON attack spec nor a backdoored zoo model; "
                             f"attacks: {', '.join(list_attacks())}")
    return attack_from_dict(record["attack"])


cli.add_command(zoo_group)
cli.add_command(vqa_group)
cli.add_command(clip_group)
cli.add_command(scan_command)
cli.add_command(scan_many_command)
cli.add_command(trojai_command)
cli.add_command(repair_command)
cli.add_command(bench_group)
cli.add_command(denoiser_group)


def parse_target(text: str, class_names: list[str] | None) -> int:
    """An index, or a class name of the clean set."""
    try:
        index = int(text)
    except ValueError:
        index = None
    if index is not None:
        if abs(index) > MAX_CLASS_INDEX:
            raise SmoothInvError(f"--target {text!r} is far beyond any model's number of classes")
        return index
    if class_names and text in class_names:
        return class_names.index(text)
    known = f"; clean-set classes: {', '.join(class_names)}" if class_names else ""
    raise SmoothInvError(f"--target {text!r} is not a class index or a known class name{known}")


def main() -> None:
    """Entry point: one-line errors and exit status 2 for anything the user can fix."""
    try:
        run_interruptibly(lambda: cli.main(prog_name="smoothinv", standalone_mode=False))
    except SmoothInvError as e:  # the library names parameters; the user typed flags
        fail(for_command_line(str(e)), e.exit_code)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(130)
    except NO_ARGS_IS_HELP as e:  # `smoothinv` alone: the help, as written
        err.print(escape(e.format_message()), highlight=False)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        fail(e.format_message() + ("; see --help" if isinstance(e, click.UsageError) else ""), e.exit_code)
    except torch.cuda.OutOfMemoryError:
        fail("out of GPU memory; lower --max-batch or --noise-samples", 2)
    except KeyboardInterrupt:
        err.print("interrupted; no output written")
        sys.exit(130)
    except RecursionError:
        fail("the model or an input is nested too deeply to process (recursion limit)", 2)
    except OSError as e:  # a full disk, a vanished folder, a read-only file system
        where = f" ({e.filename})" if e.filename else ""
        fail(f"{e.strerror or e}{where}; check the path, its permissions and the free space", 2)
    except MemoryError:
        fail("out of memory; lower --max-batch, --noise-samples or --clean-limit, or scan fewer --classes", 2)
    except Exception as e:  # a bug, or a model failing in a way we did not foresee
        if os.environ.get("SMOOTHINV_DEBUG"):
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        fail(f"unexpected {type(e).__name__}: {first} (set SMOOTHINV_DEBUG=1 for the traceback)", 1)


def fail(message: str, code: int) -> None:
    """Print `error: message` as one plain line on stderr and exit with `code`."""
    err.print(f"[red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)
    sys.exit(code)
