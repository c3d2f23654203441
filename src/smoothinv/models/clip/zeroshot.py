"""Zero-shot classification with CLIP: an image tower plus one text embedding per class.

CLIP's protocol (Radford et al. 2021, section 3.1.4): each class name is put into every prompt
template ("a photo of a {}."), each prompt is embedded by the text tower and scaled to unit
length, the class's embeddings are averaged and the mean scaled to unit length again. An
image's logits are exp(logit_scale) times the cosine between its image embedding and each
class embedding. The text tower is then no longer needed: the classifier keeps only the image
tower, the [K, D] class embeddings and the scale, so it is an ordinary image classifier that
every command taking a model can run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from smoothinv.errors import SmoothInvError, param
from smoothinv.models.clip.model import CLIPModel
from smoothinv.models.clip.text import TextTower
from smoothinv.models.clip.tokenizer import ClipTokenizer, clip_tokenizer

DEFAULT_TEMPLATES = ("a photo of a {}.",)
"""The single prompt CLIP's paper starts from; pass an ensemble of templates for better accuracy."""
PLACEHOLDER = "{}"


class ZeroShotClassifier(nn.Module):
    """Normalised images [B, C, S, S] -> logits [B, K].

    logits = exp(logit_scale) · cos(visual(x), class_embeddings[k]). ``visual`` is a CLIP image
    tower (its output is [B, D]); ``class_embeddings`` [K, D] and the scalar ``logit_scale``
    (log of the multiplier, as CLIP stores it) are parameters, so the state_dict holds
    ``visual.*`` under CLIP's own names plus these two. Embeddings are used by direction only.
    Images are normalised with CLIP's mean and std by the caller (``load_model``'s Normalize).
    """

    scan_sigmas: ClassVar[tuple[float, ...]] = (1.0,)
    """The smoothing noise a backdoor scan uses on it by default (smoothinv.detection reads it).
    At the classifiers' σ = 0.25 every class of the CLIP zoo's models had a universal
    perturbation that transferred as well as the backdoor target's, and no backdoor was flagged;
    at σ = 1 both targets stood out and the clean CLIP stayed clean (docs/clip.md, Scan verdicts)."""

    def __init__(self, visual: nn.Module, class_embeddings: torch.Tensor, logit_scale: float | torch.Tensor) -> None:
        super().__init__()
        if class_embeddings.dim() != 2 or class_embeddings.shape[0] < 1:
            raise SmoothInvError(f"class embeddings must be [classes, dim], got {list(class_embeddings.shape)}")
        embed_dim = getattr(visual, "embed_dim", class_embeddings.shape[1])
        if class_embeddings.shape[1] != embed_dim:
            raise SmoothInvError(
                f"class embeddings have {class_embeddings.shape[1]} dimensions but the image tower embeds "
                f"into {embed_dim}"
            )
        self.visual = visual
        self.class_embeddings = nn.Parameter(class_embeddings.detach().to(torch.float32).clone())
        self.logit_scale = nn.Parameter(torch.as_tensor(logit_scale, dtype=torch.float32).detach().reshape(()).clone())

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = F.normalize(self.visual(x), dim=-1)  # [B, D]
        classes = F.normalize(self.class_embeddings, dim=-1).to(image.dtype)  # [K, D]
        return self.logit_scale.exp().to(image.dtype) * image @ classes.T


def text_class_embeddings(model: TextTower, class_names: Sequence[str],
                          templates: Sequence[str] = DEFAULT_TEMPLATES, *,
                          tokenizer: ClipTokenizer | None = None, batch_size: int = 256) -> torch.Tensor:
    """Unit-length class embeddings [K, D] from CLIP's text tower by CLIP's protocol: every
    template with ``{}`` replaced by the class name, each prompt embedded and normalised, the
    class's mean normalised again. Runs without gradients on the model's device."""
    names = _check_texts(class_names, "class_names")
    prompts = _check_texts(templates, "templates")
    if any(PLACEHOLDER not in t for t in prompts):
        raise SmoothInvError(
            f"every one of {param('templates')} needs a {PLACEHOLDER} where the class name goes, "
            "e.g. 'a photo of a {}.'"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SmoothInvError(f"{param('batch_size')} must be a positive integer, got {batch_size!r}")
    tokenizer = tokenizer or clip_tokenizer()
    texts = [t.replace(PLACEHOLDER, name) for name in names for t in prompts]  # class-major: [K * T]
    device = next(model.parameters()).device
    chunks = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(texts[start:start + batch_size], context_length=model.context_length)
            chunks.append(F.normalize(model.encode_text(tokens.to(device)).float(), dim=-1))
    per_prompt = torch.cat(chunks).reshape(len(names), len(prompts), -1)  # [K, T, D]
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def zeroshot_classifier(model: CLIPModel, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES,
                        *, tokenizer: ClipTokenizer | None = None) -> ZeroShotClassifier:
    """A zero-shot classifier over `class_names` from a whole CLIP model. It shares the model's
    image tower (no copy) and takes its logit scale."""
    embeddings = text_class_embeddings(model, class_names, templates, tokenizer=tokenizer)
    return ZeroShotClassifier(model.visual, embeddings, model.logit_scale.detach())


def classifier_from_embeddings(visual: nn.Module, class_embeddings: torch.Tensor,
                               logit_scale: float | torch.Tensor) -> ZeroShotClassifier:
    """A zero-shot classifier from precomputed class embeddings [K, D] (e.g. computed elsewhere,
    or averaged over a prompt ensemble). ``logit_scale`` is CLIP's log multiplier (log 100 for
    trained models). Rows must be finite and non-zero; they are stored as unit vectors."""
    embeddings = torch.as_tensor(class_embeddings).detach().to(torch.float32)
    scale = torch.as_tensor(logit_scale, dtype=torch.float32).detach()
    if embeddings.dim() != 2 or not bool(torch.isfinite(embeddings).all()):
        raise SmoothInvError(
            f"{param('class_embeddings')} must be a finite [classes, dim] tensor, got {list(embeddings.shape)}"
        )
    if bool((embeddings.norm(dim=-1) == 0).any()):
        raise SmoothInvError("a class embedding is all zeros; it has no direction to compare images with")
    check_logit_scale(scale)
    return ZeroShotClassifier(visual, F.normalize(embeddings, dim=-1), scale)


def check_logit_scale(scale: torch.Tensor, what: str = param("logit_scale")) -> None:
    """A single finite value whose exponential is a finite float32."""
    if scale.numel() != 1 or not scale.is_floating_point() or not bool(torch.isfinite(scale.float().exp()).all()):
        raise SmoothInvError(f"{what} must be one finite number below 88 (the log of the logit multiplier)")


def _check_texts(texts: Sequence[str], name: str) -> list[str]:
    if isinstance(texts, str):
        raise SmoothInvError(f"{param(name)} must be a list of strings, not one string")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise SmoothInvError(f"{param(name)} must be a non-empty list of non-empty strings")
    return texts
