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
import numbers
import statistics
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.metrics import model_device
from ..engine.pgd import StepCallback
from ..errors import SmoothInvError
from ..triggers import MaskedTrigger
from .base import InversionResult, Inverter, check_inputs, check_target, non_finite_loss, register_method

ADAM_BETAS = (0.5, 0.9)
ADAM_EPS = 1e-7
MAD_CONSISTENCY = 1.4826
ANOMALY_THRESHOLD = 2.0


# --------------------------------------------------------------------------- helpers shared with other baselines






def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise SmoothInvError(f"{name} must be an integer >= 1 (got {value!r})")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise SmoothInvError(f"{name} must be a number (got {value!r})") from None
    if not (math.isfinite(v) and v > 0):
        raise SmoothInvError(f"{name} must be finite and > 0 (got {value!r})")
    return v


class AdaptiveCost:
    """The λ schedule of Neural Cleanse (also used by PixelBackdoor), one λ per row.

    Call `update(success)` once per step with the step's success [B] (bool).
    start_at_zero=True (NC): λ = 0 until `patience` consecutive successes, then init_cost.
    start_at_zero=False (PixelBackdoor): λ starts at init_cost.
    Then `patience` consecutive successes: λ ×up (λ = init_cost if it was 0);
    `patience` consecutive failures: λ ÷down. Counters restart after each change.
    """

    def __init__(self, batch: int, init_cost: float, patience: int, up: float, down: float,
                 start_at_zero: bool, device: torch.device) -> None:
        self.init_cost = init_cost
        self.patience = patience
        self.up = up
        self.down = down
        self.start_at_zero = start_at_zero
        self.cost = torch.full((batch,), 0.0 if start_at_zero else init_cost, dtype=torch.float32, device=device)
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        self.set_counter, self.up_counter, self.down_counter = zeros.clone(), zeros.clone(), zeros.clone()

    def update(self, success: Tensor) -> None:
        zero = torch.zeros_like(self.up_counter)
        if self.start_at_zero:
            self.set_counter = torch.where((self.cost == 0) & success, self.set_counter + 1, zero)
            arm = self.set_counter >= self.patience
            self.cost = torch.where(arm, torch.full_like(self.cost, self.init_cost), self.cost)
            self.up_counter = torch.where(arm, zero, self.up_counter)
            self.down_counter = torch.where(arm, zero, self.down_counter)
        self.up_counter = torch.where(success, self.up_counter + 1, zero)
        self.down_counter = torch.where(success, zero, self.down_counter + 1)
        go_up = self.up_counter >= self.patience
        go_down = ~go_up & (self.down_counter >= self.patience)
        raised = torch.where(self.cost == 0, torch.full_like(self.cost, self.init_cost), self.cost * self.up)
        self.cost = torch.where(go_up, raised, torch.where(go_down, self.cost / self.down, self.cost))
        self.up_counter = torch.where(go_up, zero, self.up_counter)
        self.down_counter = torch.where(go_down, zero, self.down_counter)


def seeded_uniform(batch: int, shapes: Sequence[tuple[int, ...]], seed: int, device: torch.device) -> list[Tensor]:
    """Uniform [0,1) starts of shapes [batch, *shape], drawn in order from a generator on
    `device` seeded with `seed` afresh for every row, so each row starts where a one-row
    call with the same seed starts (results do not depend on how rows are batched)."""
    generator = torch.Generator(device=device)
    rows: list[list[Tensor]] = [[] for _ in shapes]
    for _ in range(batch):
        generator.manual_seed(seed)
        for k, shape in enumerate(shapes):
            rows[k].append(torch.rand(tuple(shape), generator=generator, device=device))
    return [torch.stack(r) for r in rows]


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


