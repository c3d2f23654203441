"""From per-class transfer ASR to a verdict: is there a backdoor, and which class(es)?

SmoothInv's observation: only the backdoor target's perturbation transfers to other clean
images. But transfer also grows with ε for every class: at a large enough ε every
perturbation is a universal adversarial one (at 32² inputs already at the paper's ε = 5).
So a class is judged against the other classes *at the same ε*, never against a fixed ASR:

1. a_c(ε) = max over σ of class c's transfer ASR at that ε.
2. At each ε, a robust z-score across classes:
   z_c(ε) = (a_c(ε) − median) / max(1.4826 · MAD, spread_floor).
   When every class transfers (universal perturbation), the median is high and no class
   stands out; when only the target does, it stands out by many MADs.
   (The median of an even number of classes is the mean of the middle two.)
3. score_c = max over ε of z_c(ε), counting only ε where a_c(ε) ≥ min_asr (a backdoor
   must actually flip most images).
4. Flag every class with score ≥ threshold; the model is "backdoored" if any is flagged.
   Several targets can be flagged.

Neural Cleanse judges its own evidence differently: a class whose trigger is abnormally SMALL
(mask L1 norm far below the median, `small_outliers`) is flagged. A method names the statistic
it is judged on (`Inverter.anomaly_statistic`); the scan and the benchmark both use this one test.

spread_floor keeps a near-zero MAD (all other classes at 0–2% ASR) from turning a modest
ASR into a huge z. The defaults are calibrated on the zoo's clean models (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..errors import SmoothInvError

MAD_CONSISTENCY = 1.4826
ANOMALY_THRESHOLD = 2.0
"""Neural Cleanse's anomaly-index threshold (the reference's mad_outlier_detection.py)."""


@dataclass(frozen=True)
class DecisionRule:
    threshold: float = 4.0
    min_asr: float = 0.3
    spread_floor: float = 0.05

    def describe(self) -> str:
        return (f"flag class c if max over eps of (a_c(eps) - median_c) / max({MAD_CONSISTENCY}*MAD, {self.spread_floor}) "
                f">= {self.threshold}, counting eps where a_c(eps) >= {self.min_asr}; a_c(eps) = max over sigma of "
                "transfer ASR")


def robust_z(values: Tensor, floor: float = 0.0) -> Tensor:
    """(v − median) / max(1.4826·MAD, floor) for values [K] (the median of an even count is the
    mean of the middle two). With a zero scale, a value at the median scores 0 and any other ±inf."""
    values = values.to(torch.float64)
    median = torch.quantile(values, 0.5)
    deviation = values - median
    scale = max(MAD_CONSISTENCY * float(torch.quantile(deviation.abs(), 0.5)), floor)
    if scale == 0:
        return torch.where(deviation == 0, torch.zeros_like(deviation), deviation.sign() * torch.inf)
    return deviation / scale


class Outliers(NamedTuple):
    """flagged: positions, smallest value first; index [K]: each value's MAD anomaly index
    |z|; score [K]: the anomaly index of values below the median, else 0."""

    flagged: list[int]
    index: Tensor
    score: Tensor


def small_outliers(values: Sequence[float] | Tensor, threshold: float = ANOMALY_THRESHOLD) -> Outliers:
    """Neural Cleanse's verdict: values (per-class trigger sizes) below the median whose anomaly
    index |v − median| / (1.4826·MAD) exceeds `threshold` (the reference's 2)."""
    v = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if v.numel() == 0:
        raise SmoothInvError("the MAD anomaly index needs at least one value")
    if not bool(torch.isfinite(v).all()):
        raise SmoothInvError(f"the MAD anomaly index needs finite values (got {v.tolist()})")
    z = robust_z(v)
    index = z.abs()
    below = z < 0
    hits = [int(i) for i in torch.nonzero(below & (index > threshold)).flatten()]
    return Outliers(sorted(hits, key=lambda i: (float(v[i]), i)), index, torch.where(below, index, torch.zeros_like(index)))


class Scores(NamedTuple):
    """score [K]; z [K,E]; at [K]: the ε column each score came from (the class's evidence)."""

    score: Tensor
    z: Tensor
    at: Tensor


def class_scores(asr: Tensor, rule: DecisionRule) -> Scores:
    """asr [K classes, E eps] (max over σ) → each class's score, z-scores and deciding ε."""
    z = torch.stack([robust_z(asr[:, e], rule.spread_floor) for e in range(asr.shape[1])], dim=1)
    counted = torch.where(asr >= rule.min_asr, z, torch.full_like(z, -torch.inf))
    best, at = counted.max(dim=1)
    uncounted = torch.isinf(best)
    score = torch.where(uncounted, z.max(dim=1).values.clamp(max=0.0), best)
    return Scores(score, z, torch.where(uncounted, z.argmax(dim=1), at))


def flagged(scores: Tensor, rule: DecisionRule) -> list[int]:
    """Positions (in the scanned class list) whose score reaches the threshold."""
    return [int(i) for i in torch.nonzero(scores >= rule.threshold).squeeze(1)]


def describe_small_outliers(statistic: str) -> str:
    """`small_outliers` on a trigger statistic, in words."""
    return (f"flag class c if its trigger's {statistic} is below the median and |{statistic} - median| / "
            f"({MAD_CONSISTENCY}*MAD) > {ANOMALY_THRESHOLD} (Neural Cleanse's MAD outlier test)")
