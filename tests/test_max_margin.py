"""MM-BD (detection.max_margin): the max-margin statistic, its batching, and the gamma decision."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from smoothinv.detection.max_margin import (MaxMarginSettings, detect_max_margin, max_margin_verdict,
                                            max_margins)
from smoothinv.errors import SmoothInvError

SHAPE = (1, 8, 8)
FAST = MaxMarginSettings(images=4, steps=60, lr=0.05)


def linear(classes: int = 10, boosted: int | None = None, seed: int = 4) -> nn.Module:
    """A linear model on flattened inputs with random unit-norm rows; `boosted`'s row is 3x longer, so
    its margin grows 3x faster. (Even unboosted, the gamma null flags about 1 in 5 such random models
    at p <= 0.05 (its null is fitted on 9 values without the max), hence the fixed seed.)"""
    torch.manual_seed(seed)
    layer = nn.Linear(math.prod(SHAPE), classes)
    with torch.no_grad():
        layer.weight.normal_()
        layer.weight /= layer.weight.norm(dim=1, keepdim=True)
        layer.bias.zero_()
        if boosted is not None:
            layer.weight[boosted] *= 3
    return nn.Sequential(nn.Flatten(), layer)


def mlp(classes: int = 5) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), 16), nn.Tanh(), nn.Linear(16, classes))


def test_big_row_is_flagged_similar_rows_are_not():
    backdoored = detect_max_margin(linear(boosted=3), 10, SHAPE, FAST)
    assert backdoored.target == 3 and backdoored.p_value < 0.05
    clean = detect_max_margin(linear(), 10, SHAPE, FAST)
    assert clean.target is None and clean.p_value > 0.05
    assert backdoored.score > clean.score
    json.dumps(backdoored.to_dict())


@pytest.mark.parametrize("model", [mlp(), linear(classes=5)])
def test_batched_equals_one_class_at_a_time(model):
    # classes stop early at different steps; chunks of 7 images split classes
    settings = MaxMarginSettings(images=5, steps=40, lr=0.5, tolerance=1e-3, max_batch=7)
    together = max_margins(model, 5, SHAPE, settings)
    alone = [max_margins(model, 5, SHAPE, settings, classes=[t]) for t in range(5)]
    assert torch.allclose(together.statistic, torch.cat([a.statistic for a in alone]), rtol=1e-5, atol=0)
    assert together.steps.tolist() == [int(a.steps) for a in alone]
    subset = max_margins(model, 5, SHAPE, settings, classes=[4, 1])
    assert torch.allclose(subset.statistic, together.statistic[[4, 1]], rtol=1e-5, atol=0)
    assert subset.steps.tolist() == together.steps[[4, 1]].tolist()
    assert len(set(together.steps.tolist())) > 1


def test_early_stop_and_progress():
    calls = []
    settings = MaxMarginSettings(images=3, steps=500, lr=0.5)
    result = max_margins(linear(classes=4), 4, SHAPE, settings, progress=calls.append)
    assert (result.steps < 500).all()  # a linear model saturates the clamp, then its loss stops changing
    assert calls == list(range(1, int(result.steps.max()) + 1))
    assert result.statistic.dtype == torch.float64 and result.steps.dtype == torch.int64


@pytest.mark.parametrize("field,value", [("images", 0), ("steps", -1), ("max_batch", 1.5), ("lr", 0.0),
                                         ("lr", math.inf), ("tolerance", -1e-5), ("p_threshold", 1.0),
                                         ("p_threshold", 0), ("seed", -1), ("images", True)])
def test_settings_validation(field, value):
    with pytest.raises(SmoothInvError, match=field):
        MaxMarginSettings(**{field: value})


def test_bad_arguments():
    with pytest.raises(SmoothInvError, match=">= 3 classes"):
        max_margin_verdict([1.0, 2.0], [0, 1])
    with pytest.raises(SmoothInvError, match="finite"):
        max_margin_verdict([1.0, math.nan, 2.0], [0, 1, 2])
    with pytest.raises(SmoothInvError, match="classes"):
        max_margins(linear(classes=4), 4, SHAPE, FAST, classes=[0, 4])


class NaNModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(math.prod(SHAPE), 3)

    def forward(self, x):
        return self.layer(x.flatten(1)) * math.nan


def test_non_finite_logits():
    with pytest.raises(SmoothInvError, match="non-finite logits"):
        max_margins(NaNModel(), 3, SHAPE, FAST)


def test_degenerate_equal_null():
    flagged = max_margin_verdict([2.0, 2.0, 5.0, 2.0], [0, 1, 2, 3])
    assert flagged.p_value == 0.0 and flagged.target == 2 and flagged.null["fit"] == "degenerate"
    tied = max_margin_verdict([2.0, 2.0, 2.0], [0, 1, 2])
    assert tied.p_value == 1.0 and tied.target is None and tied.score == 0.0


def test_failed_fit_falls_back(monkeypatch):
    monkeypatch.setattr(stats.gamma, "fit", lambda data: (math.nan, 0.0, 1.0))
    verdict = max_margin_verdict([1.0, 2.0, 3.0, 9.0], [0, 1, 2, 3])
    assert verdict.null["fit"] == "failed" and verdict.p_value == 0.0 and verdict.target == 3


def test_mode_restored_and_no_parameter_grads():
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(SHAPE), 8), nn.Dropout(0.5), nn.Linear(8, 4))
    model.train()
    model[2].eval()  # a mixed mode must come back as it was
    model[3].weight.requires_grad_(False)
    max_margins(model, 4, SHAPE, FAST)
    assert [m.training for m in model.modules()] == [True, True, True, False, True]
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [True, True, False, True]


def test_p_value_matches_scipy():
    values = [3.1, 2.0, 2.5, 1.7, 2.2, 4.2, 2.9, 2.4, 1.9]
    verdict = max_margin_verdict(values, list(range(10, 19)))
    null = np.delete(values, 5)
    a, loc, scale = stats.gamma.fit(null)
    expected = 1 - stats.gamma.cdf(4.2, a, loc=loc, scale=scale) ** len(values)
    assert 1e-4 < expected < 0.5  # the check is about the formula, not the tail
    assert verdict.p_value == pytest.approx(expected, rel=1e-6)
    assert verdict.null["shape"] == pytest.approx(a) and verdict.null["loc"] == pytest.approx(loc)
    assert verdict.score == pytest.approx(-math.log10(expected))
    assert verdict.target == (15 if expected <= 0.05 else None)


def test_class_t_starts_from_seed_plus_t():
    model = mlp()
    result = max_margins(model, 5, SHAPE, MaxMarginSettings(images=3, steps=1, seed=7), classes=[2, 4])
    for statistic, t in zip(result.statistic, [2, 4]):
        with torch.no_grad():
            logits = model(torch.rand((3, *SHAPE), generator=torch.Generator().manual_seed(7 + t)))
        others = torch.cat([logits[:, :t], logits[:, t + 1:]], dim=1).max(1).values
        assert float(statistic) == pytest.approx(float((logits[:, t] - others).max()), rel=1e-6)
