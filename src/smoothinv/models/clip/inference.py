"""Read a CLIP model's whole configuration from its state_dict, and check the state_dict fits it.

Model files are hostile: every shape read here is checked (dimensions, square kernels, a square
patch grid, blocks numbered 0..n-1) before it is used, the config classes bound every number,
and `check_layout` compares every key and shape with the model the config describes, built on
the meta device (no memory). Each problem is one SmoothInvError line naming the key.

What the state_dict tells, as OpenAI's ``build_model`` reads it:

* image tower: a ViT when ``visual.proj`` exists (width and patch size from ``visual.conv1``,
  resolution from the positional embedding's grid² + 1 rows, layers from the numbered blocks),
  a ModifiedResNet when ``visual.attnpool.*`` does (width from ``layer1.0.conv1``, blocks per
  stage from the numbered blocks, resolution 32 × the attention pool's grid);
* text tower: vocabulary and width from ``token_embedding``, context length from
  ``positional_embedding``, layers from the numbered blocks;
* embedding size: the columns of ``visual.proj`` / rows of ``attnpool.c_proj`` and the columns
  of ``text_projection``; heads are width // 64 everywhere.

The activation (QuickGELU or GELU) leaves no trace in the weights: callers say which.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models.clip.config import ClipConfig, ResNetConfig, TextConfig, VisionConfig, VitConfig

VISUAL = "visual."
_BATCHNORM_COUNTER = "num_batches_tracked"


def infer_vision_config(state: Mapping[str, torch.Tensor], *, quick_gelu: bool = True,
                        what: str = "the checkpoint") -> VisionConfig:
    """The image tower under ``visual.``: a ViT (``visual.proj``) or a ModifiedResNet
    (``visual.attnpool.*``)."""
    if VISUAL + "proj" in state:
        conv1 = _tensor(state, VISUAL + "conv1.weight", 4, what)
        if conv1.shape[2] != conv1.shape[3]:
            raise SmoothInvError(f"{what}: visual.conv1.weight has a non-square {list(conv1.shape[2:])} patch")
        grid = _grid(state, VISUAL + "positional_embedding", what)
        return VitConfig(
            width=int(conv1.shape[0]),
            layers=count_blocks(state, VISUAL + "transformer.resblocks.", what),
            patch_size=int(conv1.shape[2]),
            image_size=grid * int(conv1.shape[2]),
            embed_dim=int(_tensor(state, VISUAL + "proj", 2, what).shape[1]),
            quick_gelu=quick_gelu,
        )
    if VISUAL + "attnpool.positional_embedding" in state:
        layers = tuple(count_blocks(state, f"{VISUAL}layer{i}.", what) for i in range(1, 5))
        return ResNetConfig(
            width=int(_tensor(state, VISUAL + "layer1.0.conv1.weight", 4, what).shape[0]),
            layers=layers,  # type: ignore[arg-type]
            image_size=32 * _grid(state, VISUAL + "attnpool.positional_embedding", what),
            embed_dim=int(_tensor(state, VISUAL + "attnpool.c_proj.weight", 2, what).shape[0]),
        )
    raise SmoothInvError(
        f"{what} has no CLIP image tower: neither visual.proj (ViT) nor visual.attnpool.* (ModifiedResNet)"
        f"{_sample_keys(state)}"
    )


def infer_text_config(state: Mapping[str, torch.Tensor], *, quick_gelu: bool = True,
                      what: str = "the checkpoint") -> TextConfig:
    """The text tower at the top level (``token_embedding``, ``transformer.*``, ...)."""
    tokens = _tensor(state, "token_embedding.weight", 2, what)
    return TextConfig(
        width=int(tokens.shape[1]),
        layers=count_blocks(state, "transformer.resblocks.", what),
        context_length=int(_tensor(state, "positional_embedding", 2, what).shape[0]),
        vocab_size=int(tokens.shape[0]),
        embed_dim=int(_tensor(state, "text_projection", 2, what).shape[1]),
        quick_gelu=quick_gelu,
    )


def infer_clip_config(state: Mapping[str, torch.Tensor], *, quick_gelu: bool = True,
                      what: str = "the checkpoint") -> ClipConfig:
    """Both towers of a whole CLIP state_dict."""
    return ClipConfig(
        vision=infer_vision_config(state, quick_gelu=quick_gelu, what=what),
        text=infer_text_config(state, quick_gelu=quick_gelu, what=what),
    )


def infer_channels(state: Mapping[str, torch.Tensor], what: str = "the checkpoint") -> int:
    """Input channels of ``visual.conv1`` (3 for every published CLIP; 1 for gray images)."""
    channels = int(_tensor(state, VISUAL + "conv1.weight", 4, what).shape[1])
    if channels not in (1, 3):
        raise SmoothInvError(f"{what}: visual.conv1.weight takes {channels} input channels; expected 3 (RGB) or 1")
    return channels


def count_blocks(state: Mapping[str, torch.Tensor], prefix: str, what: str) -> int:
    """How many blocks ``prefix``N.* there are; they must be numbered 0..n-1."""
    numbers: set[int] = set()
    for key in state:
        if key.startswith(prefix):
            number = key[len(prefix):].split(".", 1)[0]
            if not (number.isascii() and number.isdigit()) or len(number) > 6:
                raise SmoothInvError(f"{what}: key {_short(key)} has no block number after {prefix}")
            numbers.add(int(number))
    if not numbers:
        raise SmoothInvError(f"{what} has no {prefix}0.* weights; it is not a CLIP checkpoint of a known layout")
    if numbers != set(range(len(numbers))):
        missing = min(set(range(max(numbers) + 1)) - numbers)
        raise SmoothInvError(f"{what} has blocks {prefix}N up to {max(numbers)} but no {prefix}{missing}")
    return len(numbers)


def expected_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """Key -> shape of `module`'s state_dict, BatchNorm's step counters left out (old checkpoints lack them)."""
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith(_BATCHNORM_COUNTER)}


def check_layout(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str,
                 layout: str) -> None:
    """Every key of `expected` present with its shape and no other key (BatchNorm's counters
    aside); `layout` names the model in the message, e.g. "ViT image tower (width 768, ...)"."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith(_BATCHNORM_COUNTER)]
    if missing or unexpected:
        parts = [f"missing {_few(missing)}"] if missing else []
        parts += [f"unexpected {_few(unexpected)}"] if unexpected else []
        raise SmoothInvError(f"{what} does not fit a CLIP {layout}: {'; '.join(parts)}")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise SmoothInvError(
                f"{what} does not fit a CLIP {layout}: {key} is {list(state[key].shape)}, expected {list(shape)}"
            )


