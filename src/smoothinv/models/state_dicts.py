"""Turn checkpoint contents into a state_dict and load it into a registered architecture.

Checkpoints often nest the weights (``{"state_dict": ...}``) or carry DataParallel's
``module.`` prefix; both are undone here. When the weights do not fit the chosen arch,
the error says what differs and which registered arch they look like instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from smoothinv.errors import SmoothInvError, param
from smoothinv.models import get_model_info, list_models, model_names
from smoothinv.models.messages import one_line

# Keys under which training scripts commonly nest the real state_dict.
CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "net")


def unwrap_containers(obj: object) -> object:
    """Descend into ``{"state_dict": ...}``-style checkpoint dicts (a few levels)."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or _all_tensors(obj):
            return obj
        for key in CONTAINER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, (Mapping, nn.Module)):
                obj = inner
                break
        else:
            return obj
    return obj


def _all_tensors(obj: Mapping) -> bool:
    return len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} dict with any DataParallel ``module.`` prefix removed."""
    if not isinstance(obj, Mapping):
        raise SmoothInvError(
            f"{path.name} holds a {type(obj).__name__}, not a state_dict or model"
        )
    if not _all_tensors(obj):
        keys = ", ".join(str(k) for k in list(obj)[:6])
        raise SmoothInvError(
            f"{path.name} holds a dict that is not a state_dict (keys: {keys}); save "
            "model.state_dict() or nest it under 'state_dict'"
        )
    state = {str(k): v for k, v in obj.items()}
    prefix = "module."
    if all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def infer_num_classes(state: Mapping[str, torch.Tensor], head: str, default: int) -> int:
    """Rows of the head weight [num_classes, features], else the arch's default."""
    weight = state.get(head)
    if isinstance(weight, torch.Tensor) and weight.dim() >= 1:
        return int(weight.shape[0])
    return default


def infer_channels(state: Mapping[str, torch.Tensor], first_conv: str | None, default: int) -> int:
    """Input channels C of the first conv weight [out, C, kh, kw], else the arch's default."""
    weight = state.get(first_conv) if first_conv else None
    if isinstance(weight, torch.Tensor) and weight.dim() == 4:
        return int(weight.shape[1])
    return default


def load_state(module: nn.Module, state: dict[str, torch.Tensor], arch: str, path: Path) -> None:
    """``load_state_dict(strict=True)``, with mismatches explained in one line."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    # Old checkpoints lack BatchNorm's num_batches_tracked; torch fills it in.
    missing = [
        k for k in expected if k not in state and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {_few(unexpected)}")
        raise SmoothInvError(
            f"{path.name} does not match {param('arch')}={arch}: {'; '.join(parts)}; "
            f"{_arch_advice(state, arch)}"
        )
    info = get_model_info(arch)
    for key, shape in expected.items():
        if key in state and tuple(state[key].shape) != shape:
            got = list(state[key].shape)
            if key == info.head:
                raise SmoothInvError(
                    f"{path.name} has {got[0]} classes ({key} is {got}) but {shape[0]} were "
                    f"expected ({param('num_classes')} or the file's metadata); pass {param('num_classes')}={got[0]}"
                )
            raise SmoothInvError(
                f"{path.name} does not match {param('arch')}={arch}: {key} is {got} in the file but "
                f"{list(shape)} in {arch}; {_arch_advice(state, arch)}"
            )
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise SmoothInvError(
            f"{path.name} does not fit {param('arch')}={arch}: {one_line(exc)}"
        ) from None


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _arch_advice(state: Mapping[str, torch.Tensor], arch: str) -> str:
    matches = [name for name in _matching_archs(state) if name != arch]
    if matches:
        return f"it looks like {param('arch')}={matches[0]}"
    return f"check {param('arch')} (known: {', '.join(model_names())})"


def arch_hint(state: Mapping[str, torch.Tensor]) -> str:
    matches = _matching_archs(state)
    return f" (it looks like {matches[0]})" if matches else ""


def _matching_archs(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Registered archs whose keys and shapes (head aside) equal the state_dict's."""
    given = {k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")}
    matches = []
    for info in list_models():
        expected = _meta_shapes(info.name)
        if set(expected) != set(given):
            continue
        head_prefix = info.head.rsplit(".", 1)[0] + "."
        if all(k.startswith(head_prefix) or expected[k] == given[k] for k in expected):
            matches.append(info.name)
    return matches


_META_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {}


def _meta_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of arch ``name``, built on the meta device (no memory, no init cost)."""
    if name not in _META_SHAPES:
        info = get_model_info(name)
        with torch.device("meta"):
            module = info.build()
        _META_SHAPES[name] = {
            k: tuple(v.shape)
            for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")
        }
    return _META_SHAPES[name]
