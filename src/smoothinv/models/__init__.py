"""Model registry: every architecture smoothinv can rebuild from a state_dict, by name.

To add an architecture, write a builder ``f(*, num_classes, channels, **options) -> nn.Module``
in a module of this package, decorate it with ``@register_model(...)`` (its default input
size, channels, classes, normalisation and the state_dict keys of its first conv and head,
as timm records them), and import that module at the bottom of this file. An architecture
whose layout the checkpoint decides (CLIP: widths, depths, resolution) also gives
``file_options``, which reads the builder's options from the file's weights and metadata.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.registry import Registry

Builder = Callable[..., nn.Module]
"""``builder(*, num_classes: int, channels: int, **arch_options) -> nn.Module``."""

FileOptions = Callable[[Mapping[str, torch.Tensor], Mapping[str, str]], dict[str, Any]]
"""``file_options(state_dict, metadata) -> builder options``: what an architecture's builder needs
that the arch name does not fix, read from a checkpoint's state_dict and its safetensors metadata
(empty for other formats). It raises SmoothInvError on a state_dict it cannot describe."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelInfo:
    """What smoothinv knows about one architecture.

    ``input_size`` is (H, W), ``channels`` C and ``num_classes`` K of the images and outputs
    it has by default. ``mean``/``std`` are the per-channel normalisation it expects by
    default (None: it takes [0, 1] images as they are); ``load_model`` applies them unless
    the file or the caller says otherwise. ``head`` is the state_dict key of the final
    layer's weight [K, features] and ``first_conv`` that of the first convolution's weight
    [out, C, kh, kw]: they tell K and C of a checkpoint. ``file_options`` (None for fixed
    layouts) gives the builder options a checkpoint's weights and metadata decide, which
    ``load_model`` passes to the builder along with K and C.
    """

    name: str
    builder: Builder
    input_size: tuple[int, int]
    channels: int
    num_classes: int
    head: str
    description: str
    first_conv: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    file_options: FileOptions | None = None

    def options_from_file(self, state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, Any]:
        """The builder options `state` and `metadata` decide ({} for archs of a fixed layout)."""
        return {} if self.file_options is None else self.file_options(state, metadata)

    def build(self, num_classes: int | None = None, channels: int | None = None, **options: Any) -> nn.Module:
        """A freshly initialised model; None takes the arch's default. Unknown `options` raise."""
        self.check_options(options)
        return self.builder(
            num_classes=_positive_int(self.num_classes if num_classes is None else num_classes, "num_classes"),
            channels=_positive_int(self.channels if channels is None else channels, "channels"),
            **options,
        )

    def options(self) -> tuple[str, ...]:
        """The keyword options the builder takes (num_classes and channels among them)."""
        return tuple(inspect.signature(self.builder).parameters)

    def check_options(self, options: dict[str, Any]) -> None:
        """Refuse keywords the builder does not take (unless it takes any: ``**kwargs``)."""
        parameters = inspect.signature(self.builder).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            raise SmoothInvError(
                f"architecture {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"its options: {', '.join(self.options())}"
            )


MODELS: Registry[ModelInfo] = Registry("architecture")


def register_model(
    name: str,
    *,
    input_size: tuple[int, int],
    channels: int,
    num_classes: int,
    head: str,
    description: str,
    first_conv: str | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    file_options: FileOptions | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator that registers ``builder(*, num_classes, channels, ...) -> nn.Module`` as ``name``."""
    if (mean is None) != (std is None):
        raise ValueError(f"model {name!r}: give both mean and std, or neither")

    def decorate(builder: Builder) -> Builder:
        MODELS.add(name, ModelInfo(
            name=name,
            builder=builder,
            input_size=(int(input_size[0]), int(input_size[1])),
            channels=int(channels),
            num_classes=int(num_classes),
            head=head,
            description=description,
            first_conv=first_conv,
            mean=None if mean is None else tuple(float(v) for v in mean),
            std=None if std is None else tuple(float(v) for v in std),
            file_options=file_options,
        ))
        return builder

    return decorate


def model_names() -> list[str]:
    """Registered architecture names, sorted."""
    return MODELS.names()


def get_model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``; unknown names raise SmoothInvError listing the known ones."""
    return MODELS.get(name)


def list_models() -> list[ModelInfo]:
    """All registry entries, sorted by name."""
    return [info for _, info in MODELS.items()]


def create_model(name: str, num_classes: int | None = None, channels: int | None = None,
                 **options: Any) -> nn.Module:
    """A freshly initialised ``name`` with ``num_classes`` outputs and ``channels`` input
    channels (None: the arch's defaults) and any arch-specific ``options``."""
    return get_model_info(name).build(num_classes, channels, **options)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SmoothInvError(f"{name} must be a positive integer, got {value!r}")
    return value


# Architecture modules register themselves on import; loading uses the registry.
from smoothinv.models import (  # noqa: E402,F401
    alexnet,
    clip,
    plain_cnn,
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
    "FileOptions",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "MODELS",
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
