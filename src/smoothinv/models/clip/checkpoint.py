"""Reading a user's whole-CLIP checkpoint (both towers) into a `CLIPModel`, without running its code.

Accepted: safetensors; a ``torch.save`` state dict, read with ``weights_only=True`` (open_clip's
training checkpoints ``{"epoch", "name", "state_dict": {"module.visual...": ...}, "optimizer"}``
included: the ``state_dict`` entry is taken and DataParallel's ``module.`` prefix dropped).
OpenAI's downloads (``ViT-B-32.pt`` ...) are TorchScript archives, whose loading runs code from
the file; they are refused unless the caller passes ``trust_code=True``, the same opt-in
``load_model`` has, and the message says how to convert one to a state dict once instead.

OpenAI's state dicts carry three bookkeeping scalars (``input_resolution``, ``context_length``,
``vocab_size``), dropped here, and store most weights in float16; the model is built in float32.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from smoothinv.errors import SmoothInvError, param
from smoothinv.models.clip.config import ClipConfig
from smoothinv.models.clip.inference import (
    check_layout,
    check_weights,
    describe,
    expected_shapes,
    infer_channels,
    infer_clip_config,
)
from smoothinv.models.clip.model import CLIPModel
from smoothinv.models.formats import (
    ONNX,
    SAFETENSORS,
    TORCHSCRIPT,
    detect_format,
    read_safetensors,
    read_torch_save,
    read_torchscript,
)
from smoothinv.models.state_dicts import as_state_dict, unwrap_containers

OPENAI_BOOKKEEPING = ("input_resolution", "context_length", "vocab_size")


def read_clip_state(path: str | os.PathLike[str], *, trust_code: bool = False) -> dict[str, torch.Tensor]:
    """The state_dict in a CLIP checkpoint file, unwrapped and with OpenAI's bookkeeping dropped."""
    path = Path(path)
    kind = detect_format(path)
    if kind == SAFETENSORS:
        state, _ = read_safetensors(path)
    elif kind == TORCHSCRIPT:
        if not trust_code:
            raise SmoothInvError(
                f"{path.name} is a TorchScript archive (OpenAI's CLIP downloads are), which runs code from the "
                "file when loaded; convert it once, where you trust it, to a state dict "
                "(torch.jit.load(path).state_dict() saved with safetensors), or pass "
                f"{param('trust_code')}=True only if you trust it"
            )
        state = dict(read_torchscript(path, trust_code=True).state_dict())
    elif kind == ONNX:
        raise SmoothInvError(f"{path.name} is an ONNX model; a CLIP checkpoint must be safetensors or a state dict")
    else:
        obj = unwrap_containers(read_torch_save(path, kind, trust_code))
        state = as_state_dict(obj.state_dict() if isinstance(obj, nn.Module) else obj, path)
    return clip_state(state)


def clip_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` without OpenAI's bookkeeping scalars and with a one-element ``logit_scale`` made a
    scalar (open_clip's ``nonscalar_logit_scale``)."""
    state = {k: v for k, v in state.items() if not (k in OPENAI_BOOKKEEPING and v.numel() == 1)}
    scale = state.get("logit_scale")
    if isinstance(scale, torch.Tensor) and scale.dim() == 1 and scale.numel() == 1:
        state["logit_scale"] = scale.reshape(())
    return state


def clip_from_state(state: dict[str, torch.Tensor], *, quick_gelu: bool = True,
                    what: str = "the checkpoint") -> CLIPModel:
    """A float32 eval-mode `CLIPModel` holding `state`, its shape read from `state` itself.

    ``quick_gelu``: OpenAI's models and open_clip's ``*-quickgelu`` ones use QuickGELU (True);
    open_clip's other configs GELU (False). The weights cannot tell.
    """
    state = clip_state(state)
    config = infer_clip_config(state, quick_gelu=quick_gelu, what=what)
    channels = infer_channels(state, what)
    check_layout(state, clip_shapes(config, channels), what, describe(config))
    check_weights(state, what)
    with torch.device("meta"):
        model = CLIPModel(config, channels)
    weights = {k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in state.items()}
    for key in model.state_dict():
        if key.endswith("num_batches_tracked") and key not in weights:
            weights[key] = torch.tensor(0)
    model.load_state_dict(weights, strict=True, assign=True)
    return model.eval()


def clip_shapes(config: ClipConfig, channels: int = 3) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the CLIP model `config` describes (built on the meta device)."""
    with torch.device("meta"):
        return expected_shapes(CLIPModel(config, channels))


def load_clip(path: str | os.PathLike[str], *, quick_gelu: bool = True, trust_code: bool = False,
              device: str | torch.device = "cpu") -> CLIPModel:
    """A CLIP checkpoint file as an eval-mode float32 `CLIPModel` on `device` (see `clip_from_state`)."""
    path = Path(path)
    model = clip_from_state(read_clip_state(path, trust_code=trust_code), quick_gelu=quick_gelu, what=path.name)
    return model.to(device)
