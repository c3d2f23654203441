"""The public way in and out of model files: load_model, save_model, probe_model.

load_model reads any supported format (see ``formats`` and the ``onnx`` subpackage) without
running code from the file, unless the caller passes ``trust_code=True`` for the formats
that carry code (pickled models, TorchScript). It rebuilds state_dicts into a registered
architecture (see ``state_dicts``), merges settings from arguments, the file (safetensors
metadata, an ONNX graph's input shape), the weights (classes, input channels) and registry
defaults (input size, channels, and for rebuilt archs their normalisation), and returns a frozen
eval-mode ``LoadedModel``. safetensors metadata may carry ``arch``, ``num_classes``,
``input_size`` ("H,W"), ``channels``, ``mean`` and ``std`` (comma-separated floats);
save_model writes it. Every declared size is checked against the bounds below before
anything is allocated for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from smoothinv.errors import SmoothInvError, param
from smoothinv.files import atomic_path
from smoothinv.models import ModelInfo, get_model_info, model_names
from smoothinv.models.formats import (
    ONNX,
    PICKLE,
    SAFETENSORS,
    STATE_DICT,
    TORCHSCRIPT,
    detect_format,
    read_safetensors,
    read_torch_save,
    read_torchscript,
)
from smoothinv.models.messages import one_line
from smoothinv.models.timeout import PROBE_TIMEOUT_S, ModelTimeout, call_with_timeout
from smoothinv.models.state_dicts import (
    arch_hint,
    as_state_dict,
    infer_channels,
    infer_num_classes,
    load_state,
    unwrap_containers,
)

METADATA_KEYS = ("arch", "num_classes", "input_size", "channels", "mean", "std")

# ----------------------------------------------------------------------------- bounds
# What a model file (safetensors metadata, an ONNX input shape), a model's output or a flag
# may declare, checked before anything is allocated for it: a 421 KB file that says
# input_size=2500,2500 must not make us allocate gigabytes. Data readers import these too.
MAX_IMAGE_SIDE = 4096  # pixels, for H and for W
MAX_IMAGE_PIXELS = 2048 * 2048  # H x W
IMAGE_CHANNELS = (1, 3)  # gray or RGB
MAX_NUM_CLASSES = 100_000
MAX_STAT_VALUES = max(IMAGE_CHANNELS)  # values in mean/std: one per channel, or one for all


def check_input_size(value: object, name: str = param("input_size")) -> tuple[int, int]:
    """(H, W) from an int or a pair: each side in [1, MAX_IMAGE_SIDE], H*W <= MAX_IMAGE_PIXELS."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise SmoothInvError(f"{name} must be H,W (two positive integers), got {_short(value)}")
    height, width = (_check_positive_int(v, name) for v in value)
    if max(height, width) > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        raise SmoothInvError(
            f"{name} {height}x{width} is too large: at most {MAX_IMAGE_SIDE} pixels per side and "
            f"{MAX_IMAGE_PIXELS} pixels in all (2048x2048)"
        )
    return (height, width)


def check_channels(value: object, name: str = param("channels")) -> int:
    """The number of image channels: 1 (gray) or 3 (RGB)."""
    if isinstance(value, bool) or not isinstance(value, int) or value not in IMAGE_CHANNELS:
        raise SmoothInvError(f"{name} must be 1 (gray) or 3 (RGB), got {_short(value)}")
    return value


def check_num_classes(value: object, name: str = param("num_classes")) -> int:
    """A number of classes in [1, MAX_NUM_CLASSES]."""
    value = _check_positive_int(value, name)
    if value > MAX_NUM_CLASSES:
        raise SmoothInvError(f"{name} is {value}; at most {MAX_NUM_CLASSES} classes are supported")
    return value


@dataclass
class LoadedModel:
    """A loaded classifier, ready for inference, and what is known about its inputs.

    ``module`` maps [B, channels, H, W] images to logits [B, num_classes]; when ``mean``
    and ``std`` are set it is a ``Normalize`` wrapper and expects images in [0, 1].
    ``format`` is "safetensors", "state_dict", "onnx", "torchscript" or "pickle".
    """

    module: nn.Module
    format: str
    arch: str | None
    num_classes: int | None
    input_size: tuple[int, int] | None
    channels: int | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    metadata: Mapping[str, str] = field(default_factory=dict)
    """The file's safetensors metadata as written (empty for other formats): a copy saved
    from this model (a repair) carries the keys `save_model` does not set itself, such as
    a zero-shot classifier's ``clip_activation`` and ``class_names``."""

    def extra_metadata(self) -> dict[str, str]:
        """The file's metadata beyond METADATA_KEYS, for `save_model`'s ``extra_metadata``."""
        return {k: v for k, v in self.metadata.items() if k not in METADATA_KEYS}


