"""From per-class transfer ASR to a verdict: is there a backdoor, and which class(es)?

SmoothInv's observation: only the backdoor target's perturbation transfers to other clean
images. But transfer also grows with ε for every class: at a large enough ε every
perturbation is a universal adversarial one (at 32² inputs already at the paper's ε = 5, ×8 in
the scan's ladder). What separates a target from a class that merely has a universal
perturbation is *how early* on the ε ladder its perturbation starts to transfer. So a class is
judged against the other classes of the same model, never against a fixed ASR:

1. a_c(ε) = max over σ of class c's transfer ASR at that ε.
2. A_c = the mean of a_c(ε) over the scan's ε ladder: the area under the class's
   transfer-vs-ε curve. A target transfers from a smaller ε on, so its area is larger; the
   universal columns (every class near 100%) add about the same to every class.
3. score_c = robust z-score of A_c across classes:
   (A_c − median) / max(1.4826 · MAD, spread_floor). A class whose ASR never reaches min_asr
   at any ε (a backdoor must actually flip most images) scores at most 0.
   (The median of an even number of classes is the mean of the middle two.)
4. Flag every class whose score reaches both the threshold and `relative` × the highest class
   score of the model; the model is "backdoored" if any is flagged. Several targets can be
   flagged, when they stand out about as much as each other.
The per-ε z-scores z_c(ε) are kept for the report, and a class's evidence (its picture) is its
perturbation at the ε where its z_c(ε) is highest among the ε where a_c(ε) ≥ min_asr.

Why the area and not the best single ε (the rule before issue 12): on a kind of model it was
never tuned on (a VGG with BatchNorm trained without augmentation), one ε column split the
innocent classes into two groups, the MAD came out small, and a clean model's class scored
4.62 at that ε, as much as the weakest backdoor target (4.69). Averaging over the ladder smooths
one column's accident away; on the zoo the largest innocent score fell to 2.48 and the
weakest target scored 3.46 (docs/benchmarks.md, Detection across kinds of model, where the
alternatives measured are listed too). The threshold 3.0 is that largest innocent score on the
kinds it was chosen on, + 0.5; one architecture was kept out of the choice and tested after.

Step 4's relative part is a per-model normalisation. When the target stands out by many MADs,
the other classes' ASRs are compressed near zero (often the noise sink pins G to the target), so
their MAD is tiny, the spread floor sets the scale, and one innocent class at the edge of
min_asr scores 5: cifar10-vgg-htba flagged class 0 at 5.15 beside its target at 18.63 under the
earlier rule, and a published 43-class traffic-sign model two innocent classes at 6.2 and 5.7
beside 17.2. The cost: a second backdoor less than half as strong as the first goes unflagged
(its score is still in the report).

Neural Cleanse judges its own evidence differently: a class whose trigger is abnormally SMALL
(mask L1 norm far below the median, `small_outliers`) is flagged. A method names the statistic
it is judged on (`Inverter.anomaly_statistic`); the scan and the benchmark both use this one test.

spread_floor keeps a near-zero MAD (all other classes at 0–2% ASR) from turning a modest
ASR into a huge z.
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
    threshold: float = 3.0
    min_asr: float = 0.3
    spread_floor: float = 0.05
    relative: float = 0.5
    """A flagged class's score must also reach this fraction of the model's highest class score."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.relative <= 1.0:
            raise SmoothInvError(f"the rule's relative fraction must be in [0, 1] (got {self.relative})")

    def describe(self) -> str:
        return (f"flag class c if its score >= {self.threshold} and >= {self.relative} x the highest class score; "
                f"score = (A_c - median_c) / max({MAD_CONSISTENCY}*MAD, {self.spread_floor}), at most 0 unless "
                f"a_c(eps) >= {self.min_asr} at some eps; A_c = mean over eps of a_c(eps), a_c(eps) = max over sigma "
                "of transfer ASR")


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
    """asr [K classes, E eps] (max over σ) → each class's score (the robust z of its mean ASR
    over ε), the per-ε z-scores and the ε column of its evidence."""
    z = torch.stack([robust_z(asr[:, e], rule.spread_floor) for e in range(asr.shape[1])], dim=1)
    area = robust_z(asr.to(torch.float64).mean(dim=1), rule.spread_floor)
    counts = (asr >= rule.min_asr).any(dim=1)
    score = torch.where(counts, area, area.clamp(max=0.0))
    counted = torch.where(asr >= rule.min_asr, z, torch.full_like(z, -torch.inf))
    at = torch.where(counts, counted.argmax(dim=1), z.argmax(dim=1))
    return Scores(score, z, at)


def flagged(scores: Tensor, rule: DecisionRule) -> list[int]:
    """Positions (in the scanned class list) whose score reaches the threshold and `rule.relative`
    × the highest score."""
    if scores.numel() == 0:
        return []
    bar = max(rule.threshold, rule.relative * float(scores.max()))
    return [int(i) for i in torch.nonzero(scores >= bar).squeeze(1)]


def describe_small_outliers(statistic: str) -> str:
    """`small_outliers` on a trigger statistic, in words."""
    return (f"flag class c if its trigger's {statistic} is below the median and |{statistic} - median| / "
            f"({MAD_CONSISTENCY}*MAD) > {ANOMALY_THRESHOLD} (Neural Cleanse's MAD outlier test)")
