"""The scan's score as a trojan probability: P(backdoored | score), a logistic fit on the zoo.

The score is the highest class score of the scan (a robust z-score, 0 to 20; detection.decision).
The probability is sigmoid(intercept + slope · f(score)) with f = log(1 + score): backdoor
targets score anywhere from 3 to 20 while clean models stay near 0-2.5, so the evidence grows
with the score's order of magnitude, not linearly; the log keeps a 20 from dominating the fit,
and log(1 + 0) is defined for the many models whose score is 0.

`trojan_calibration.json` (shipped in this package) holds the fit: the data it was fit on
(model, score, truth, which stored benchmark the score comes from), the parameters, and its
in-sample and leave-one-out cross-entropy and AUROC. `benchmarks/fit_trojan_probability.py`
regenerates it (docs/benchmarks.md, "Trojan probability"). The fit is for the default
SmoothInv scan: other methods score on other scales, so they get no probability.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import SmoothInvError
from ..registry import Registry

CALIBRATION_FILE = Path(__file__).with_name("trojan_calibration.json")
RIDGE = 0.01
"""A weak Gaussian prior on the slope (variance 1/RIDGE = 100): keeps the fit finite on a fold that
happens to be separable, and moves the shipped fit by less than 0.1%."""

FEATURES: Registry[Callable[[float], float]] = Registry("calibration feature")
FEATURES.add("log1p_score", lambda score: math.log1p(max(score, 0.0)))
FEATURES.add("score", lambda score: score)


def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


@dataclass(frozen=True)
class TrojanCalibration:
    """P(backdoored) = sigmoid(intercept + slope · FEATURES[feature](score)), for scans by `method`."""

    feature: str
    intercept: float
    slope: float
    method: str = "smoothinv"
    description: str = ""
    fit: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def probability(self, score: float | None) -> float | None:
        """The trojan probability of a model whose scan scored `score` (None for no score)."""
        if score is None or not math.isfinite(score):
            return None
        p = sigmoid(self.intercept + self.slope * FEATURES.get(self.feature)(score))
        return round(min(max(p, 0.0), 1.0), 4)

    def describe(self) -> dict[str, Any]:
        return {"feature": self.feature, "intercept": self.intercept, "slope": self.slope, "method": self.method,
                "description": self.description, "file": CALIBRATION_FILE.name}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrojanCalibration:
        try:
            return cls(str(data["feature"]), float(data["intercept"]), float(data["slope"]), str(data["method"]),
                       str(data.get("description", "")), dict(data.get("fit", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise SmoothInvError(f"trojan calibration is missing or has a bad field ({e})") from None

    @classmethod
    def shipped(cls) -> TrojanCalibration:
        """The calibration that ships with smoothinv (trojan_calibration.json)."""
        return _shipped()


@functools.lru_cache(maxsize=1)
def _shipped() -> TrojanCalibration:
    try:
        data = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SmoothInvError(f"cannot read the shipped trojan calibration {CALIBRATION_FILE} ({e}); "
                             "reinstall smoothinv") from None
    return TrojanCalibration.from_dict(data)


def fit_logistic(x: Sequence[float], y: Sequence[bool], ridge: float = RIDGE) -> tuple[float, float]:
    """(intercept, slope) maximising the log-likelihood of y ~ Bernoulli(sigmoid(a + b·x)) minus
    ridge·b²/2, by Newton's method (the problem is concave, so it converges from 0)."""
    if len(x) != len(y) or not any(y) or all(y):
        raise SmoothInvError("a calibration needs scores of both backdoored and clean models")
    a = b = 0.0
    for _ in range(100):
        p = [sigmoid(a + b * xi) for xi in x]
        ga = sum(pi - yi for pi, yi in zip(p, y))
        gb = sum((pi - yi) * xi for pi, yi, xi in zip(p, y, x)) + ridge * b
        w = [pi * (1 - pi) for pi in p]
        haa = sum(w) + 1e-12
        hab = sum(wi * xi for wi, xi in zip(w, x))
        hbb = sum(wi * xi * xi for wi, xi in zip(w, x)) + ridge
        det = haa * hbb - hab * hab
        da, db = (hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-10:
            break
    return a, b


def leave_one_out(x: Sequence[float], y: Sequence[bool], ridge: float = RIDGE) -> list[float]:
    """Each model's probability from a fit on all the others: an honest estimate of the fit's error."""
    out = []
    for i in range(len(x)):
        a, b = fit_logistic([v for j, v in enumerate(x) if j != i], [v for j, v in enumerate(y) if j != i], ridge)
        out.append(sigmoid(a + b * x[i]))
    return out


def cross_entropy(p: Sequence[float], y: Sequence[bool]) -> float:
    """Mean negative log-likelihood in nats (TrojAI's metric); probabilities clipped to [1e-12, 1 - 1e-12]."""
    clipped = [min(max(pi, 1e-12), 1 - 1e-12) for pi in p]
    return -sum(math.log(pi) if yi else math.log(1 - pi) for pi, yi in zip(clipped, y)) / len(y)


def auroc(positive: Sequence[float], negative: Sequence[float]) -> float | None:
    """P(score of a backdoored model > score of a clean one), ties counting half."""
    if not positive or not negative:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positive for n in negative)
    return wins / (len(positive) * len(negative))


def brier(p: Sequence[float], y: Sequence[bool]) -> float:
    """Mean squared error of the probabilities."""
    return sum((pi - float(yi)) ** 2 for pi, yi in zip(p, y)) / len(y)