def check_weights(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Every weight a finite float (BatchNorm's step counters are integers)."""
    for key, tensor in state.items():
        if key.endswith(_BATCHNORM_COUNTER):
            continue
        if not tensor.is_floating_point():
            raise SmoothInvError(f"{what}: {key} holds {tensor.dtype} values; CLIP weights are floats")
        if not bool(torch.isfinite(tensor).all()):
            raise SmoothInvError(f"{what}: {key} holds NaN or infinite values; the file is corrupt")


def describe(config: VisionConfig | TextConfig | ClipConfig) -> str:
    """A short name for messages: "ViT image tower (width 768, 12 layers, 32-pixel patches, 224x224)"."""
    if isinstance(config, ClipConfig):
        return f"model with a {describe(config.vision)} and a {describe(config.text)}"
    if isinstance(config, VitConfig):
        return (f"ViT image tower (width {config.width}, {config.layers} layers, {config.patch_size}-pixel "
                f"patches, {config.image_size}x{config.image_size})")
    if isinstance(config, ResNetConfig):
        return (f"ModifiedResNet image tower (width {config.width}, blocks {list(config.layers)}, "
                f"{config.image_size}x{config.image_size})")
    return f"text tower (width {config.width}, {config.layers} layers, context {config.context_length})"


def _tensor(state: Mapping[str, torch.Tensor], key: str, dims: int, what: str) -> torch.Tensor:
    tensor = state.get(key)
    if not isinstance(tensor, torch.Tensor):
        raise SmoothInvError(f"{what} has no {key}; it is not a CLIP checkpoint of a known layout")
    if tensor.dim() != dims or 0 in tensor.shape:
        raise SmoothInvError(f"{what}: {key} has shape {list(tensor.shape)}; expected {dims} non-empty dimensions")
    return tensor


def _grid(state: Mapping[str, torch.Tensor], key: str, what: str) -> int:
    """g from a positional embedding of g² + 1 rows (a square grid plus one pooled/class token)."""
    rows = int(_tensor(state, key, 2, what).shape[0])
    grid = math.isqrt(max(rows - 1, 0))
    if grid < 1 or grid * grid + 1 != rows:
        raise SmoothInvError(f"{what}: {key} has {rows} rows, which is not a square grid plus one token")
    return grid


def _few(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(_short(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _short(text: str, limit: int = 80) -> str:
    """`text` on one line (repr when it holds control characters), cut to `limit` characters."""
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sample_keys(state: Mapping[str, torch.Tensor]) -> str:
    keys = list(state)[:4]
    return f" (its keys begin {', '.join(_short(k, 40) for k in keys)})" if keys else ""
