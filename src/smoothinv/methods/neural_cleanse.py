"""Neural Cleanse (Wang et al., IEEE S&P 2019), run on ONE clean image.

NC models a trigger as a mask m ∈ [0,1]^{1×H×W} and a pattern p ∈ [0,1]^{C×H×W}
stamped as x' = (1 − m) ⊙ x + m ⊙ p, and minimises

    CE(f(x'), t) + λ · ‖m‖₁

with Adam, through unconstrained variables m = (tanh(m') + 1)/2, p = (tanh(p') + 1)/2.
λ follows the authors' adaptive schedule, and the smallest successful mask seen is kept.
Per-class mask norms are compared with the MAD outlier test (`mad_anomaly_index`,
`nc_flagged`): a class whose mask is abnormally SMALL is flagged as backdoored.

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

import math
import statistics
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..errors import SmoothInvError
from ..triggers import MaskedTrigger, Trigger
from .adaptive import ADAM_BETAS, AdaptiveCostInverter, seeded_uniform
from .base import register_method

MAD_CONSISTENCY = 1.4826
ANOMALY_THRESHOLD = 2.0


def to_tanh_space(values: Tensor) -> Tensor:
    """Inverse of v = (tanh(w) + 1)/2 for v in [0,1] (clipped just inside to stay finite)."""
    return torch.atanh((2 * values - 1).clamp(-1 + 1e-6, 1 - 1e-6))


def from_tanh_space(w: Tensor) -> Tensor:
    return (torch.tanh(w) + 1) / 2


# --------------------------------------------------------------------------- MAD outlier test


def mad_anomaly_index(values: Sequence[float]) -> list[float]:
    """Anomaly index of each value: |v − median| / (1.4826 · median(|v − median|)).

    With a zero MAD (more than half the values equal the median) a value equal to the
    median has index 0 and any other value index +inf.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise SmoothInvError("the MAD anomaly index needs at least one value")
    if not all(math.isfinite(v) for v in vals):
        raise SmoothInvError(f"the MAD anomaly index needs finite values (got {vals})")
    median = statistics.median(vals)
    deviations = [abs(v - median) for v in vals]
    mad = MAD_CONSISTENCY * statistics.median(deviations)
    if mad == 0:
        return [0.0 if d == 0 else math.inf for d in deviations]
    return [d / mad for d in deviations]


def nc_flagged(mask_norms: Sequence[float], threshold: float = ANOMALY_THRESHOLD) -> list[int]:
    """Indices (classes) Neural Cleanse flags: mask norm below the median with anomaly
    index > threshold (2), smallest norm first."""
    norms = [float(v) for v in mask_norms]
    index = mad_anomaly_index(norms)
    median = statistics.median(norms)
    flagged = [i for i, (v, a) in enumerate(zip(norms, index)) if v < median and a > threshold]
    return sorted(flagged, key=lambda i: (norms[i], i))


# --------------------------------------------------------------------------- the method


class NeuralCleanse(AdaptiveCostInverter):
    """Neural Cleanse's mask/pattern trigger reverse-engineering on single images.

    steps: Adam updates per call; lr: Adam learning rate; init_cost: λ once the attack
    first succeeds; patience: consecutive successful (failed) steps before λ goes up
    (down); cost_multiplier: λ's up factor (down factor = cost_multiplier^1.5);
    reset_cost_to_zero: start λ at 0 (reference default) instead of init_cost.
    """

    name = "nc"
    grid_axes = ()
    penalty_name = "mask_l1"
    penalty_curve = "mask_l1_curve"

    def __init__(
        self,
        steps: int = 500,
        lr: float = 0.1,
        init_cost: float = 1e-3,
        patience: int = 10,
        cost_multiplier: float = 1.5,
        reset_cost_to_zero: bool = True,
    ) -> None:
        super().__init__(steps, lr, init_cost, patience, cost_multiplier)
        if not isinstance(reset_cost_to_zero, bool):
            raise SmoothInvError(f"reset_cost_to_zero must be true or false (got {reset_cost_to_zero!r})")
        self.reset_cost_to_zero = reset_cost_to_zero

    @property
    def cost_starts_at_zero(self) -> bool:
        return self.reset_cost_to_zero

    def config(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "betas": list(ADAM_BETAS),
            **self.schedule_config(),
            "reset_cost_to_zero": self.reset_cost_to_zero,
            "regularization": "l1",
        }

    def _start(self, x: Tensor, seed: int) -> list[Tensor]:
        """Mask [B,1,H,W] and pattern [B,C,H,W] uniform in [0,1], in tanh space."""
        b, c, h, w = x.shape
        mask0, pattern0 = seeded_uniform(b, [(1, h, w), (c, h, w)], seed, x.device)
        return [to_tanh_space(mask0), to_tanh_space(pattern0)]

    def _forward(self, model: nn.Module, x: Tensor, variables: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Logits of (1 − m) ⊙ x + m ⊙ p, and the L1 norm of the mask."""
        mask, pattern = from_tanh_space(variables[0]), from_tanh_space(variables[1])
        logits = model((1 - mask) * x + mask * pattern)
        return logits, mask.flatten(1).sum(1)

    def _candidate(self, variables: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """The current mask and pattern; the smallest successful mask L1 is the only criterion."""
        return variables, []

    def _triggers(self, variables: list[Tensor]) -> list[tuple[Trigger, dict[str, Any]]]:
        masks, patterns = from_tanh_space(variables[0]), from_tanh_space(variables[1])
        out: list[tuple[Trigger, dict[str, Any]]] = []
        for mask, pattern in zip(masks, patterns):
            trigger = MaskedTrigger(mask.cpu(), pattern.cpu())
            out.append((trigger, {"mask": trigger.mask, "pattern": trigger.pattern}))
        return out


register_method("nc", "Neural Cleanse (Wang et al. 2019): mask + pattern, L1 mask penalty with adaptive weight")(
    NeuralCleanse
)
