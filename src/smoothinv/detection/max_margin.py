"""MM-BD (Wang et al., IEEE S&P 2024): data-free backdoor detection by a maximum-margin statistic.

A backdoor teaches the model a pattern that pushes any input to the target class, so the target's
logit margin over the other classes can be made abnormally large. MM-BD measures, per class t,
how large that margin gets from random inputs; it needs no clean data (the starts are noise and
no label is involved), only gradients of the logits w.r.t. the input.

Reference procedure (github wanghangpsu/MM-BD, univ_bd.py), per class t of K:
- 30 images uniform in [0, 1] of the input shape; for up to 300 steps: logits = model(clamp(x, 0, 1)),
  loss = −Σ_i logit_t(x_i) + Σ_i max_{k≠t} logit_k(x_i), x ← x − 0.01·∇loss (x is not projected,
  only clamped inside the forward); stop once |last_loss − loss| / |last_loss| < 1e-5 (last_loss
  starts at 1000, as there);
- statistic_t = max over the images of logit_t − max_{k≠t} logit_k from the last forward pass
  (made before the last step).
Decision: r_eval = the largest statistic, r_null = the other K−1; a gamma (free shape, loc, scale)
is fitted to r_null by maximum likelihood; p = 1 − F(r_eval)^K (the law of the maximum of K);
the argmax class is flagged when p ≤ 0.05.

Deviations, none of which changes a result beyond rounding:
- the reference builds a new SGD optimiser (momentum 0.2) at every step, so its momentum buffer is
  always fresh and each step is exactly lr·grad: we take that plain step;
- all classes' images are descended together ([K·images, C, H, W], forward passes of at most
  `max_batch` images); rows never interact (eval mode) and a stopped class's rows are frozen, so a
  class gets what it would alone (up to floating-point kernel differences);
- class t's starts come from a torch.Generator seeded with `seed + t` (CPU, then moved to the
  model's device), so they do not depend on which other classes are scanned;
- max_{k≠t} masks the target with −inf (the reference subtracts 1000, the same for sane logits);
  the loss is summed in float64;
- p is computed as −expm1(K·log1p(−SF)), equal to 1 − CDF^K but accurate in the upper tail;
- where the reference would fail (all null values equal, or a fit that fails), p falls back to
  0 or 1 (`max_margin_verdict`).
Models take [0, 1] images (normalisation is inside the model wrapper), as the reference's clamp assumes.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError, param


def _positive_int(name: str, value: object, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SmoothInvError(f"{param(name)} must be an integer >= {least} (got {value!r})")


@dataclass(frozen=True)
class MaxMarginSettings:
    images: int = 30  # random starts per class
    steps: int = 300
    lr: float = 0.01
    tolerance: float = 1e-5  # relative loss change that stops a class
    p_threshold: float = 0.05
    seed: int = 0
    max_batch: int = 4096  # images per forward pass (classes are batched together)

    def __post_init__(self) -> None:
        for name in ("images", "steps", "max_batch"):
            _positive_int(name, getattr(self, name))
        for name in ("lr", "tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise SmoothInvError(f"{param(name)} must be a positive finite number (got {value!r})")
        _check_p_threshold(self.p_threshold)
        _positive_int("seed", self.seed, least=0)


def _check_p_threshold(p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1:
        raise SmoothInvError(f"{param('p_threshold')} must be strictly between 0 and 1 (got {p!r})")


class MaxMargins(NamedTuple):
    """statistic [S] float64: each scanned class's max margin; steps [S] int64: steps it ran."""

    statistic: Tensor
    steps: Tensor


def max_margins(model: nn.Module, num_classes: int, shape: tuple[int, int, int],
                settings: MaxMarginSettings = MaxMarginSettings(), classes: Sequence[int] | None = None,
                progress: Callable[[int], None] | None = None) -> MaxMargins:
    """Each class's maximum achievable margin (MM-BD's statistic), in `classes` order (default: all
    `num_classes`). `model` maps [B, *shape] images in [0, 1] to logits [B, num_classes]."""
    _positive_int("num_classes", num_classes, least=2)
    if not isinstance(shape, (tuple, list)) or len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise SmoothInvError(f"{param('shape')} must be three positive integers (C, H, W) (got {shape!r})")
    classes = list(range(num_classes)) if classes is None else list(classes)
    if not classes or len(set(classes)) != len(classes) or any(
            isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes for c in classes):
        raise SmoothInvError(f"{param('classes')} must be distinct class indices in [0, {num_classes}) (got {classes})")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    n, m = len(classes), settings.images
    x = torch.cat([torch.rand((m, *shape), generator=torch.Generator().manual_seed(settings.seed + t))
                   for t in classes]).to(device=device, dtype=dtype)
    target = torch.tensor(classes, device=device).repeat_interleave(m)
    statistic = torch.full((n,), -math.inf, dtype=torch.float64)
    steps = torch.zeros(n, dtype=torch.int64)
    last_loss = [1000.0] * n  # the reference's starting value
    active = list(range(n))
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for step in range(settings.steps):
            rows = torch.cat([torch.arange(j * m, (j + 1) * m, device=device) for j in active])
            margins = torch.cat([_descend_chunk(model, x, chunk, target[chunk], num_classes, settings.lr)
                                 for chunk in rows.split(settings.max_batch)]).view(len(active), m)
            still = []
            for j, margin in zip(active, margins.cpu()):
                statistic[j] = float(margin.max())
                steps[j] += 1
                loss = -float(margin.sum())
                if abs(last_loss[j] - loss) >= settings.tolerance * abs(last_loss[j]):
                    still.append(j)
                last_loss[j] = loss
            active = still
            if progress is not None:
                progress(step + 1)
            if not active:
                break
    finally:
        for module, training in modes:
            module.training = training
    return MaxMargins(statistic, steps)


