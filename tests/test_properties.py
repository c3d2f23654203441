"""Property tests (Hypothesis): the PGD constraints, the l2 helpers, the robust z-score's
invariances, and every registered attack spec's dict/JSON round trip."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import typing

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from smoothinv.attacks import attack_from_dict, get_attack, list_attacks
from smoothinv.detection.decision import robust_z
from smoothinv.engine.pgd import PGDSettings, descend, normalize_l2, project_l2
from smoothinv.errors import SmoothInvError

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Row scales from underflow to the edge of float32: gradients of every size must give the same step.
ROW_SCALES = [0.0, 1e-45, 1e-38, 1e-20, 1e-6, 1.0, 1e6, 1e20, 1e38, 3e38]
F32 = lambda v: float(np.float32(v))  # noqa: E731  (a bound float32 can hold exactly)
EPS32 = st.floats(F32(1e-6), F32(1e6), width=32)
FLOAT32 = st.floats(min_value=-1.0, max_value=1.0, width=32, allow_nan=False, allow_infinity=False)


@st.composite
def shapes(draw) -> tuple[int, int, int, int]:
    return (draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4)))


@st.composite
def gradients(draw, shape: tuple[int, ...]) -> torch.Tensor:
    """Finite float32 gradients [B,...]: arbitrary values, then each row scaled by a drawn size
    (zero rows, subnormal rows, rows near float32's largest value)."""
    g = draw(hnp.arrays(np.float32, shape, elements=FLOAT32))
    scales = draw(st.lists(st.sampled_from(ROW_SCALES), min_size=shape[0], max_size=shape[0]))
    out = torch.from_numpy(g) * torch.tensor(scales, dtype=torch.float32).view(-1, *([1] * (len(shape) - 1)))
    assume(bool(torch.isfinite(out).all()))
    return out


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    return t.double().flatten(1).norm(dim=1)


def _within_eps(p: torch.Tensor, eps: torch.Tensor, slack: float = 1e-30) -> bool:
    return bool((_row_norms(p) <= eps.double() * (1 + 1e-5) + slack).all())


def _rounding(x: torch.Tensor) -> float:
    """How far (x + p) − x may stray from p in l2 per row: half a float32 ulp at 1 per pixel."""
    return 2.0**-24 * math.sqrt(x[0].numel()) * 1.01


# --------------------------------------------------------------------------- PGD


@FAST
@given(data=st.data(), shape=shapes(), optimizer=st.sampled_from(["pgd", "momentum"]),
       steps=st.integers(1, 4), step_fraction=st.sampled_from([0.05, 0.5, 1.0, 3.0]),
       decay_every=st.integers(1, 3))
def test_descent_keeps_every_row_in_the_eps_ball_and_the_image_box(data, shape, optimizer, steps, step_fraction,
                                                                    decay_every):
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)), label="x"))
    eps = torch.tensor(data.draw(st.lists(EPS32, min_size=shape[0], max_size=shape[0]),
                                 label="eps"), dtype=torch.float32)
    grads = [data.draw(gradients(shape), label=f"grad {i}") for i in range(steps)]
    seen: list[torch.Tensor] = []

    def loss_and_grad(xp: torch.Tensor):
        seen.append(xp.clone())
        i = min(len(seen) - 1, steps - 1)
        return torch.zeros(shape[0]), torch.full((shape[0],), 0.5), grads[i]

    settings_ = PGDSettings(steps=steps, step_fraction=step_fraction, optimizer=optimizer, decay_every=decay_every)
    trace = descend(loss_and_grad, x, eps, settings_)
    p = trace.perturbation
    assert p.shape == x.shape and bool(torch.isfinite(p).all())
    assert _within_eps(p, eps), (_row_norms(p), eps)
    assert float((x + p).min()) >= 0.0 and float((x + p).max()) <= 1.0
    # every point the loss was evaluated at obeys the constraints too
    assert len(seen) == steps + 1
    for xp in seen:  # x + p is rounded to float32: at tiny eps that is a visible fraction of eps
        assert _within_eps(xp - x, eps, _rounding(x))
        assert float(xp.min()) >= 0.0 and float(xp.max()) <= 1.0
    assert trace.loss.shape == (steps + 1, shape[0]) and trace.target_prob.shape == (steps + 1, shape[0])
    # a row whose gradients were all zero never moves
    for row in range(shape[0]):
        if all(not bool(g[row].any()) for g in grads):
            assert not bool(p[row].any())


@pytest.mark.skipif("active" not in inspect.signature(descend).parameters,
                    reason="descend has no per-row `active` mask")
