"""The denoisers that ship with smoothinv, by name (`--denoiser cifar10-ddpm`).

Each is a diffusers-format folder under denoisers/store/, trained here by
`smoothinv denoiser train` (docs/denoisers.md has the commands, their cost and PSNR).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry

STORE = Path(__file__).parent / "store"


@dataclass(frozen=True)
class DenoiserEntry:
    """A shipped denoiser: its folder and what it denoises."""

    folder: Path
    description: str
    dataset: str


DENOISERS: Registry[DenoiserEntry] = Registry("denoiser")
DENOISERS.add("cifar10-ddpm", DenoiserEntry(STORE / "cifar10-ddpm",
                                            "CIFAR-10, 3x32x32: 1.1 M-parameter DDPM trained for σ 0.04–1.6",
                                            "cifar10"))
DENOISERS.add("fashion-mnist-ddpm", DenoiserEntry(STORE / "fashion-mnist-ddpm",
                                                  "Fashion-MNIST, 1x28x28 (native size): 1.1 M-parameter DDPM, σ 0.04–1.6",
                                                  "fashion-mnist"))


def shipped_for(dataset: str) -> str | None:
    """The name of the shipped denoiser trained on `dataset`, if there is one."""
    return next((name for name, entry in DENOISERS.items() if entry.dataset == dataset), None)


def list_denoisers() -> dict[str, str]:
    """{name: description} of every shipped denoiser."""
    return {name: entry.description for name, entry in DENOISERS.items()}
