"""The zero-shot classifier's file: one safetensors file that ``load_model`` reads with no flags.

Tensors: the image tower under CLIP's own names (``visual.*``), ``class_embeddings`` [K, D] and
``logit_scale`` (a scalar, log of the logit multiplier). Metadata: ``load_model``'s usual keys
(``arch`` = "clip-zeroshot", ``num_classes``, ``input_size``, ``channels``, and CLIP's ``mean``
/``std``, so the loaded model takes [0, 1] images), plus ``clip_activation`` ("quick_gelu" or
"gelu": the ViT's MLP activation, which the weights cannot show) and, when given,
``class_names`` (a JSON list of K strings).

The registered arch's builder takes its image tower's layout from the file itself
(``ModelInfo.file_options``): `zeroshot_file_options` reads it from the weights, checks every
key and shape against the tower it describes, and refuses non-finite weights, each in one line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open

from smoothinv.errors import SmoothInvError, param
from smoothinv.models import register_model
from smoothinv.models.clip.config import VIT_B_32, VisionConfig, VitConfig
from smoothinv.models.clip.inference import (
    check_layout,
    check_weights,
    describe,
    expected_shapes,
    infer_channels,
    infer_vision_config,
)
from smoothinv.models.clip.model import INITIAL_LOGIT_SCALE, image_tower
from smoothinv.models.clip.zeroshot import ZeroShotClassifier, check_logit_scale
from smoothinv.models.formats import SAFETENSORS, detect_format
from smoothinv.models.loading import Normalize, save_model
from smoothinv.models.messages import one_line

ZEROSHOT_ARCH = "clip-zeroshot"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
"""The per-channel statistics CLIP's image preprocessing normalises with (OpenAI's and open_clip's)."""
ACTIVATION_KEY = "clip_activation"
CLASS_NAMES_KEY = "class_names"
_ACTIVATIONS = {"quick_gelu": True, "gelu": False}


def zeroshot_file_options(state: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> dict[str, Any]:
    """``{"vision": VisionConfig}`` for the builder, read from a zero-shot file's weights and its
    ``clip_activation`` metadata (QuickGELU when absent, as in OpenAI's models). Refuses a
    state_dict whose keys or shapes do not make a CLIP image tower plus [K, D] class
    embeddings and a scalar logit scale, and non-finite weights."""
    what = "the zero-shot classifier file"
    quick_gelu = _activation(metadata.get(ACTIVATION_KEY))
    vision = infer_vision_config(state, quick_gelu=quick_gelu, what=what)
    embeddings = state.get("class_embeddings")
    if not isinstance(embeddings, torch.Tensor) or embeddings.dim() != 2 or embeddings.shape[0] < 1:
        shape = list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else None
        raise SmoothInvError(f"{what} needs class_embeddings [classes, {vision.embed_dim}], got {shape}")
    with torch.device("meta"):
        classifier = _build(vision, int(embeddings.shape[0]), infer_channels(state, what))
    check_layout(state, expected_shapes(classifier), what, f"zero-shot classifier on a {describe(vision)}")
    check_weights(state, what)
    check_logit_scale(state["logit_scale"], f"{what}'s logit_scale")
    return {"vision": vision}


@register_model(
    ZEROSHOT_ARCH,
    input_size=(224, 224),
    channels=3,
    num_classes=1000,
    head="class_embeddings",
    first_conv="visual.conv1.weight",
    mean=CLIP_MEAN,
    std=CLIP_STD,
    description="CLIP zero-shot classifier: CLIP image tower + class text embeddings (layout read from the file)",
    file_options=zeroshot_file_options,
)
def clip_zeroshot(*, num_classes: int, channels: int, vision: VisionConfig = VIT_B_32.vision) -> ZeroShotClassifier:
    """A freshly initialised zero-shot classifier: random unit class embeddings, CLIP's initial
    logit scale, on the image tower `vision` describes (ViT-B/32 by default)."""
    return _build(vision, num_classes, channels)


def _build(vision: VisionConfig, num_classes: int, channels: int) -> ZeroShotClassifier:
    embeddings = F.normalize(torch.randn(num_classes, vision.embed_dim), dim=-1)
    return ZeroShotClassifier(image_tower(vision, channels), embeddings, INITIAL_LOGIT_SCALE)


def save_zeroshot_classifier(path: str | os.PathLike[str], classifier: ZeroShotClassifier, *,
                             class_names: Sequence[str] | None = None) -> None:
    """Write `classifier` as one safetensors file that ``load_model`` reads with no flags
    (format in the module docstring), atomically. A ``Normalize``-wrapped classifier is
    unwrapped; the file always records CLIP's mean and std."""
    if isinstance(classifier, Normalize):
        classifier = classifier.model  # type: ignore[assignment]
    if not isinstance(classifier, ZeroShotClassifier):
        raise SmoothInvError(f"expected a ZeroShotClassifier, got {type(classifier).__name__}")
    vision = getattr(classifier.visual, "config", None)
    if not isinstance(vision, VisionConfig):
        raise SmoothInvError("the classifier's image tower is not a CLIP image tower built by smoothinv")
    # A ResNet tower has no GELU; its files record OpenAI's QuickGELU, the default.
    extra = {ACTIVATION_KEY: "gelu" if isinstance(vision, VitConfig) and not vision.quick_gelu else "quick_gelu"}
    if class_names is not None:
        names = list(class_names)
        if len(names) != classifier.num_classes or not all(isinstance(n, str) for n in names):
            raise SmoothInvError(
                f"{param('class_names')} must be {classifier.num_classes} strings, one per class embedding"
            )
        extra[CLASS_NAMES_KEY] = json.dumps(names, ensure_ascii=False)
    save_model(
        path, classifier, arch=ZEROSHOT_ARCH, num_classes=classifier.num_classes,
        input_size=(vision.image_size, vision.image_size), channels=classifier.visual.channels,
        mean=CLIP_MEAN, std=CLIP_STD, extra_metadata=extra,
    )


def zeroshot_class_names(path: str | os.PathLike[str]) -> list[str] | None:
    """The class names a zero-shot classifier file records (None when it records none)."""
    path = Path(path)
    if detect_format(path) != SAFETENSORS:
        return None
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            text = (f.metadata() or {}).get(CLASS_NAMES_KEY)
    except Exception as exc:  # safetensors raises its own error types for bad files
        raise SmoothInvError(f"{path} is a corrupt safetensors file ({one_line(exc)})") from None
    if text is None:
        return None
    try:
        names = json.loads(text)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SmoothInvError(f"{path.name} has invalid {CLASS_NAMES_KEY} metadata: expected a JSON list of strings")
    return names


def _activation(value: str | None) -> bool:
    if value is None:
        return True
    if value not in _ACTIVATIONS:
        raise SmoothInvError(
            f"the zero-shot classifier file has {ACTIVATION_KEY}={value[:40]!r}; "
            f"expected one of {', '.join(_ACTIVATIONS)}"
        )
    return _ACTIVATIONS[value]

