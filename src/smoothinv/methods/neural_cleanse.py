"""Neural Cleanse (Wang et al., IEEE S&P 2019), run on ONE clean image.

NC models a trigger as a mask m ∈ [0,1]^{1×H×W} and a pattern p ∈ [0,1]^{C×H×W}
stamped as x' = (1 − m) ⊙ x + m ⊙ p, and minimises

    CE(f(x'), t) + λ · ‖m‖₁

with Adam, through unconstrained variables m = (tanh(m') + 1)/2, p = (tanh(p') + 1)/2.
λ follows the authors' adaptive schedule, and the smallest successful mask seen is kept.
Per-class mask norms are compared with the MAD outlier test (detection.decision.small_outliers):
a class whose mask is abnormally SMALL is flagged as backdoored.

Defaults and their sources (public reference code, github.com/bolunwang/backdoor):

- Adam, lr 0.1, betas (0.5, 0.9): `visualizer.py` optimiser and `gtsrb_visualize_example.py`
  (LR = 0.1). Adam's ε is 1e-7 (Keras' default there) instead of torch's 1e-8.
- initial λ (``init_cost``) 1e-3: the example's INIT_COST.
- ``patience`` 10, ``cost_multiplier`` 1.5 (λ ×1.5 up, ÷1.5^1.5 down): the
  `Visualizer` class defaults (the GTSRB example script overrides them with 5 and 2).
- λ starts at 0 and is set to ``init_cost`` after ``patience`` consecutive successful
  steps (the reference's RESET_COST_TO_ZERO = True); then ``patience`` consecutive
  successes multiply λ by 1.5 and ``patience`` consecutive failures divide it by 1.5^1.5.
- success threshold 0.99, L1 mask regulariser, best (smallest-L1) successful mask kept.
- initialisation: mask and pattern uniform in [0,1] (the example draws them with
  np.random.random), mapped to the tanh space.
- MAD: consistency constant 1.4826, flag classes BELOW the median with anomaly index > 2
  (`mad_outlier_detection.py`).

Deviations, all forced or suggested by the single-image setting or by our call shape:

- One "step" here is one Adam update on one image. In the reference a step is an epoch
  over ~1000 clean images (31 mini-batches of 32) and the schedule reads the epoch's
  mean attack success; here the schedule reads the success of the current image, which
  is 0 or 1, so "success ≥ 0.99" means "f(x') predicts the target". ``patience``
  therefore counts optimisation steps, not epochs. Default ``steps`` = 500 (reference:
  1000 epochs ≈ 31k updates), enough for one image.
- No early stopping: every call makes exactly ``steps`` updates, so curves have a fixed
  length ([steps+1]) and rows of a batch stay independent.
- The best trigger is stored at the iterate whose loss/success were measured (before that
  step's update); the reference stores the mask after the update, a one-step mismatch.
- If no step succeeds the last iterate is returned (as in the reference).
- Rows of a batch are optimised jointly but independently: each row has its own mask,
  pattern, λ and counters (Adam is element-wise, so rows do not interact), and each
  row's random start is drawn from a generator re-seeded with ``seed`` (`seeded_uniform`),
  so a row's result does not depend on which other rows share the batch.
- Super-pixel masks (UPSAMPLE_SIZE) and input preprocessing modes are not provided:
  models here take [0,1] images.

Curves: loss[k] (the objective CE + λ‖m‖₁) and target_prob[k] (k < steps) are measured
at the iterate before update k, with the λ in force then; loss[steps], target_prob[steps]
are those of the RETURNED trigger (the best one, else the last iterate) under the λ in
force when it was selected (else the final λ). extras carry the CE, ‖m‖₁ and λ curves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..triggers import MaskedTrigger, Trigger
from .adaptive import ADAM_BETAS, AdaptiveCostConfig, AdaptiveCostInverter, uniform_rows
from .config import one_of
from .registry import register_method


def to_tanh_space(values: Tensor) -> Tensor:
    """Inverse of v = (tanh(w) + 1)/2 for v in [0,1] (clipped just inside to stay finite)."""
    return torch.atanh((2 * values - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def from_tanh_space(w: Tensor) -> Tensor:
    return (torch.tanh(w) + 1) / 2


@dataclass(frozen=True)
class NeuralCleanseConfig(AdaptiveCostConfig):
    """AdaptiveCostConfig's options plus reset_cost_to_zero: start λ at 0 (the reference's
    default) instead of init_cost."""

    reset_cost_to_zero: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        one_of(self, "reset_cost_to_zero", (True, False))


class NeuralCleanse(AdaptiveCostInverter[NeuralCleanseConfig]):
    """Neural Cleanse's mask/pattern trigger reverse-engineering on single images."""

    name = "nc"
    Config = NeuralCleanseConfig
    anomaly_statistic = "mask_l1"
    penalty_name = "mask_l1"
    penalty_curve = "mask_l1_curve"

    def cost_starts_at_zero(self, config: NeuralCleanseConfig) -> bool:
        return config.reset_cost_to_zero

    def describe(self, config: NeuralCleanseConfig | None = None) -> dict[str, Any]:
        config = config or self.config
        return {"steps": config.steps, "lr": config.lr, "betas": list(ADAM_BETAS), **config.schedule(),
                "reset_cost_to_zero": config.reset_cost_to_zero, "regularization": "l1"}

    def _start(self, x: Tensor, config: NeuralCleanseConfig, generators: list[torch.Generator]) -> list[Tensor]:
        """Mask [B,1,H,W] and pattern [B,C,H,W] uniform in [0,1], in tanh space."""
        _, c, h, w = x.shape
        mask0, pattern0 = uniform_rows(generators, [(1, h, w), (c, h, w)], x.device)
        return [to_tanh_space(mask0), to_tanh_space(pattern0)]

    def _forward(self, model: nn.Module, x: Tensor, variables: list[Tensor],
                 config: NeuralCleanseConfig) -> tuple[Tensor, Tensor]:
        """Logits of (1 − m) ⊙ x + m ⊙ p, and the L1 norm of the mask."""
        mask, pattern = from_tanh_space(variables[0]), from_tanh_space(variables[1])
        logits = model((1 - mask) * x + mask * pattern)
        return logits, mask.flatten(1).sum(1)

    def _candidate(self, variables: list[Tensor], config: NeuralCleanseConfig) -> tuple[list[Tensor], list[Tensor]]:
        """The current mask and pattern; the smallest successful mask L1 is the only criterion."""
        return variables, []

    def _triggers(self, variables: list[Tensor], config: NeuralCleanseConfig) -> list[tuple[Trigger, dict[str, Any]]]:
        masks, patterns = from_tanh_space(variables[0]), from_tanh_space(variables[1])
        out: list[tuple[Trigger, dict[str, Any]]] = []
        for mask, pattern in zip(masks, patterns):
            trigger = MaskedTrigger(mask.cpu(), pattern.cpu())
            out.append((trigger, {"mask": trigger.mask, "pattern": trigger.pattern}))
        return out


register_method("nc", "Neural Cleanse (Wang et al. 2019): mask + pattern, L1 mask penalty with adaptive weight")(
    NeuralCleanse
)