@FAST
@given(data=st.data(), shape=shapes(), optimizer=st.sampled_from(["pgd", "momentum"]), steps=st.integers(1, 4))
def test_rows_that_are_not_active_do_not_move(data, shape, optimizer, steps):
    x = torch.from_numpy(data.draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)), label="x"))
    eps = torch.tensor(data.draw(st.lists(st.floats(F32(1e-3), 10.0, width=32), min_size=shape[0], max_size=shape[0]),
                                 label="eps"), dtype=torch.float32)
    grads = [data.draw(gradients(shape), label=f"grad {i}") for i in range(steps)]
    masks = [torch.tensor(data.draw(st.lists(st.booleans(), min_size=shape[0], max_size=shape[0]), label=f"active {i}"))
             for i in range(steps + 1)]
    seen: list[torch.Tensor] = []

    def loss_and_grad(xp: torch.Tensor):
        seen.append(xp.clone())
        return torch.zeros(shape[0]), torch.full((shape[0],), 0.5), grads[min(len(seen) - 1, steps - 1)]

    trace = descend(loss_and_grad, x, eps, PGDSettings(steps=steps, optimizer=optimizer),
                    active=lambda: masks[len(seen) - 1])
    assert _within_eps(trace.perturbation, eps)
    for step in range(steps):
        for row in range(shape[0]):
            if not bool(masks[step][row]):
                torch.testing.assert_close(seen[step + 1][row], seen[step][row], rtol=0.0, atol=1e-6)


@FAST
@given(data=st.data(), shape=shapes())
def test_project_l2_is_idempotent_and_bounded(data, shape):
    p = data.draw(gradients(shape), label="p")
    eps = torch.tensor(data.draw(st.lists(EPS32, min_size=shape[0], max_size=shape[0]),
                                 label="eps"), dtype=torch.float32)
    once = project_l2(p, eps)
    twice = project_l2(once, eps)
    assert bool(torch.isfinite(once).all())
    assert _within_eps(once, eps)
    torch.testing.assert_close(twice, once, rtol=1e-5, atol=0.0)
    # rows already inside the ball are left exactly as they are
    inside = _row_norms(p) <= eps.double() * (1 - 1e-5)
    assert torch.equal(once[inside], p[inside])
    # rows outside it land on its surface, in the same direction (rows whose norm overflows
    # float32, above ~1.8e19, are excluded: project_l2 sets those to zero)
    outside = (_row_norms(p) > eps.double() * (1 + 1e-5)) & torch.isfinite(p.flatten(1).norm(dim=1))
    torch.testing.assert_close(_row_norms(once)[outside], eps.double()[outside], rtol=1e-5, atol=0.0)
    assert bool((torch.sign(once[outside]) * torch.sign(p[outside]) >= 0).all())


@FAST
@given(data=st.data(), shape=shapes())
def test_normalize_l2_gives_unit_rows_or_zero_rows(data, shape):
    g = data.draw(gradients(shape), label="g")
    n = normalize_l2(g)
    assert bool(torch.isfinite(n).all())
    norms = _row_norms(n)
    for row in range(shape[0]):
        if bool(g[row].any()):
            assert math.isclose(float(norms[row]), 1.0, rel_tol=1e-5), float(norms[row])
            # same direction: each entry keeps its sign (or becomes 0 when it is negligible)
            assert bool((torch.sign(n[row]) * torch.sign(g[row]) >= 0).all())
        else:
            assert not bool(n[row].any())


# --------------------------------------------------------------------------- robust z


def _mad(v: torch.Tensor) -> float:
    """The smaller of the MAD taken with the lower median and with the middle-two mean, so that
    the filters hold whichever median robust_z uses."""
    lower = (v - v.median()).abs().median()
    mean_of_middle = (v - torch.quantile(v, 0.5)).abs().quantile(0.5)
    return min(float(lower), float(mean_of_middle))


FLOORS = st.sampled_from([1e-12, 1e-3, 0.05, 1.0, 10.0])


@FAST
@given(values=st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=12), shift=st.integers(-10**6, 10**6),
       floor=FLOORS)
def test_robust_z_is_exactly_shift_invariant(values, shift, floor):
    """Integer values and shifts are exact in float64, so the z-scores must match bit for bit,
    whatever the MAD (zero included) and the floor."""
    v = torch.tensor(values, dtype=torch.float64)
    assert torch.equal(robust_z(v + shift, floor), robust_z(v, floor))


@FAST
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=12), shift=st.floats(-1e3, 1e3),
       floor=st.sampled_from([0.05, 1.0]))
