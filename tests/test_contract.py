"""The contract every registered method honours (methods.base.Inverter), tested on each of them.

Batch independence (defect 1: a row's result depended on which rows shared its batch),
eval mode restored, the [0,1] and ‖p‖ ≤ ε constraints, determinism by seed, per-row
configurations, and stopped rows that do not move whatever the optimizer (defect 2)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from smoothinv.engine.early_stop import RowStopper
from smoothinv.engine.pgd import PGDSettings, descend
from smoothinv.errors import SmoothInvError
from smoothinv.methods import RowControl, get_method, list_methods, method_spec

STEPS = 6
SMALL = {"steps": STEPS}
EXTRA = {"smoothinv": {"noise_samples": 3, "eps": 1.0}, "momentum": {"noise_samples": 3, "eps": 1.0},
         "plainadv": {"eps": 1.0}, "topoprior": {"num_triggers": 2}}
METHODS = sorted(list_methods())


def method(name: str, **options):
    return get_method(name, **{**SMALL, **EXTRA.get(name, {}), **options})


class Recorder(nn.Module):
    """A small CNN with BatchNorm and Dropout (both behave differently in train mode) that
    records the mode of every forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                                 nn.Flatten(), nn.Linear(6 * 8 * 8, 3))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(x)


@pytest.fixture(scope="module")
def batch(trained):
    model, images, labels = trained
    return model, images[[0, 45, 90, 5]], torch.tensor([1, 2, 0, 2])


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", METHODS)
def test_a_row_is_the_same_alone_and_in_any_batch(name, batch):
    """Defect 1: each row draws from its own generator, seeded by the run's seed."""
    model, images, targets = batch
    m = method(name)
    together = m.invert_batch(model, images, targets, seed=3)
    reordered = m.invert_batch(model, images.flip(0), targets.flip(0), seed=3)[::-1]
    for i in range(len(images)):
        alone = m.invert(model, images[i], int(targets[i]), seed=3)
        for other in (together[i], reordered[i]):
            assert close(other.synthesized, alone.synthesized), (name, i)
            assert close(other.loss, alone.loss) and close(other.target_prob, alone.target_prob), (name, i)


@pytest.mark.parametrize("name", METHODS)
def test_same_seed_same_result(name, batch):
    model, images, targets = batch
    m = method(name)
    a, b = m.invert_batch(model, images[:2], targets[:2], seed=5), m.invert_batch(model, images[:2], targets[:2], seed=5)
    assert all(torch.equal(x.synthesized, y.synthesized) and torch.equal(x.loss, y.loss) for x, y in zip(a, b))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_during_the_run_and_the_mode_restored(name, training, image):
    model = Recorder().train(training)
    method(name).invert(model, image, 1, seed=0)
    assert model.modes and not any(model.modes)  # every forward pass in eval mode
    assert model.training == training and all(m.training == training for m in model.modules())


@pytest.mark.parametrize("name", METHODS)
def test_results_respect_the_constraints(name, batch):
    model, images, targets = batch
    m = method(name)
    for r, x, t in zip(m.invert_batch(model, images, targets, seed=0), images, targets):
        assert r.target == int(t) and torch.equal(r.image, x) and r.method == name
        assert float(r.synthesized.min()) >= 0 and float(r.synthesized.max()) <= 1
        assert r.loss.shape == r.target_prob.shape == (STEPS + 1,)
        assert bool(((r.target_prob >= 0) & (r.target_prob <= 1)).all())
        if "eps" in r.config:
            assert float(r.perturbation.norm()) <= r.config["eps"] * (1 + 1e-5)
        json.dumps(r.summary())  # the resolved configuration is JSON-ready


@pytest.mark.parametrize("name", METHODS)
def test_rows_with_their_own_configurations(name, batch):
    """invert_rows: row b at configs[b] equals that configuration run on its own."""
    model, images, targets = batch
    spec = method_spec(name, **{**SMALL, **EXTRA.get(name, {})})
    axis = {"eps": 0.5} if "eps" in spec.build().grid_axes else {"steps": STEPS - 2}
    configs = [spec.config, spec.with_options(**axis).config, spec.config]
    outcome = spec.build().invert_rows(model, images[:3], targets[:3], configs, seed=1)
    assert not outcome.timed_out and all(r is not None for r in outcome.results)
    for i, config in enumerate(configs):
        alone = get_method(name, **config.to_dict()).invert(model, images[i], int(targets[i]), seed=1)
        assert close(outcome.results[i].synthesized, alone.synthesized), (name, i)
        assert outcome.results[i].config == alone.config


