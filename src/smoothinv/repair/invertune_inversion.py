"""InverTune's first two stages on a CLIP zero-shot classifier (Sun et al., NDSS 2026).

- `identify_target`: with no knowledge of the attack, untargeted universal adversarial
  patches (the code's 3%-area square, at five places) are learned over a few
  clean images; a backdoored CLIP's perturbation drifts toward its backdoor target, so the class
  whose share of the predictions grows most is the suspect.
- `invert_trigger`: a mask m and pattern p ([C,H,W] each, x' = m·p + (1−m)·x) are learned so that
  x' is classified as the target, its image embedding moves to the target images' embeddings, it
  stays structurally like x (SSIM), and the mask stays small:
  5·CE(cos(f(x'), T)/0.07, t) + 0.5·‖f(x') − f(x_t)‖ + (1 − SSIM(x', x)) + 0.01·‖m‖₁ (Adam, lr 0.01),
  the weights, temperature and optimiser of the authors' code.

Where this departs from the paper and code is in docs/clip.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SmoothInvError
from ..models.clip import ZeroShotClassifier
from ..triggers import MaskedTrigger

TEMPERATURE = 0.07
"""The code's fixed temperature for the inversion's cross-entropy (not the model's logit scale)."""


class ClipView:
    """A zero-shot classifier seen as InverTune sees CLIP: `features(x)` gives the unit image
    embeddings [B, D] of [0,1] images [B,C,H,W] (through whatever wrapper normalises them), and
    `similarities(x)` their cosines with the class text embeddings [B, K]."""

    def __init__(self, model: nn.Module) -> None:
        found = [m for m in model.modules() if isinstance(m, ZeroShotClassifier)]
        if not found:
            raise SmoothInvError(f"InverTune repairs CLIP zero-shot classifiers; this model "
                                 f"({type(model).__name__}) is not one")
        self.model, self.zeroshot = model, found[0]
        self._captured: Tensor | None = None
        self._handle = self.zeroshot.visual.register_forward_hook(self._capture)

    def close(self) -> None:
        """Remove the hook from the model (the repaired copy must not keep it)."""
        self._handle.remove()

    def _capture(self, _module: nn.Module, _inputs: Any, output: Tensor) -> None:
        self._captured = output

    def features(self, images: Tensor) -> Tensor:
        self.model(images)
        assert self._captured is not None
        return F.normalize(self._captured.float(), dim=-1)

    def similarities(self, images: Tensor) -> Tensor:
        classes = F.normalize(self.zeroshot.class_embeddings.detach().float(), dim=-1)
        return self.features(images) @ classes.T


@dataclass(frozen=True)
class TargetIdentification:
    """Stage 1. Universal adversarial perturbations, each learned on `images` clean images by
    `steps` signed-gradient steps to push them off their clean predictions: an opaque square
    patch covering `patch_area` of the image (the code's 3%) at each corner, `patch_margin` of the
    side in from the edges (the code's 14/224), and at the centre (step 0.05 in [0,1] pixel
    values); with `eps` > 0 also an image-wide l∞ perturbation of that size (step eps/10; off by
    default: on the CLIP zoo it found the model's adversarial sink, not the target). Prediction
    shares are compared on up to `measure_images` clean images; the class whose share rises most
    on average over the perturbations is the suspect."""

    eps: float = 0.0
    steps: int = 100
    images: int = 64
    measure_images: int = 1000
    patch_area: float = 0.03
    patch_margin: float = 14 / 224


def _patch_masks(shape: tuple[int, ...], settings: TargetIdentification) -> dict[str, Tensor]:
    """{position: mask [1,H,W]} for the square patch at each corner and the centre."""
    _, h, w = shape
    side = max(2, round((settings.patch_area * h * w) ** 0.5))
    margin = round(settings.patch_margin * min(h, w))
    far_h, far_w = max(0, h - margin - side), max(0, w - margin - side)
    spots = {"top-left": (margin, margin), "top-right": (margin, far_w), "bottom-left": (far_h, margin),
             "bottom-right": (far_h, far_w), "centre": ((h - side) // 2, (w - side) // 2)}
    masks = {}
    for name, (top, left) in spots.items():
        mask = torch.zeros(1, h, w)
        mask[:, top:top + side, left:left + side] = 1
        masks[name] = mask
    return masks


def _universal(view: ClipView, images: Tensor, labels: Tensor, stamp, start: Tensor, step: float,
               project, steps: int) -> Tensor:
    """Signed-gradient ascent of the cross-entropy against `labels` over one shared tensor."""
    value = start.clone().requires_grad_(True)
    for _ in range(steps):
        loss = F.cross_entropy(view.similarities(stamp(images, value)) / TEMPERATURE, labels)
        (grad,) = torch.autograd.grad(loss, value)
        with torch.no_grad():
            value += step * grad.sign()
            value.copy_(project(value))
    return value.detach()


def identify_target(view: ClipView, images: Tensor, settings: TargetIdentification, seed: int,
                    candidates: Sequence[int] | None = None) -> dict[str, Any]:
    """The suspected target class of clean images [N,C,H,W], with each class's prediction share
    before and under each universal perturbation (the largest mean rise names the target, among
    `candidates` when given: a scan's flagged classes)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator)
    fit, measure = images[order[:settings.images]], images[order[:settings.measure_images]]
    shape = tuple(images.shape[1:])
    with torch.no_grad():
        clean_pred = view.similarities(fit).argmax(1)
        before = _shares(view.similarities(measure).argmax(1), view.zeroshot.num_classes)
    stamps = {}
    eps = settings.eps
    if eps > 0:
        delta = _universal(view, fit, clean_pred, lambda x, d: (x + d).clamp(0, 1), torch.zeros(1, *shape),
                           eps / 10, lambda d: d.clamp(-eps, eps), settings.steps)
        stamps["image-wide"] = lambda x, d=delta: (x + d).clamp(0, 1)
    for name, mask in _patch_masks(shape, settings).items():
        paste = lambda x, p, m=mask: (1 - m) * x + m * p  # noqa: E731
        start = torch.rand(shape, generator=generator)
        pattern = _universal(view, fit, clean_pred, paste, start, 0.05, lambda p: p.clamp(0, 1), settings.steps)
        stamps[name] = lambda x, p=pattern, f=paste: f(x, p)
    rises = {}
    with torch.no_grad():
        for name, stamp in stamps.items():
            after = _shares(view.similarities(stamp(measure)).argmax(1), view.zeroshot.num_classes)
            rises[name] = after - before
    mean_rise = torch.stack(list(rises.values())).mean(0)  # [K]
    if candidates and not all(0 <= c < len(mean_rise) for c in candidates):
        raise SmoothInvError(f"the target candidates {list(candidates)} are not all classes of this "
                             f"{len(mean_rise)}-class model")
    allowed = torch.full_like(mean_rise, -torch.inf)
    allowed[list(candidates) if candidates else slice(None)] = 0.0
    return {"target": int((mean_rise + allowed).argmax()), "candidates": list(candidates) if candidates else None,
            "mean_rise": [round(float(v), 4) for v in mean_rise],
            "share_before": [round(float(v), 4) for v in before],
            "share_rise": {n: [round(float(v), 4) for v in r] for n, r in rises.items()},
            "fit_images": len(fit), "measure_images": len(measure)}


def _shares(predictions: Tensor, classes: int) -> Tensor:
    return torch.bincount(predictions, minlength=classes).float() / max(len(predictions), 1)


@dataclass(frozen=True)
class TriggerInversion:
    """Stage 2's loss weights and schedule (the authors' config: 10 epochs × 20 batches of 64,
    one Adam step each at lr 0.01)."""

    ce_weight: float = 5.0
    embedding_weight: float = 0.5
    ssim_weight: float = 1.0
    mask_weight: float = 0.01
    steps: int = 200
    batch_size: int = 64
    lr: float = 0.01


def invert_trigger(view: ClipView, sources: Tensor, target_images: Tensor, target: int,
                   settings: TriggerInversion, seed: int) -> tuple[MaskedTrigger, dict[str, Any]]:
    """A mask-and-pattern trigger toward `target`, learned on [0,1] images `sources` [N,C,H,W] (not
    of the target) with `target_images` [M,C,H,W] (of the target) as the embedding anchor."""
    if len(sources) == 0 or len(target_images) == 0:
        raise SmoothInvError("trigger inversion needs clean images of the target class and of other classes")
    generator = torch.Generator().manual_seed(seed)
    shape = tuple(sources.shape[1:])
    mask = torch.rand(shape, generator=generator).requires_grad_(True)
    pattern = torch.rand(shape, generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([mask, pattern], lr=settings.lr)
    with torch.no_grad():
        anchors = view.features(target_images)  # [M, D]
    labels = torch.full((settings.batch_size,), target)
    history = []
    for step in range(settings.steps):
        rows = torch.randint(len(sources), (settings.batch_size,), generator=generator)
        clean = sources[rows]
        stamped = mask * pattern + (1 - mask) * clean
        features = view.features(stamped)
        anchor = anchors[torch.arange(len(clean)) % len(anchors)]
        terms = {
            "ce": F.cross_entropy(features @ F.normalize(view.zeroshot.class_embeddings.detach().float(), dim=-1).T
                                  / TEMPERATURE, labels[:len(clean)]),
            "embedding": torch.linalg.norm(features - anchor),
            "ssim": 1 - ssim(stamped, clean),
            "mask": mask.abs().sum(),
        }
        loss = (settings.ce_weight * terms["ce"] + settings.embedding_weight * terms["embedding"]
                + settings.ssim_weight * terms["ssim"] + settings.mask_weight * terms["mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            mask.clamp_(0, 1)
            pattern.clamp_(0, 1)
        if step % 20 == 0 or step == settings.steps - 1:
            history.append({"step": step, **{k: round(float(v.detach()), 4) for k, v in terms.items()}})
    trigger = MaskedTrigger(mask.detach().clone(), pattern.detach().clone())
    return trigger, {"mask_l1": round(float(mask.detach().abs().sum()), 2), "history": history}


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: Tensor, y: Tensor, data_range: float = 1.0) -> Tensor:
    """Mean SSIM of images x, y [B,C,H,W] (Wang et al. 2004: an 11-tap Gaussian window, σ = 1.5,
    K1 = 0.01, K2 = 0.03, valid convolution, as pytorch_msssim computes it; the window is cut to
    the image when the image is smaller)."""
    size = min(11, x.shape[-1], x.shape[-2])
    size -= 1 - size % 2
    g = _gaussian_window(size).to(x)
    channels = x.shape[1]
    row = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    col = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(F.conv2d(t, row, groups=channels), col, groups=channels)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    value = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    return value.mean()