@dataclass(frozen=True)
class Hints:
    """Model settings from one source (arguments or file metadata); None = not given."""

    arch: str | None = None
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def or_else(self, fallback: Hints) -> Hints:
        """These settings, with gaps filled from ``fallback``."""
        values = {}
        for f in fields(self):
            mine = getattr(self, f.name)
            values[f.name] = getattr(fallback, f.name) if mine is None else mine
        return Hints(**values)


class Normalize(nn.Module):
    """Wraps a classifier so callers pass [0, 1] images: ``model((x - mean) / std)``.

    ``mean``/``std`` hold one value per channel (or one value for all channels); they are
    non-persistent buffers, so ``state_dict()`` holds only ``model.*`` keys; the exact
    values are kept as ``mean_values``/``std_values`` tuples.
    x: [B, C, H, W] -> the wrapped model's output.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = _stat_tuple("mean", mean)
        std_t = _stat_tuple("std", std)
        if len(mean_t) != len(std_t):
            raise SmoothInvError(
                f"{param('mean')} has {len(mean_t)} values but {param('std')} has {len(std_t)}; give one per channel"
            )
        if any(not s > 0 for s in std_t):
            raise SmoothInvError(f"{param('std')} values must all be > 0, got {list(std_t)}")
        self.model = model
        self.mean_values = mean_t
        self.std_values = std_t
        self.register_buffer("mean", torch.tensor(mean_t).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std_t).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


# ----------------------------------------------------------------------------- public API


def load_model(
    path: str | os.PathLike[str],
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    input_size: tuple[int, int] | None = None,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    trust_code: bool = False,
    device: str | torch.device = "cpu",
) -> LoadedModel:
    """Load a classifier from ``path`` in eval mode on ``device``, parameters frozen.

    Arguments override the file's safetensors metadata, which overrides what the weights
    show (classes from the head, input channels from the first conv), which overrides the
    arch's registry defaults. State dicts need an arch (argument or metadata). With ``mean``
    and ``std`` (given, in the metadata, or, for a state_dict, the arch's default such as
    ImageNet's) the module is wrapped in ``Normalize``. Pickled models and TorchScript carry
    code that runs on load, so they are refused unless ``trust_code`` is True.
    Every user-fixable problem raises SmoothInvError.
    """
    path = Path(path)
    torch_device = _parse_device(device)
    given = _given_hints(arch, num_classes, input_size, channels, mean, std)
    contents = _read_contents(path, given, trust_code)
    info = _arch_info(contents.hints, given, path)
    if contents.state is not None:
        module, hints = _build_from_state(contents.state, info, contents.hints, path, contents.metadata)
    else:
        assert contents.module is not None
        module, hints = contents.module, contents.hints.or_else(_arch_shape(info))
    return LoadedModel(
        module=_finalize(_normalized(module, hints), torch_device),
        format=contents.format,
        arch=info.name if info else None,
        num_classes=hints.num_classes,
        input_size=hints.input_size,
        channels=hints.channels,
        mean=hints.mean,
        std=hints.std,
        metadata=dict(contents.metadata),
    )


@dataclass
class _Contents:
    """What a model file holds: a module (ONNX, TorchScript, pickle) or a state_dict to build one
    from, its format name, and the settings the file declares merged under the arguments."""

    format: str
    hints: Hints
    module: nn.Module | None = None
    state: dict[str, torch.Tensor] | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def _given_hints(arch: str | None, num_classes: int | None, input_size: tuple[int, int] | None,
                 channels: int | None, mean: Sequence[float] | None, std: Sequence[float] | None) -> Hints:
    """The caller's settings, each checked against its bounds."""
    return Hints(
        arch=arch,
        num_classes=None if num_classes is None else check_num_classes(num_classes, param("num_classes")),
        input_size=None if input_size is None else check_input_size(input_size, param("input_size")),
        channels=None if channels is None else check_channels(channels, param("channels")),
        mean=None if mean is None else _stat_tuple("mean", mean),
        std=None if std is None else _stat_tuple("std", std),
    )


def _read_contents(path: Path, given: Hints, trust_code: bool) -> _Contents:
    """Read `path` by the format its bytes show; code-carrying formats only with `trust_code`."""
    kind = detect_format(path)
    if kind == SAFETENSORS:
        state, raw_metadata = read_safetensors(path)
        return _Contents(SAFETENSORS, given.or_else(_parse_metadata(raw_metadata, path, given)), state=state,
                         metadata=raw_metadata)
    if kind == ONNX:
        module, declared = _read_onnx(path, given)
        return _Contents(ONNX, given.or_else(declared), module=module)
    if kind == TORCHSCRIPT:
        return _Contents(TORCHSCRIPT, given, module=read_torchscript(path, trust_code))
    obj = unwrap_containers(read_torch_save(path, kind, trust_code))
    if isinstance(obj, nn.Module):
        return _Contents(PICKLE, given, module=obj)
    return _Contents(STATE_DICT, given, state=as_state_dict(obj, path))


def _arch_info(hints: Hints, given: Hints, path: Path) -> ModelInfo | None:
    """The registry entry of the architecture that the arguments or the file name, if any."""
    if hints.arch is None:
        return None
    if given.arch is None and hints.arch not in model_names():
        raise SmoothInvError(
            f"{path.name} names an unknown architecture {_short(hints.arch)} in its metadata; "
            f"pass {param('arch')}=NAME (known: {', '.join(model_names())})"
        )
    return get_model_info(hints.arch)


def _arch_shape(info: ModelInfo | None) -> Hints:
    """The input size and channels an architecture takes by default (nothing without one)."""
    if info is None:
        return Hints()
    return Hints(input_size=info.input_size, channels=info.channels)


def _build_from_state(state: dict[str, torch.Tensor], info: ModelInfo | None, hints: Hints,
                      path: Path, metadata: Mapping[str, str]) -> tuple[nn.Module, Hints]:
    """The architecture built to the shapes of `state` and loaded with it, and `hints` completed:
    classes from the head, channels from the first conv, then the arch's defaults (mean/std
    included, when neither is set). Archs whose layout the file decides read their builder
    options from `state` and the file's `metadata` (``ModelInfo.file_options``)."""
    if info is None:
        raise SmoothInvError(
            f"{path.name} holds a state_dict, which needs {param('arch')}=NAME; known: "
            f"{', '.join(model_names())}{arch_hint(state)}"
        )
    num_classes = hints.num_classes or check_num_classes(
        infer_num_classes(state, info.head, info.num_classes), f"the number of classes in {path.name}"
    )
    # The weights decide the network's input channels; a different `channels` fails the probe.
    channels = check_channels(
        infer_channels(state, info.first_conv, hints.channels or info.channels),
        f"the number of input channels in {path.name}",
    )
    module = info.build(num_classes, channels, **info.options_from_file(state, metadata))
    load_state(module, state, info.name, path)
    hints = replace(hints, num_classes=num_classes, channels=hints.channels or channels)
    return module, _default_stats(hints.or_else(_arch_shape(info)), info)


def _default_stats(hints: Hints, info: ModelInfo) -> Hints:
    """`hints` with the arch's default mean/std when neither is set and they fit its channels."""
    if hints.mean is not None or hints.std is not None or info.mean is None or info.std is None:
        return hints
    if len(info.mean) not in (1, hints.channels):
        return hints  # e.g. a gray model of an RGB architecture: its statistics are unknown
    return replace(hints, mean=info.mean, std=info.std)


def _normalized(module: nn.Module, hints: Hints) -> nn.Module:
    """`module` wrapped in Normalize when mean/std are known (both or neither)."""
    if (hints.mean is None) != (hints.std is None):
        raise SmoothInvError(f"give both {param('mean')} and {param('std')} (one value per channel), or neither")
    if hints.mean is None or hints.std is None:
        return module
    if hints.channels is not None and len(hints.mean) not in (1, hints.channels):
        raise SmoothInvError(
            f"{param('mean')}/{param('std')} have {len(hints.mean)} values but the model takes {hints.channels} "
            "channels; give one value per channel"
        )
    return Normalize(module, hints.mean, hints.std)


def save_model(
    path: str | os.PathLike[str],
    model: nn.Module,
    *,
    arch: str,
    num_classes: int,
    input_size: tuple[int, int],
    channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    extra_metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``model``'s state_dict (unwrapping ``Normalize``) as safetensors, atomically.

    The metadata lets ``load_model`` rebuild the model with no flags. Without ``mean``/``std``
    (given or from a ``Normalize`` wrapper) none are stored, and the file loads with the
    arch's default normalisation (ImageNet's for the 224x224 archs; pass mean=(0,), std=(1,)
    to store "none"). The file is written to a temporary name in the same directory and
    then renamed over ``path`` (``files.atomic_path``).
    """
    path = Path(path)
    if isinstance(model, Normalize):
        if mean is None and std is None:
            mean, std = model.mean_values, model.std_values
        model = model.model
    metadata = _file_metadata(arch, num_classes, input_size, channels, mean, std, extra_metadata or {})
    if not path.parent.is_dir():
        raise SmoothInvError(f"cannot save to {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise SmoothInvError(f"cannot save to {path}: it is a directory; give a file name")
    # Copies, so tensors that share storage (tied weights, views) save cleanly.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _file_metadata(arch: str, num_classes: int, input_size: tuple[int, int], channels: int,
                   mean: Sequence[float] | None, std: Sequence[float] | None,
                   extra: Mapping[str, str]) -> dict[str, str]:
    """The safetensors metadata save_model writes (METADATA_KEYS and `extra`), each value checked."""
    input_size = check_input_size(input_size, param("input_size"))
    metadata = {
        "arch": get_model_info(arch).name,
        "num_classes": str(check_num_classes(num_classes, param("num_classes"))),
        "input_size": f"{input_size[0]},{input_size[1]}",
        "channels": str(check_channels(channels, param("channels"))),
    }
    if (mean is None) != (std is None):
        raise SmoothInvError(f"give both {param('mean')} and {param('std')}, or neither")
    if mean is not None and std is not None:
        metadata["mean"] = ",".join(repr(v) for v in _stat_tuple("mean", mean))
        metadata["std"] = ",".join(repr(v) for v in _stat_tuple("std", std))
    for key, value in extra.items():
        if key in metadata:
            raise SmoothInvError(f"extra_metadata may not set {key!r}; pass it as an argument")
        metadata[str(key)] = str(value)
    return metadata


def probe_model(
    module: nn.Module,
    *,
    channels: int,
    input_size: tuple[int, int],
    device: str | torch.device = "cpu",
    timeout: float | None = PROBE_TIMEOUT_S,
) -> int:
    """Run ``module`` on zeros [2, channels, H, W]; return the number of classes K.

    The output must be a finite [2, K] tensor with K >= 2. A model that has not returned
    after ``timeout`` seconds (None: no limit) is refused: it may loop forever.
    """
    channels = check_channels(channels, param("channels"))
    height, width = check_input_size(input_size, param("input_size"))
    shape = f"2x{channels}x{height}x{width}"
    x = torch.zeros(2, channels, height, width, device=_parse_device(device))
    def forward() -> object:
        with torch.no_grad():
            return module(x)

    try:
        out = call_with_timeout(forward, timeout, f"the model's first forward pass on a {shape} input")
    except SmoothInvError:
        raise
    except Exception as exc:  # the model is arbitrary code: report any failure as one line
        raise SmoothInvError(
            f"model failed on a {shape} input: {one_line(exc)}; check {param('input_size')}/{param('channels')}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise SmoothInvError(
            f"model returned {type(out).__name__} for a {shape} input; "
            "expected a logits tensor [batch, num_classes]"
        )
    if out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        raise SmoothInvError(
            f"model output has shape {list(out.shape)} for a {shape} input; "
            "expected [batch, num_classes] with num_classes >= 2"
        )
    if out.shape[1] > MAX_NUM_CLASSES:
        raise SmoothInvError(
            f"model returns {out.shape[1]} scores per image; at most {MAX_NUM_CLASSES} classes "
            "are supported"
        )
    if not out.is_floating_point():
        raise SmoothInvError(f"model returned {out.dtype} outputs; expected float logits")
    if not torch.isfinite(out).all():
        raise SmoothInvError(
            f"model returned NaN/inf on a {shape} input; the weights may be corrupt "
            f"or {param('mean')}/{param('std')} wrong"
        )
    return int(out.shape[1])



# ----------------------------------------------------------------------------- metadata


def probe_channels(module: nn.Module, size: tuple[int, int], device: str | torch.device = "cpu",
                   timeout: float | None = PROBE_TIMEOUT_S) -> tuple[int, int]:
    """(channels, classes) of a model whose file does not say its channels: RGB, else grey.
    The first error is raised if neither runs; a timeout is raised at once."""
    first_error: SmoothInvError | None = None
    for channels in (3, 1):
        try:
            return channels, probe_model(module, channels=channels, input_size=size, device=device, timeout=timeout)
        except ModelTimeout:
            raise
        except SmoothInvError as e:
            first_error = first_error or e
    assert first_error is not None
    raise first_error


def _parse_metadata(raw: Mapping[str, str], path: Path, given: Hints) -> Hints:
    """Typed safetensors metadata. Keys already ``given`` as arguments are not parsed,
    so a bad stored value can be overridden; unknown keys are ignored."""
    parsed: dict[str, object] = {}
    for key in METADATA_KEYS:
        value = raw.get(key)
        if getattr(given, key) is not None or value is None or value.strip() == "":
            continue
        try:
            if key == "arch":
                parsed[key] = value.strip()
            elif key == "num_classes":
                parsed[key] = check_num_classes(_metadata_int(value, key), key)
            elif key == "channels":
                parsed[key] = check_channels(_metadata_int(value, key), key)
            elif key == "input_size":
                parts = [_metadata_int(p, key) for p in value.replace("x", ",").split(",")]
                parsed[key] = check_input_size(parts * 2 if len(parts) == 1 else parts, key)
            else:
                parsed[key] = _stat_tuple(key, value.split(","))
        except SmoothInvError as exc:
            raise SmoothInvError(
                f"{path.name} has invalid metadata {key}={_short(value)} ({exc}); pass {param(key)} to "
                "override it, or re-save the file"
            ) from None
    return Hints(**parsed)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- helpers


def _finalize(module: nn.Module, device: torch.device) -> nn.Module:
    """Eval mode, frozen parameters (we need only input gradients), on ``device``."""
    try:
        module = module.to(device)
    except Exception as exc:
        raise SmoothInvError(f"cannot move the model to {device}: {one_line(exc)}") from None
    module.eval()
    try:
        for weight in module.parameters():  # ScriptModules lack requires_grad_()
            weight.requires_grad_(False)
    except RuntimeError as exc:  # e.g. a trusted TorchScript module whose "parameter" is not a leaf
        raise SmoothInvError(f"cannot freeze the model's parameters: {one_line(exc)}") from None
    return module


def _parse_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SmoothInvError(f"invalid device {device!r}; use e.g. cpu, cuda or cuda:0") from None


def _check_positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SmoothInvError(f"{name} must be a positive integer, got {_short(value)}")
    return value


def _metadata_int(text: str, key: str) -> int:
    """A whole number from metadata text; '1e9' and '2.5' are refused, not truncated."""
    try:
        return int(text.strip())
    except ValueError:
        raise SmoothInvError(f"{key} must be a whole number") from None


def _short(value: object, limit: int = 60) -> str:
    """repr(value), cut to ``limit`` characters: file contents can be megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_onnx(path: Path, given: Hints) -> tuple[nn.Module, Hints]:
    """An ONNX model and the input shape its graph declares, which the arguments must match."""
    from smoothinv.models.onnx import read_onnx  # imports onnx: only when needed

    def check_declared(channels: int | None, size: tuple[int, int] | None) -> None:
        if channels is not None:
            check_channels(channels, f"{path.name}'s ONNX input channels")
        if size is not None:
            check_input_size(size, f"{path.name}'s ONNX input size")

    graph = read_onnx(path, check_declared)
    for name, mine, theirs in (
        (param("channels"), given.channels, graph.channels),
        (param("input_size"), given.input_size, graph.input_size),
    ):
        if mine is not None and theirs is not None and mine != theirs:
            raise SmoothInvError(
                f"{name} {_size_text(mine)} does not match the {_size_text(theirs)} that "
                f"{path.name}'s ONNX graph declares; omit {name}"
            )
    return graph.module, Hints(channels=graph.channels, input_size=graph.input_size)


def _size_text(value: int | tuple[int, int]) -> str:
    return f"{value[0]}x{value[1]}" if isinstance(value, tuple) else str(value)


def _stat_tuple(name: str, values: Sequence[float]) -> tuple[float, ...]:
    """Mean/std values as a non-empty tuple of finite floats."""
    try:
        out = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise SmoothInvError(
            f"{param(name)} must be numbers, one per channel, got {_short(values)}"
        ) from None
    if not out or not all(v == v and abs(v) != float("inf") for v in out):
        raise SmoothInvError(f"{param(name)} must be finite numbers, one per channel, got {_short(values)}")
    if len(out) > MAX_STAT_VALUES:
        raise SmoothInvError(
            f"{param(name)} has {len(out)} values; give one per channel (at most {MAX_STAT_VALUES})"
        )
    return out