@pytest.mark.parametrize("name", METHODS)
def test_a_passed_deadline_runs_nothing(name, batch):
    model, images, targets = batch
    outcome = method(name).invert_rows(model, images, targets, seed=0, control=RowControl(deadline=0.0))
    assert outcome.timed_out and outcome.results == [None] * len(images)


@pytest.mark.parametrize("name", METHODS)
def test_bad_inputs_raise(name, batch):
    model, images, targets = batch
    m = method(name)
    with pytest.raises(SmoothInvError):
        m.invert_batch(model, images, targets[:2])
    with pytest.raises(SmoothInvError):
        m.invert_batch(model, images, targets.float())
    with pytest.raises(SmoothInvError):
        m.invert_rows(model, images, targets, [m.config])  # one configuration for four rows
    with pytest.raises(SmoothInvError):
        m.invert(model, images[0], 7)  # the model has 3 classes


# --------------------------------------------------------------------------- stopped rows (defect 2)


@pytest.mark.parametrize("optimizer", ["pgd", "momentum"])
def test_a_stopped_row_does_not_move(optimizer):
    """Row 0 saturates at step 3; the gradient turns every step, so momentum would carry a
    stopped row round the ε-sphere (defect 2: ‖p‖ went from 0.66 to ε while its loss stayed frozen)."""
    torch.manual_seed(0)
    x = torch.full((2, 1, 6, 6), 0.5)
    eps = torch.tensor([2.0, 2.0])
    directions = torch.randn(40, 1, 1, 6, 6)
    calls = {"n": 0}
    last_seen: dict[int, torch.Tensor] = {}

    def rows_fn(x_rows: torch.Tensor, rows: torch.Tensor):
        step = calls["n"]
        calls["n"] += 1
        for j, r in enumerate(rows.tolist()):
            last_seen[r] = x_rows[j].clone()
        prob = torch.where(rows == 0, torch.tensor(1.0 if step >= 3 else 0.1), torch.tensor(0.1))
        return -torch.log(prob), prob, directions[step].expand_as(x_rows).clone()

    stopper = RowStopper(stop_prob=0.9)
    settings = PGDSettings(steps=20, step_fraction=0.2, optimizer=optimizer)
    trace = descend(stopper.wrap(rows_fn), x, eps, settings, parts={"stopper": stopper}, active=stopper.active_rows)
    assert not bool(stopper.active[0]) and bool(stopper.active[1])
    stopped_at = last_seen[0] - x[0]
    assert torch.equal(trace.perturbation[0], stopped_at)  # not one step further
    assert float(trace.loss[-1, 0]) == float(trace.loss[4, 0])  # its reported loss is that of where it stays
    assert not torch.equal(trace.perturbation[1], torch.zeros_like(x[1]))  # the other row kept going


def test_smoothinv_momentum_rows_stop_in_place(trained):
    """Through the method: a row that RowControl.stop_prob stops after k updates keeps the
    perturbation of k updates, under momentum too (the run of exactly k steps ends there)."""
    model, images, _ = trained
    options = {"eps": 5.0, "noise_samples": 2, "step_fraction": 0.2}
    m = get_method("momentum", steps=40, **options)
    outcome = m.invert_rows(model, images[[0, 45]], torch.tensor([1, 2]), seed=0, control=RowControl(stop_prob=0.5))
    stopped = 0
    for i, r in enumerate(outcome.results):
        k = int((r.loss == r.loss[-1]).nonzero()[0])  # from here on its loss is frozen: it stopped at p_k
        if k == 40:
            continue
        stopped += 1
        assert float(r.target_prob[k]) >= 0.5
        exactly_k = get_method("momentum", steps=k, **options).invert(model, r.image, r.target, seed=0)
        assert close(r.perturbation, exactly_k.perturbation), i
    assert stopped == 2  # both rows stop (at eps 5 both targets saturate)