def test_robust_z_is_shift_invariant(values, shift, floor):
    v = torch.tensor(values, dtype=torch.float64)
    torch.testing.assert_close(robust_z(v + shift, floor), robust_z(v, floor), rtol=1e-9, atol=1e-9)


@FAST
@given(values=st.lists(st.integers(-10**6, 10**6), min_size=3, max_size=12), power=st.integers(-20, 20),
       shift=st.integers(-10**6, 10**6))
def test_robust_z_is_exactly_invariant_to_power_of_two_scales(values, power, shift):
    v = torch.tensor(values, dtype=torch.float64)
    assume(_mad(v) > 0)
    a = 2.0 ** power
    assert torch.equal(robust_z(a * v + a * shift, 1e-12), robust_z(v, 1e-12))


@FAST
@given(values=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=12), scale=st.floats(1e-3, 1e3),
       shift=st.floats(-1e3, 1e3))
def test_robust_z_is_invariant_to_positive_affine_maps(values, scale, shift):
    """z(a·v + b) = z(v) for a > 0 once 1.4826·MAD is above the floor (here 1e-12)."""
    v = torch.tensor(values, dtype=torch.float64)
    assume(_mad(v) >= 1e-3)
    z = robust_z(v, 1e-12)
    assert bool(torch.isfinite(z).all())
    torch.testing.assert_close(robust_z(scale * v + shift, 1e-12), z, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- attack specs


def _spec_class(name: str) -> type:
    try:
        return type(get_attack(name, target=0))
    except SmoothInvError:  # label-specific attacks need source classes
        return type(get_attack(name, target=0, source_classes=(1,)))


def _needs_sources(name: str) -> bool:
    try:
        get_attack(name, target=0, source_classes=None)
    except SmoothInvError:
        return True
    return False


SOURCES = st.lists(st.integers(0, 1000), min_size=1, max_size=5).map(tuple)


def _field_strategy(name: str, f: dataclasses.Field) -> st.SearchStrategy:
    if f.name == "target":
        return st.integers(0, 2**31)
    if f.name == "seed":
        return st.integers(-2**63, 2**64)
    if f.name == "source_classes":
        return SOURCES if _needs_sources(name) else st.none() | SOURCES
    if f.name == "alpha":
        return st.floats(0.0, 1.0) | st.sampled_from([0, 1])
    default = f.default if f.default is not dataclasses.MISSING else None
    kind = type(default)
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.integers(0, 100)
    if kind is float:
        return st.floats(0.0, 1.0)
    return st.just(default)


@st.composite
def specs(draw, name: str):
    cls = _spec_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    params = {key: draw(_field_strategy(name, f), label=key) for key, f in fields.items()}
    try:
        return get_attack(name, **params)
    except SmoothInvError:
        assume(False)


def test_every_attack_spec_has_a_target_and_a_seed():
    assert list_attacks()
    for name in list_attacks():
        fields = {f.name for f in dataclasses.fields(_spec_class(name))}
        assert {"target", "seed", "source_classes"} <= fields, (name, fields)


@pytest.mark.parametrize("name", sorted(list_attacks()))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_attack_spec_dict_and_json_round_trip(name, data):
    spec = data.draw(specs(name), label="spec")
    d = spec.to_dict()
    assert d["attack"] == name
    assert attack_from_dict(d) == spec
    assert attack_from_dict(dict(d)).to_dict() == d
    text = json.dumps(d)
    back = json.loads(text)
    assert back == d  # JSON-ready: no tuples, no non-finite floats, nothing json turns into something else
    rebuilt = attack_from_dict(back)
    assert rebuilt == spec and hash(rebuilt) == hash(spec)
    assert json.dumps(rebuilt.to_dict()) == text


@pytest.mark.parametrize("name", sorted(list_attacks()))
@settings(max_examples=5, deadline=None)
@given(target=st.integers(0, 9), seed=st.integers(0, 2**40))
def test_round_tripped_spec_builds_the_same_trigger(name, target, seed):
    params: dict[str, typing.Any] = {"target": target, "seed": seed}
    if _needs_sources(name):
        params["source_classes"] = ((target + 1) % 10,)
    spec = get_attack(name, **params)
    rebuilt = attack_from_dict(json.loads(json.dumps(spec.to_dict())))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    try:
        expected = spec.trigger((3, 32, 32)).apply(x)
    except SmoothInvError:
        with pytest.raises(SmoothInvError):
            rebuilt.trigger((3, 32, 32))
        return
    assert torch.equal(rebuilt.trigger((3, 32, 32)).apply(x), expected)