def _descend_chunk(model: nn.Module, x: Tensor, rows: Tensor, target: Tensor, num_classes: int, lr: float) -> Tensor:
    """One step on x[rows] in place (x ← x − lr·∇(−margin)); returns the rows' margins [R] float64."""
    xc = x[rows].requires_grad_(True)
    with torch.enable_grad():
        logits = model(xc.clamp(0, 1))
        if not isinstance(logits, Tensor) or logits.shape != (len(rows), num_classes):
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise SmoothInvError(f"the model must return logits [batch, {num_classes}] for {param('num_classes')} "
                                 f"classes (got {got})")
        if not bool(torch.isfinite(logits).all()):
            raise SmoothInvError("the model returned non-finite logits on [0, 1] inputs; check its weights")
        is_target = nn.functional.one_hot(target, num_classes).bool()
        margin = logits.gather(1, target[:, None])[:, 0] - logits.masked_fill(is_target, -math.inf).max(1).values
        if not margin.requires_grad:
            raise SmoothInvError("the model's logits are not differentiable w.r.t. its input, which MM-BD needs")
        (grad,) = torch.autograd.grad(-margin.sum(), xc, allow_unused=True)
    if grad is not None:
        x[rows] = xc.detach() - lr * grad
    return margin.detach().to(torch.float64)


@dataclass(frozen=True)
class MaxMarginVerdict:
    statistic: list[float]  # per scanned class, in `classes` order
    classes: list[int]
    target: int | None  # the flagged class, or None
    p_value: float
    score: float  # -log10(max(p_value, 1e-300)): larger = more suspicious
    null: dict  # {"shape", "loc", "scale"} of the fitted gamma (None where not fitted) and "fit"

    def to_dict(self) -> dict:
        return asdict(self)


def max_margin_verdict(statistic: Sequence[float] | Tensor, classes: Sequence[int],
                       p_threshold: float = 0.05) -> MaxMarginVerdict:
    """MM-BD's decision on per-class statistics [S] (S ≥ 3).

    null["fit"] says how p was obtained: "mle" (the gamma fit); "degenerate" (all null values equal:
    no gamma fits, p = 0 if r_eval exceeds that value, else 1); "failed" (the fit raised or gave
    non-finite or non-positive parameters: the same rule against the largest null value, which
    flags any strict maximum)."""
    import numpy as np
    from scipy import stats

    _check_p_threshold(p_threshold)
    values = np.asarray(torch.as_tensor(statistic, dtype=torch.float64).reshape(-1).cpu())
    classes = [int(c) for c in classes]
    if len(classes) != len(values):
        raise SmoothInvError(f"{param('classes')} must name one class per statistic ({len(classes)} != {len(values)})")
    if len(values) < 3:
        raise SmoothInvError(f"MM-BD needs >= 3 classes for its gamma null fit (got {len(values)}); scan more classes")
    if not np.isfinite(values).all():
        raise SmoothInvError(f"MM-BD needs finite statistics (got {values.tolist()})")
    best = int(np.argmax(values))
    r_eval, r_null, k = float(values[best]), np.delete(values, best), len(values)
    null: dict = {"shape": None, "loc": None, "scale": None, "fit": "degenerate"}
    if np.all(r_null == r_null[0]):
        p = 0.0 if r_eval > r_null[0] else 1.0
    else:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                a, loc, scale = (float(v) for v in stats.gamma.fit(r_null))
                ok = all(math.isfinite(v) for v in (a, loc, scale)) and a > 0 and scale > 0
                if ok:
                    sf = float(stats.gamma.sf(r_eval, a, loc=loc, scale=scale))
                    p = float(-np.expm1(k * np.log1p(-sf))) if sf < 1 else 1.0
                    ok = math.isfinite(p)
        except (ValueError, RuntimeError, FloatingPointError, stats.FitError):
            ok = False
        if ok:
            null = {"shape": a, "loc": loc, "scale": scale, "fit": "mle"}
        else:
            null["fit"] = "failed"
            p = 0.0 if r_eval > float(r_null.max()) else 1.0
    p = min(max(p, 0.0), 1.0)
    return MaxMarginVerdict(values.tolist(), classes, classes[best] if p <= p_threshold else None, p,
                            0.0 - math.log10(max(p, 1e-300)), null)


def detect_max_margin(model: nn.Module, num_classes: int, shape: tuple[int, int, int],
                      settings: MaxMarginSettings = MaxMarginSettings(), classes: Sequence[int] | None = None,
                      progress: Callable[[int], None] | None = None) -> MaxMarginVerdict:
    """MM-BD end to end: `max_margins`, then `max_margin_verdict` at settings.p_threshold."""
    result = max_margins(model, num_classes, shape, settings, classes, progress)
    scanned = list(range(num_classes)) if classes is None else list(classes)
    return max_margin_verdict(result.statistic, scanned, settings.p_threshold)