class NeuralCleanse(Inverter):
    """Neural Cleanse's mask/pattern trigger reverse-engineering on single images.

    steps: Adam updates per call; lr: Adam learning rate; init_cost: λ once the attack
    first succeeds; patience: consecutive successful (failed) steps before λ goes up
    (down); cost_multiplier: λ's up factor (down factor = cost_multiplier^1.5);
    reset_cost_to_zero: start λ at 0 (reference default) instead of init_cost.
    """

    name = "nc"
    grid_axes = ()

    def __init__(
        self,
        steps: int = 500,
        lr: float = 0.1,
        init_cost: float = 1e-3,
        patience: int = 10,
        cost_multiplier: float = 1.5,
        reset_cost_to_zero: bool = True,
    ) -> None:
        self.steps = check_positive_int("steps", steps)
        self.lr = check_positive_float("lr", lr)
        self.init_cost = check_positive_float("init_cost", init_cost)
        self.patience = check_positive_int("patience", patience)
        self.cost_multiplier = check_positive_float("cost_multiplier", cost_multiplier)
        if self.cost_multiplier <= 1:
            raise SmoothInvError(f"cost_multiplier must be > 1 (got {cost_multiplier!r})")
        if not isinstance(reset_cost_to_zero, bool):
            raise SmoothInvError(f"reset_cost_to_zero must be true or false (got {reset_cost_to_zero!r})")
        self.reset_cost_to_zero = reset_cost_to_zero

    def config(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "lr": self.lr,
            "betas": list(ADAM_BETAS),
            "init_cost": self.init_cost,
            "patience": self.patience,
            "cost_multiplier_up": self.cost_multiplier,
            "cost_multiplier_down": self.cost_multiplier**1.5,
            "reset_cost_to_zero": self.reset_cost_to_zero,
            "regularization": "l1",
        }

    def total_steps(self) -> int:
        return self.steps

    def invert_batch(
        self,
        model: nn.Module,
        images: Tensor,
        targets: Tensor,
        *,
        seed: int = 0,
        callback: StepCallback | None = None,
    ) -> list[InversionResult]:
        check_inputs(images, targets)
        device = model_device(model)
        x = images.to(device=device, dtype=torch.float32)
        y = targets.to(device=device, dtype=torch.long)
        with torch.no_grad():
            check_target(y, model(x[:1]).shape[-1])
        start = time.perf_counter()
        b, c, h, w = x.shape
        mask0, pattern0 = seeded_uniform(b, [(1, h, w), (c, h, w)], seed, device)
        mask_w = to_tanh_space(mask0).requires_grad_(True)
        pattern_w = to_tanh_space(pattern0).requires_grad_(True)
        optimizer = torch.optim.Adam([mask_w, pattern_w], lr=self.lr, betas=ADAM_BETAS, eps=ADAM_EPS)
        schedule = AdaptiveCost(b, self.init_cost, self.patience, self.cost_multiplier, self.cost_multiplier**1.5,
                                self.reset_cost_to_zero, device)
        rows = torch.arange(b, device=device)

        def evaluate(mw: Tensor, pw: Tensor, cost: Tensor):
            mask, pattern = from_tanh_space(mw), from_tanh_space(pw)
            logits = model((1 - mask) * x + mask * pattern)
            ce = F.cross_entropy(logits, y, reduction="none")
            l1 = mask.flatten(1).sum(1)
            loss = ce + cost.to(ce.dtype) * l1
            if not bool(torch.isfinite(loss).all()):
                raise non_finite_loss()
            prob = logits.detach().softmax(1)[rows, y]
            success = logits.detach().argmax(1) == y
            return loss, ce.detach(), l1.detach(), prob, success

        best_mask_w = mask_w.detach().clone()
        best_pattern_w = pattern_w.detach().clone()
        best_l1 = torch.full((b,), math.inf, device=device)
        best_step = torch.full((b,), -1, dtype=torch.long, device=device)
        best_cost = schedule.cost.clone()
        losses, probs, ces, l1s, costs = [], [], [], [], []
        for step in range(self.steps):
            cost = schedule.cost
            loss, ce, l1, prob, success = evaluate(mask_w, pattern_w, cost)
            losses.append(loss.detach())
            probs.append(prob)
            ces.append(ce)
            l1s.append(l1)
            costs.append(cost.clone())
            with torch.no_grad():
                better = success & (l1 < best_l1)
                best_mask_w[better] = mask_w[better]
                best_pattern_w[better] = pattern_w[better]
                best_l1 = torch.where(better, l1, best_l1)
                best_step = torch.where(better, torch.full_like(best_step, step), best_step)
                best_cost = torch.where(better, cost, best_cost)
            grads = torch.autograd.grad(loss.sum(), [mask_w, pattern_w])
            mask_w.grad, pattern_w.grad = grads
            optimizer.step()
            schedule.update(success)
            if callback is not None:
                callback(step, loss.detach(), prob)

        with torch.no_grad():
            found = best_step >= 0
            keep = found.view(-1, 1, 1, 1)
            selected_cost = torch.where(found, best_cost, schedule.cost)
            final_mask_w = torch.where(keep, best_mask_w, mask_w.detach())
            final_pattern_w = torch.where(keep, best_pattern_w, pattern_w.detach())
            loss, ce, l1, prob, success = evaluate(final_mask_w, final_pattern_w, selected_cost)
            losses.append(loss)
            probs.append(prob)
            ces.append(ce)
            l1s.append(l1)
            costs.append(selected_cost.clone())
            masks = from_tanh_space(final_mask_w)
            patterns = from_tanh_space(final_pattern_w)
        seconds = time.perf_counter() - start

        loss_t, prob_t = torch.stack(losses).cpu(), torch.stack(probs).cpu()
        ce_t, l1_t, cost_t = torch.stack(ces).cpu(), torch.stack(l1s).cpu(), torch.stack(costs).cpu()
        config = self.config()
        out = []
        for i in range(b):
            image = images[i].detach().cpu().to(torch.float32)
            trigger = MaskedTrigger(masks[i].cpu(), patterns[i].cpu())
            out.append(
                InversionResult(
                    method=self.name,
                    target=int(targets[i]),
                    image=image,
                    synthesized=trigger.apply(image[None])[0],
                    trigger=trigger,
                    loss=loss_t[:, i],
                    target_prob=prob_t[:, i],
                    config=dict(config),
                    seconds=seconds / b,
                    extras={
                        "mask": trigger.mask,
                        "pattern": trigger.pattern,
                        "mask_l1": float(l1_t[-1, i]),
                        "succeeded": bool(found[i]),
                        "best_step": int(best_step[i]),
                        "final_success": bool(success[i]),
                        "selected_cost": float(cost_t[-1, i]),
                        "final_cost": float(schedule.cost[i]),
                        "ce_curve": ce_t[:, i],
                        "mask_l1_curve": l1_t[:, i],
                        "cost_curve": cost_t[:, i],
                    },
                )
            )
        return out


register_method("nc", "Neural Cleanse (Wang et al. 2019): mask + pattern, L1 mask penalty with adaptive weight")(
    NeuralCleanse
)
