"""Model registry: every architecture smoothinv can rebuild from a state_dict, by name.

To add an architecture, write a builder ``f(num_classes) -> nn.Module`` in a module of
this package, decorate it with ``@register_model(...)``, and import that module at the
bottom of this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from smoothinv.errors import SmoothInvError

Builder = Callable[[int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What smoothinv knows about one architecture.

    ``input_size`` is (H, W) and ``channels`` is C of the images it expects by default;
    ``head`` is the state_dict key of the final layer's weight ([num_classes, features]),
    used to read the number of classes from a checkpoint.
    """

    name: str
    builder: Builder
    input_size: tuple[int, int]
    channels: int
    num_classes: int
    head: str
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    input_size: tuple[int, int],
    channels: int,
    num_classes: int,
    head: str,
    description: str,
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(num_classes) -> nn.Module`` under ``name``."""

    def decorate(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            input_size=(int(input_size[0]), int(input_size[1])),
            channels=int(channels),
            num_classes=int(num_classes),
            head=head,
            description=description,
        )
        return builder

    return decorate


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_REGISTRY)


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; unknown names raise SmoothInvError."""
    info = _REGISTRY.get(name)
    if info is None:
        raise SmoothInvError(
            f"unknown architecture {name!r}; known: {', '.join(model_names())}"
        )
    return info


def list_models() -> list[ModelInfo]:
    """All registry entries, sorted by name."""
    return [_REGISTRY[name] for name in model_names()]


def create_model(name: str, num_classes: int | None = None) -> nn.Module:
    """A freshly initialised ``name`` with ``num_classes`` outputs (default: the arch's)."""
    info = get_model_info(name)
    if num_classes is None:
        num_classes = info.num_classes
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise SmoothInvError(
            f"num_classes must be a positive integer, got {num_classes!r}"
        )
    return info.builder(num_classes)


# Architecture modules register themselves on import; loading uses the registry.
from smoothinv.models import (  # noqa: E402,F401
    alexnet,
    preact_resnet,
    resnet,
    resnet_cifar,
    small_cnn,
    vgg,
)
from smoothinv.models.loading import (  # noqa: E402
    LoadedModel,
    Normalize,
    load_model,
    probe_model,
    save_model,
)

__all__ = [
    "LoadedModel",
    "ModelInfo",
    "Normalize",
    "create_model",
    "get_model_info",
    "list_models",
    "load_model",
    "model_names",
    "probe_model",
    "register_model",
    "save_model",
]
