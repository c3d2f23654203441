"""Inversion methods: SmoothInv, its aliases and the PlainAdv ablation, on tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from smoothinv.engine.pgd import PGDSettings
from smoothinv.engine.smoothing import SmoothedClassifier
from smoothinv.errors import SmoothInvError
from smoothinv.methods import InversionResult, PlainAdv, SmoothInv, get_method, list_methods
from smoothinv.methods.base import check_target
from smoothinv.methods.registry import method_options, method_spec
from smoothinv.triggers import AdditiveTrigger

def small(name="smoothinv", **kw):
    opts = {"eps": 1.5, "steps": 12, "step_fraction": 0.15}
    if name != "plainadv":
        opts.update(sigma=0.25, noise_samples=4)
    opts.update(kw)
    return get_method(name, **opts)


# --------------------------------------------------------------------------- determinism


def test_smoothinv_same_seed_bit_identical_other_seed_differs(trained, image):
    model, _, _ = trained
    method = small()
    a = method.invert(model, image, 1, seed=5)
    b = method.invert(model, image, 1, seed=5)
    c = method.invert(model, image, 1, seed=6)
    assert torch.equal(a.synthesized, b.synthesized)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.target_prob, b.target_prob)
    assert not torch.equal(a.synthesized, c.synthesized)
    assert not torch.equal(a.loss, c.loss)


def test_invert_does_not_touch_global_rng(trained, image):
    model, _, _ = trained
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    small().invert(model, image, 2, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_plainadv_is_deterministic_and_uses_no_noise(trained, image):
    model, _, _ = trained
    method = small("plainadv")
    a = method.invert(model, image, 1, seed=0)
    b = method.invert(model, image, 1, seed=999)
    assert torch.equal(a.synthesized, b.synthesized)
    assert torch.equal(a.loss, b.loss)
    # its loss is the base classifier's cross-entropy at the start and at the end
    with torch.no_grad():
        first = -torch.log_softmax(model(image[None]), 1)[0, 1]
        last = -torch.log_softmax(model(a.synthesized[None]), 1)[0, 1]
    torch.testing.assert_close(a.loss[0], first, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.loss[-1], last, rtol=1e-4, atol=1e-5)
    assert a.config["sigma"] == 0.0 and a.config["noise_samples"] == 1
    assert "denoiser" not in a.config
    # smoothinv with sigma=0 descends the same deterministic objective
    z = small("smoothinv", sigma=0.0).invert(model, image, 1, seed=3)
    torch.testing.assert_close(z.synthesized, a.synthesized, rtol=0, atol=1e-6)
    torch.testing.assert_close(z.loss, a.loss, rtol=1e-5, atol=1e-6)
    assert z.config["noise_samples"] == 1


def test_options_each_method_takes():
    assert set(method_options("plainadv")) == {"eps", "steps", "step_fraction", "optimizer", "max_batch"}
    assert {"sigma", "noise_samples"} <= set(method_options("smoothinv"))
    m = get_method("plainadv", eps=1.0, steps=3)
    assert isinstance(m, PlainAdv)
    assert m.config.sigma == 0.0 and m.config.noise_samples == 1
    with pytest.raises(SmoothInvError, match="no option 'sigma'"):
        get_method("plainadv", eps=1.0, sigma=0.5)  # no silent ignoring
    assert get_method("momentum", eps=1.0).config.optimizer == "momentum"


@pytest.mark.parametrize("name", ["smoothinv", "plainadv", "nc", "pixelinv", "topoprior"])
def test_misspelled_option_is_an_error(name):
    """Defect 3: a misspelled option used to be dropped silently."""
    with pytest.raises(SmoothInvError, match="no option 'noise_sample'"):
        get_method(name, noise_sample=4)
    with pytest.raises(SmoothInvError, match="no option 'stpes'"):
        method_spec(name).with_options(stpes=3)


def test_smoothinv_loss_is_smoothed_loss_at_start(trained, image):
    """The first recorded loss is −log G(x)_y on the first noise draw of the seeded generator."""
    model, _, _ = trained
    r = small(noise_samples=6).invert(model, image, 2, seed=4)
    sc = SmoothedClassifier(model, 6)
    loss, prob, _ = sc.loss_and_grad(image[None], torch.tensor([2]), 0.25, [torch.Generator().manual_seed(4)])
    torch.testing.assert_close(r.loss[0], loss[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(r.target_prob[0], prob[0], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize("name", ["smoothinv", "pgd", "momentum", "plainadv"])
def test_result_shapes_bounds_and_progress(trained, image, name):
    model, _, _ = trained
    steps = 12
    method = small(name, steps=steps)
    r = method.invert(model, image, 1, seed=0)
    assert isinstance(r, InversionResult)
    assert r.method == {"pgd": "smoothinv"}.get(name, name)  # the name chosen; an alias gives its method's
    assert r.target == 1
    assert r.image.shape == r.synthesized.shape == r.perturbation.shape == (3, 8, 8)
    assert torch.equal(r.image, image)
    assert r.loss.shape == r.target_prob.shape == (steps + 1,)
    assert float(r.synthesized.min()) >= 0.0 and float(r.synthesized.max()) <= 1.0
    assert float(r.perturbation.norm()) <= 1.5 * (1 + 1e-5)
    assert isinstance(r.trigger, AdditiveTrigger)
    assert torch.equal(r.trigger.apply(image[None])[0], r.synthesized)
    assert bool(((r.target_prob >= 0) & (r.target_prob <= 1)).all())
    torch.testing.assert_close(r.target_prob, torch.exp(-r.loss), rtol=1e-5, atol=1e-7)
    assert r.seconds >= 0
    assert method.total_steps() == steps


def test_target_probability_increases(trained, image):
    model, _, _ = trained
    for name in ("smoothinv", "plainadv", "momentum"):
        r = small(name, steps=20, eps=5.0).invert(model, image, 2, seed=1)
        assert float(r.target_prob[0]) < 1e-3, name  # starts confidently not the target
        assert float(r.target_prob[-1]) > 0.5, name
        assert float(r.loss[-1]) < float(r.loss[0]) - 5, name


def test_invert_batch_one_result_per_row(trained):
    model, images, labels = trained
    batch = images[[0, 50, 100]]
    targets = torch.tensor([1, 2, 0])
    results = small(eps=0.8).invert_batch(model, batch, targets, seed=0)
    assert [r.target for r in results] == [1, 2, 0]
    for b, r in enumerate(results):
        assert torch.equal(r.image, batch[b])
        assert r.loss.shape == (13,)
        assert float(r.perturbation.norm()) <= 0.8 * (1 + 1e-5)


def test_plainadv_batch_rows_independent(trained):
    model, images, _ = trained
    batch = images[[0, 50]]
    method = small("plainadv")
    together = method.invert_batch(model, batch, torch.tensor([1, 2]), seed=0)
    alone = [method.invert(model, batch[0], 1), method.invert(model, batch[1], 2)]
    for t, a in zip(together, alone):
        torch.testing.assert_close(t.synthesized, a.synthesized, rtol=0, atol=1e-5)


def test_callback_called_every_step(trained, image):
    model, _, _ = trained
    calls = []
    r = small(steps=7).invert(model, image, 1, seed=0, callback=lambda s, l, p: calls.append((s, float(l[0]))))
    assert [s for s, _ in calls] == list(range(7))
    assert [l for _, l in calls] == pytest.approx(r.loss[:7].tolist())


def test_summary_is_json_serialisable(trained, image):
    model, _, _ = trained
    r = small(steps=4).invert(model, image, 1, seed=0)
    s = json.loads(json.dumps(r.summary()))
    assert s["method"] == "smoothinv" and s["target"] == 1
    assert s["perturbation_l2"] == pytest.approx(float(r.perturbation.norm()), rel=1e-6)
    assert s["perturbation_linf"] == pytest.approx(float(r.perturbation.abs().max()), rel=1e-6)
    assert len(s["loss_curve"]) == len(s["target_prob_curve"]) == 5
    assert s["final_loss"] == pytest.approx(float(r.loss[-1]))
    assert s["config"]["eps"] == 1.5 and s["config"]["sigma"] == 0.25
    assert s["config"]["step_size"] == pytest.approx(0.15 * 1.5)
    assert s["config"]["steps"] == 4 and s["config"]["optimizer"] == "pgd"
    assert s["config"]["denoiser"] is None
    json.dumps(small("plainadv", steps=2).invert(model, image, 1).summary())


def test_denoiser_is_applied_and_named(trained, image):
    model, _, _ = trained
    seen = []

    class Halve:
        name = "halve"

        def __call__(self, noisy, sigma):
            seen.append(sigma.clone())
            return noisy * 0.5

    r = SmoothInv(small(steps=2).config, denoiser=Halve()).invert(model, image, 1, seed=0)
    assert seen and all(torch.all(s == 0.25) for s in seen)
    assert r.config["denoiser"] == "halve"
    json.dumps(r.summary())
    # the denoiser really changes the objective
    plain = small(steps=2).invert(model, image, 1, seed=0)
    assert not torch.equal(r.loss, plain.loss)


def test_max_batch_only_bounds_memory(trained, image):
    """A row draws its N noise copies at once from its own generator, so a small max_batch
    (chunks splitting a row's copies) gives the same descent."""
    model, _, _ = trained
    a = small(max_batch=3).invert(model, image, 1, seed=2)
    b = small(max_batch=1000).invert(model, image, 1, seed=2)
    torch.testing.assert_close(a.synthesized, b.synthesized, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- registry / validation


def test_get_method_registry():
    s = get_method("smoothinv", eps=2.0, sigma=0.5)
    assert type(s) is SmoothInv and s.config.optimizer == "pgd" and s.config.eps == 2.0 and s.config.sigma == 0.5
    p = get_method("pgd", eps=2.0)  # a hidden alias: the method is still called smoothinv
    assert type(p) is SmoothInv and p.config.optimizer == "pgd" and p.name == "smoothinv"
    m = get_method("momentum", eps=2.0, steps=7, optimizer="pgd")
    assert type(m) is SmoothInv and m.config.optimizer == "momentum" and m.config.steps == 7
    pa = get_method("plainadv", eps=2.0)
    assert type(pa) is PlainAdv and pa.name == "plainadv" and pa.grid_axes == ("eps",)
    assert {"smoothinv", "momentum", "plainadv"} <= set(list_methods()) and "pgd" not in list_methods()


def test_get_method_unknown_lists_names():
    with pytest.raises(SmoothInvError) as info:
        get_method("neural_cleanse_v9", eps=1.0)
    msg = str(info.value)
    assert "neural_cleanse_v9" in msg
    for name in ("smoothinv", "momentum", "plainadv", "nc"):
        assert name in msg


@pytest.mark.parametrize(
    "kwargs", [{"eps": 0.0}, {"eps": -1.0}, {"eps": 1.0, "sigma": -0.1}, {"eps": 1.0, "noise_samples": 0},
               {"eps": 1.0, "steps": 0}, {"eps": 1.0, "step_fraction": 0.0}, {"eps": 1.0, "optimizer": "adam"},
               {"eps": float("nan")}, {"eps": 1.0, "steps": 2.5}, {"eps": 1.0, "noise_samples": True}]
)
def test_constructor_validation(kwargs):
    with pytest.raises(SmoothInvError):
        SmoothInv(**kwargs)


def test_check_target():
    check_target(torch.tensor([0, 4, 2]), 5)
    with pytest.raises(SmoothInvError, match="target class 5"):
        check_target(torch.tensor([1, 5]), 5)
    with pytest.raises(SmoothInvError, match="target class -1"):
        check_target(torch.tensor([-1]), 5)
    with pytest.raises(SmoothInvError, match="0..9"):
        check_target(torch.tensor([10]), 10)


@pytest.mark.parametrize("target", [3, -1])
def test_invert_rejects_target_outside_model_classes(trained, image, target):
    model, _, _ = trained
    with pytest.raises(SmoothInvError):
        small(steps=1).invert(model, image, target, seed=0)


@pytest.mark.parametrize("name", ["smoothinv", "plainadv"])
@pytest.mark.parametrize("bad", ["above", "below", "nan"])
def test_images_outside_unit_range_raise(trained, image, name, bad):
    model, _, _ = trained
    x = image.clone()
    x[0, 0, 0] = {"above": 1.01, "below": -0.01, "nan": float("nan")}[bad]
    with pytest.raises(SmoothInvError, match=r"\[0,1\]"):
        small(name, steps=1).invert(model, x, 1)


def test_invert_requires_single_chw_image(trained, image):
    model, _, _ = trained
    with pytest.raises(SmoothInvError):
        small(steps=1).invert(model, image[None], 1)
    with pytest.raises(SmoothInvError):
        small(steps=1).invert_batch(model, image, torch.tensor([1]))


def test_settings_are_forwarded():
    m = SmoothInv(eps=2.0, steps=9, step_fraction=0.2, optimizer="momentum")
    assert m.config.descent() == PGDSettings(steps=9, step_fraction=0.2, optimizer="momentum")
    assert m.describe()["step_size"] == pytest.approx(0.4)
    assert m.describe()["noise_samples"] == 10
    assert SmoothInv(eps=1.0, sigma=0.0, noise_samples=10).describe()["noise_samples"] == 1
    assert math.isclose(get_method("plainadv", eps=3.0, step_fraction=0.1).describe()["step_size"], 0.3)


def test_unset_eps_is_the_paper_eps_scaled_to_the_input(trained, image):
    model, _, _ = trained
    r = get_method("smoothinv", steps=2, noise_samples=2).invert(model, image, 1)
    assert r.config["eps"] == pytest.approx(round(5.0 * math.sqrt(3 * 8 * 8 / (3 * 224 * 224)), 4))
    assert float(r.perturbation.norm()) <= r.config["eps"] * (1 + 1e-5)


def test_config_is_frozen_typed_and_json_ready():
    m = get_method("smoothinv", eps=1.0)
    with pytest.raises(Exception):
        m.config.eps = 2.0  # type: ignore[misc]
    assert json.loads(json.dumps(m.config.to_dict())) == m.config.to_dict()
    assert method_spec("momentum").config.optimizer == "momentum"
    assert method_spec("momentum").with_options(optimizer="pgd").config.optimizer == "momentum"  # fixed by the name
