"""Options shared by commands that inspect a model, and their parsing."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import torch

from ..errors import SmoothInvError
from ..files import sha256_file
from ..engine.logits import CheckedModel
from ..engine.precision import PRECISIONS
from ..models import LoadedModel, load_model, probe_model
from ..models.loading import probe_channels
from ..models.loading import check_input_size
from ..models.timeout import PROBE_TIMEOUT_S
from .params import BOUNDS


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmoothInvError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    return name


MODEL_PATH_OPTION = click.option(
    "--model", "model_path", required=True, type=click.Path(path_type=Path),
    help="Model file: safetensors or .pt state_dict (with --arch), ONNX, or, with --trust-code, TorchScript or a "
         "pickled model.")


def model_reading_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The flags that say how to read a model file (every flag of `model_options` but --model)."""
    decorators = [
        click.option("--arch", help="Architecture name for state_dict files (see `smoothinv models`)."),
        click.option("--num-classes", type=int, help="Number of classes (inferred from the weights when omitted)."),
        click.option("--input-size", type=BOUNDS.input_size,
                     help="Model input H,W (default: the arch's, else the clean set's or image's size)."),
        click.option("--channels", type=click.Choice(["1", "3"]), help="Input channels (default: the arch's, else probed)."),
        click.option("--mean", type=BOUNDS.statistics,
                     help="Per-channel normalisation mean the model expects, e.g. 0.485,0.456,0.406 "
                          "(default: the architecture's, if it has one)."),
        click.option("--std", type=BOUNDS.statistics, help="Per-channel normalisation std the model expects."),
        click.option("--trust-code", is_flag=True,
                     help="Allow formats that carry code: pickled models and TorchScript. "
                          "This RUNS CODE FROM THE FILE: only for files you trust."),
        click.option("--unsafe-pickle", is_flag=True, hidden=True, help="Deprecated alias of --trust-code."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N]."),
        click.option("--probe-timeout", default=PROBE_TIMEOUT_S, show_default=True, type=BOUNDS.seconds,
                     help="Seconds the model may take for its first forward pass before it is refused as stuck."),
    ]
    return functools.reduce(lambda f, d: d(f), reversed(decorators), command)


def model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--model and the flags that say how to read it."""
    return MODEL_PATH_OPTION(model_reading_options(command))


@dataclass
class Subject:
    """The model under inspection, ready to use: [0,1] images of `shape` → `num_classes` logits."""

    loaded: LoadedModel
    path: Path
    sha256: str
    channels: int
    input_size: tuple[int, int] | None
    num_classes: int
    device: str

    @property
    def module(self) -> torch.nn.Module:
        """The model, every output of which is checked (finite [batch, K] logits)."""
        return self._checked

    def __post_init__(self) -> None:
        self._checked = CheckedModel(self.loaded.module)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "sha256": self.sha256,
            "format": self.loaded.format,
            "arch": self.loaded.arch,
            "num_classes": self.num_classes,
            "channels": self.channels,
            "input_size": None if self.input_size is None else list(self.input_size),
            "mean": None if self.loaded.mean is None else list(self.loaded.mean),
            "std": None if self.loaded.std is None else list(self.loaded.std),
            "device": self.device,
        }


def load_subject(opts: dict[str, Any], fallback_size: tuple[int, int] | None = None) -> Subject:
    """Load and probe the model from the CLI options; errors are one line."""
    device = resolve_device(opts["device"])
    loaded = load_model(
        opts["model_path"],
        arch=opts["arch"],
        num_classes=opts["num_classes"],
        input_size=opts["input_size"],
        channels=None if opts["channels"] is None else int(opts["channels"]),
        mean=None if opts["mean"] is None else list(opts["mean"]),
        std=None if opts["std"] is None else list(opts["std"]),
        trust_code=trust_code_flag(opts),
        device=device,
    )
    size = loaded.input_size or fallback_size
    if loaded.input_size is None and size is not None:
        _check_fallback_size(size)
    probe_size = size or (32, 32)
    if loaded.channels is not None:
        channels = loaded.channels
        classes = probe_model(loaded.module, channels=channels, input_size=probe_size, device=device,
                              timeout=opts["probe_timeout"])
    else:
        channels, classes = probe_channels(loaded.module, probe_size, device, opts["probe_timeout"])
    if loaded.num_classes is not None and loaded.num_classes != classes:
        raise SmoothInvError(f"model returns {classes} scores but --num-classes is {loaded.num_classes}")
    return Subject(loaded, Path(opts["model_path"]), _sha256(opts["model_path"]), channels, size, classes, device)


def trust_code_flag(opts: dict[str, Any]) -> bool:
    """--trust-code, or its deprecated alias --unsafe-pickle (which says so on stderr)."""
    if opts.get("unsafe_pickle"):
        click.echo("warning: --unsafe-pickle is deprecated; use --trust-code", err=True)
        return True
    return bool(opts.get("trust_code"))


def _check_fallback_size(size: tuple[int, int]) -> None:
    """The image's own size, used when nothing says the model's, within the loader's bounds."""
    try:
        check_input_size(size, "the image size")
    except SmoothInvError as exc:
        raise SmoothInvError(f"{exc}; pass --input-size H,W to resize the inputs") from None



def _sha256(path: Path) -> str:
    """The model file's SHA-256 (hex), recorded with every result."""
    return sha256_file(path)


def precision_option(function: Callable[..., Any]) -> Callable[..., Any]:
    """--precision: how the descent runs the model (engine.precision)."""
    return click.option("--precision", type=click.Choice(list(PRECISIONS)), default=None,
                        help="How the descent runs the model: bf16 = bfloat16 autocast on channels-last inputs (about "
                             "2.2-2.7x faster where the CPU or GPU has bfloat16 arithmetic); auto = bf16 where it is fast; "
                             "fp32 = the model exactly as loaded. Every reported ASR is measured in fp32.  "
                             "[default: auto; fp32 with --exhaustive]")(function)
