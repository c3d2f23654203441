"""PixelInv: mask-free pixel-space trigger inversion after Tao et al., CVPR 2022,
"Better Trigger Inversion Optimization in Backdoor Scanning" (PixelBackdoor), on ONE image.

The paper's key idea: instead of optimising a mask that selects which pixels to
perturb (Neural Cleanse), optimise the pixel changes themselves and penalise how many
pixels change. The trigger is an additive perturbation split into a positive and a
negative part,

    δ = b · (clip(u⁺, 0, 1) − clip(u⁻, 0, 1)),   x' = clamp(x + δ, 0, 1),

so every pixel channel moves by at most b (|δ| ≤ b, b = ``bound``). The loss is

    CE(f(x'), t) + λ · Σ_{h,w} [ max_c s(u⁺/10) + max_c s(u⁻/10) ],   s(z) = (tanh(z) + 1)/2,

a smooth stand-in for the number of perturbed pixel positions (it keeps pushing the
variables of unused pixels below 0, where they no longer change the image). λ follows
Neural Cleanse's adaptive schedule (see `adaptive.AdaptiveCost`). Whenever the
attack succeeds with both a smaller penalty and fewer perturbed pixels than the best so
far, changes smaller than 1/255 are zeroed, that pruned trigger becomes the best, and it
is written back into u⁺, u⁻ (so pruned pixels restart from "off").

Sources: the paper's abstract (optimise the individual pixel changes directly, with no
mask, so fewer pixels change) and the authors' public code, github.com/Gwinhen/PixelBackdoor
(`src/inversion.py`, Keras, and `src/inversion_torch.py`), from which the formulation
above and these defaults are taken (the paper's full text was not available to us):

- Adam, lr 0.1, betas (0.5, 0.9); initial λ 1e-3; patience 10; λ ×1.5 after ``patience``
  consecutive successes, ÷1.5^1.5 after ``patience`` consecutive failures; λ starts at
  init_cost (not 0) and is reset to init_cost if it ever reaches 0 on the way up.
- u⁺, u⁻ initialised uniform in [0,1]; clipping (not tanh) maps them to [0,1] (the
  reference's default, use_tanh=False); the penalty's tanh(u/10) squashing; pruning
  threshold 1/255; best = success ∧ smaller penalty ∧ fewer perturbed pixels.
- ``bound`` = 1.0: the reference bounds each part only by the pixel range (clip_max);
  a smaller ``bound`` gives the l∞-bounded variant.

Deviations:

- Single image: the reference flips a set of images (attack_size 50, batches of 32,
  "steps" are epochs) and reads the batch attack success rate against asr_bound 0.9.
  Here one step is one Adam update on one image and success is "f(x') predicts the
  target" (the success rate of one image is 0 or 1, so any bound in (0,1] agrees).
  ``patience`` counts updates. Default ``steps`` = 500 (reference: 1000 epochs).
- No data augmentation (the reference's optional `augment`, off by default).
- If no step succeeds the last iterate (unpruned) is returned; the reference returns an
  all-zero pattern.
- All metrics and the best trigger are taken at the iterate before that step's update
  (as in the PyTorch reference); when a new best is found, writing it back replaces that
  step's update (also as in the reference); Adam's state is not reset.
- The 1/255 threshold is absolute in [0,1] pixel units (the reference: clip_max/255,
  the same for clip_max = 1). Adam's ε is 1e-7 (Keras' default) instead of 1e-8.
- Rows of a batch are independent problems (own variables, λ and counters; each row's
  random start is drawn from a generator re-seeded with ``seed``).

Note: while the attack keeps succeeding λ keeps rising (×1.5 per ``patience`` steps) and
the penalty can always shrink a little more (u → −∞), so on long runs λ, and with it the
objective, can grow large: loss[steps] may then exceed loss[0]. Judge progress by
target_prob, extras["ce_curve"] and extras["pixel_count"].

Curves: loss[k] (the objective CE + λ·penalty) and target_prob[k] (k < steps) are
measured before update k with the λ then in force; loss[steps], target_prob[steps] are
those of the RETURNED trigger (as written back into u⁺, u⁻) under the λ in force when it
was selected (else the final λ). extras carry the CE, penalty and λ curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..triggers import AdditiveTrigger, Trigger
from .adaptive import ADAM_BETAS, AdaptiveCostConfig, AdaptiveCostInverter, uniform_rows
from .config import bounded_float
from .registry import register_method

PRUNE_THRESHOLD = 1.0 / 255.0
PENALTY_TEMPERATURE = 10.0


def _squash(u: Tensor) -> Tensor:
    return (torch.tanh(u / PENALTY_TEMPERATURE) + 1) / 2


def size_penalty(pos: Tensor, neg: Tensor) -> Tensor:
    """Smooth count of perturbed pixel positions, [B]: Σ_hw max_c s(u⁺/10) + max_c s(u⁻/10)."""
    return _squash(pos).amax(1).flatten(1).sum(1) + _squash(neg).amax(1).flatten(1).sum(1)


def pixel_count(delta: Tensor) -> Tensor:
    """Number of H×W positions where any channel of delta [B,C,H,W] is non-zero, [B]."""
    return (delta.abs().sum(1) > 0).flatten(1).sum(1)


@dataclass(frozen=True)
class PixelInvConfig(AdaptiveCostConfig):
    """AdaptiveCostConfig's options plus bound: the largest change of one pixel channel (l∞
    bound of δ, in [0,1] units)."""

    bound: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        bounded_float(self, "bound", 0.0, 1.0)


class PixelInv(AdaptiveCostInverter[PixelInvConfig]):
    """PixelBackdoor's mask-free trigger inversion on single images."""

    name = "pixelinv"
    Config = PixelInvConfig
    penalty_name = "size_penalty"
    penalty_curve = "size_curve"
    write_back_best = True

    def describe(self, config: PixelInvConfig | None = None) -> dict[str, Any]:
        config = config or self.config
        return {"steps": config.steps, "lr": config.lr, "betas": list(ADAM_BETAS), "bound": config.bound,
                **config.schedule(), "prune_threshold": PRUNE_THRESHOLD}

    @staticmethod
    def _parts(u_pos: Tensor, u_neg: Tensor, config: PixelInvConfig) -> tuple[Tensor, Tensor]:
        """The positive and negative parts b·clip(u, 0, 1) of δ."""
        return config.bound * u_pos.clamp(0.0, 1.0), config.bound * u_neg.clamp(0.0, 1.0)

    def _start(self, x: Tensor, config: PixelInvConfig, generators: list[torch.Generator]) -> list[Tensor]:
        """u⁺ and u⁻ [B,C,H,W] uniform in [0,1]."""
        return uniform_rows(generators, [tuple(x.shape[1:])] * 2, x.device)

    def _forward(self, model: nn.Module, x: Tensor, variables: list[Tensor],
                 config: PixelInvConfig) -> tuple[Tensor, Tensor]:
        """Logits of clamp(x + δ, 0, 1), and the smooth pixel count of δ."""
        p_pos, p_neg = self._parts(*variables, config)
        logits = model((x + p_pos - p_neg).clamp(0.0, 1.0))
        return logits, size_penalty(*variables)

    def _candidate(self, variables: list[Tensor], config: PixelInvConfig) -> tuple[list[Tensor], list[Tensor]]:
        """δ's parts with changes below 1/255 zeroed (as u⁺, u⁻); it must also change fewer pixels."""
        p_pos, p_neg = self._parts(*variables, config)
        p_pos = torch.where(p_pos < PRUNE_THRESHOLD, torch.zeros_like(p_pos), p_pos)
        p_neg = torch.where(p_neg < PRUNE_THRESHOLD, torch.zeros_like(p_neg), p_neg)
        return [p_pos / config.bound, p_neg / config.bound], [pixel_count(p_pos - p_neg)]

    def _triggers(self, variables: list[Tensor], config: PixelInvConfig) -> list[tuple[Trigger, dict[str, Any]]]:
        p_pos, p_neg = self._parts(*variables, config)
        deltas = p_pos - p_neg
        sizes = pixel_count(deltas)
        out: list[tuple[Trigger, dict[str, Any]]] = []
        for delta, size in zip(deltas, sizes):
            delta = delta.cpu()
            extras = {
                "delta": delta,
                "pixel_count": int(size),
                "delta_l1": float(delta.abs().sum()),
                "delta_linf": float(delta.abs().max()),
            }
            out.append((AdditiveTrigger(delta), extras))
        return out


register_method("pixelinv", "PixelInv (Tao et al. 2022, PixelBackdoor): mask-free pixel trigger, pixel-count penalty")(
    PixelInv
)
