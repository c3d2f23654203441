"""Open one model of a population: load it without running code from the file (unless allowed),
probe it, and wrap it so every output is checked (finite [batch, K] logits).

The same steps as the `scan` command's loading, for a worker that gets its options from an
entry instead of the command line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..engine.logits import CheckedModel
from ..errors import SmoothInvError, param
from ..models import LoadedModel, load_model, probe_model
from ..models.loading import probe_channels
from ..models.loading import check_input_size
from ..models.timeout import PROBE_TIMEOUT_S
from .entries import LoadingHints


def resolve_device(name: str) -> str:
    """"auto" → cuda when PyTorch sees a GPU, else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SmoothInvError(f"{param('device')} {name} was asked for but PyTorch sees no CUDA GPU; use cpu")
    return name


@dataclass(frozen=True)
class Loading:
    """How every model of a run is opened: whether code-carrying formats may run, on which device,
    and how long the first forward pass may take."""

    trust_code: bool = False
    device: str = "auto"
    probe_timeout: float | None = PROBE_TIMEOUT_S

    def describe(self) -> dict[str, Any]:
        return {"trust_code": self.trust_code}


@dataclass
class OpenedModel:
    """A model ready to scan: [0,1] images [B, channels, H, W] → `num_classes` checked logits."""

    loaded: LoadedModel
    path: Path
    sha256: str
    channels: int
    input_size: tuple[int, int] | None
    num_classes: int
    device: str

    def __post_init__(self) -> None:
        self.module = CheckedModel(self.loaded.module)

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "sha256": self.sha256, "format": self.loaded.format, "arch": self.loaded.arch,
            "num_classes": self.num_classes, "channels": self.channels,
            "input_size": None if self.input_size is None else list(self.input_size),
            "mean": None if self.loaded.mean is None else list(self.loaded.mean),
            "std": None if self.loaded.std is None else list(self.loaded.std), "device": self.device,
        }


def open_model(path: Path, hints: LoadingHints, loading: Loading, sha256: str,
               fallback_size: tuple[int, int] | None = None) -> OpenedModel:
    """Load and probe the model at `path`; every problem is a one-line SmoothInvError."""
    device = resolve_device(loading.device)
    loaded = load_model(path, arch=hints.arch, num_classes=hints.num_classes, input_size=hints.input_size,
                        channels=hints.channels, mean=None if hints.mean is None else list(hints.mean),
                        std=None if hints.std is None else list(hints.std), trust_code=loading.trust_code,
                        device=device)
    size = loaded.input_size or fallback_size
    if loaded.input_size is None and size is not None:
        check_input_size(size, "the image size")
    probe_size = size or (32, 32)
    if loaded.channels is not None:
        channels = loaded.channels
        classes = probe_model(loaded.module, channels=channels, input_size=probe_size, device=device,
                              timeout=loading.probe_timeout)
    else:
        channels, classes = probe_channels(loaded.module, probe_size, device, loading.probe_timeout)
    if loaded.num_classes is not None and loaded.num_classes != classes:
        raise SmoothInvError(f"model returns {classes} scores but {param('num_classes')} is {loaded.num_classes}")
    return OpenedModel(loaded, path, sha256, channels, size, classes, device)


