"""Baselines: Neural Cleanse ("nc") and PixelInv ("pixelinv") on a tiny trained model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from smoothinv.errors import SmoothInvError
from smoothinv.detection.decision import robust_z, small_outliers
from smoothinv.methods.registry import get_method, list_methods, method_class, method_options
from smoothinv.methods.adaptive import AdaptiveCost
from smoothinv.methods.neural_cleanse import NeuralCleanse
from smoothinv.methods.pixelinv import PRUNE_THRESHOLD, PixelInv
from smoothinv.triggers import AdditiveTrigger, MaskedTrigger

STEPS = 100


@pytest.fixture(scope="module")
def nc_result(trained, image):
    return NeuralCleanse(steps=STEPS).invert(trained[0], image, 1, seed=0)


@pytest.fixture(scope="module")
def pixel_result(trained, image):
    return PixelInv(steps=STEPS, bound=0.7).invert(trained[0], image, 1, seed=0)


def methods(steps=20):
    return [NeuralCleanse(steps=steps), PixelInv(steps=steps, bound=0.7)]


# --------------------------------------------------------------------------- registry and config


def test_registry_names_resolve():
    assert isinstance(get_method("nc"), NeuralCleanse)
    assert isinstance(get_method("pixelinv", steps=7), PixelInv)
    assert method_class("nc") is NeuralCleanse and method_class("pixelinv") is PixelInv
    assert {"nc", "pixelinv"} <= set(list_methods())
    assert "noise_samples" not in method_options("nc") and "bound" in method_options("pixelinv")
    with pytest.raises(SmoothInvError, match="no option 'eps'"):
        get_method("nc", eps=1.0)


def test_defaults_config_and_total_steps():
    nc, px = NeuralCleanse(), PixelInv()
    assert nc.grid_axes == () and px.grid_axes == ()
    c = json.loads(json.dumps(nc.describe()))
    assert c["steps"] == 500 and c["lr"] == 0.1 and c["betas"] == [0.5, 0.9] and c["init_cost"] == 1e-3
    assert c["patience"] == 10 and c["cost_multiplier_up"] == 1.5
    assert c["cost_multiplier_down"] == pytest.approx(1.5**1.5) and c["reset_cost_to_zero"] is True
    p = json.loads(json.dumps(px.describe()))
    assert p["steps"] == 500 and p["lr"] == 0.1 and p["bound"] == 1.0 and p["init_cost"] == 1e-3
    assert p["prune_threshold"] == pytest.approx(1 / 255)
    assert nc.total_steps() == 500 and px.total_steps() == 500
    assert NeuralCleanse(steps=7).total_steps() == 7 and PixelInv(steps=9).total_steps() == 9


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (NeuralCleanse, {"steps": 0}),
        (NeuralCleanse, {"steps": 2.5}),
        (NeuralCleanse, {"lr": 0}),
        (NeuralCleanse, {"lr": float("nan")}),
        (NeuralCleanse, {"init_cost": -1e-3}),
        (NeuralCleanse, {"patience": 0}),
        (NeuralCleanse, {"cost_multiplier": 1.0}),
        (NeuralCleanse, {"reset_cost_to_zero": "yes"}),
        (PixelInv, {"steps": -1}),
        (PixelInv, {"lr": "fast"}),
        (PixelInv, {"bound": 0}),
        (PixelInv, {"bound": 1.5}),
        (PixelInv, {"bound": float("inf")}),
        (PixelInv, {"init_cost": 0}),
        (PixelInv, {"cost_multiplier": 0.5}),
    ],
)
def test_bad_hyper_parameters_raise(cls, kwargs):
    with pytest.raises(SmoothInvError):
        cls(**kwargs)


# --------------------------------------------------------------------------- Neural Cleanse


def test_nc_optimises_and_respects_constraints(nc_result, image, trained):
    r = nc_result
    assert r.method == "nc" and r.target == 1 and torch.equal(r.image, image)
    assert r.loss.shape == r.target_prob.shape == (STEPS + 1,)
    assert r.loss[-1] < r.loss[0]
    assert r.target_prob[-1] > r.target_prob[0] and r.target_prob[-1] > 0.5
    mask, pattern = r.extras["mask"], r.extras["pattern"]
    assert mask.shape == (1, 8, 8) and pattern.shape == (3, 8, 8)
    assert 0 <= mask.min() and mask.max() <= 1 and 0 <= pattern.min() and pattern.max() <= 1
    assert 0 <= r.synthesized.min() and r.synthesized.max() <= 1
    assert r.extras["mask_l1"] == pytest.approx(float(mask.sum()), rel=1e-5)
    assert r.extras["succeeded"] and 0 <= r.extras["best_step"] < STEPS
    # the returned trigger is the best (smallest successful) mask seen, and it works
    l1 = r.extras["mask_l1_curve"]
    assert r.extras["mask_l1"] == pytest.approx(float(l1[r.extras["best_step"]]), rel=1e-5)
    with torch.no_grad():
        assert int(trained[0](r.synthesized[None]).argmax(1)) == 1
    # λ is 0 until the attack first succeeds, then starts at init_cost
    cost = r.extras["cost_curve"][:-1]
    assert float(cost[0]) == 0.0
    assert float(cost[cost > 0][0]) == pytest.approx(1e-3)


def test_nc_trigger_stamps_other_images(nc_result, trained, image):
    _, images, labels = trained
    r = nc_result
    assert isinstance(r.trigger, MaskedTrigger)
    m, p = r.extras["mask"], r.extras["pattern"]
    others = images[labels == 2][:5]
    torch.testing.assert_close(r.trigger.apply(others), ((1 - m) * others + m * p).clamp(0, 1))
    torch.testing.assert_close(r.synthesized, (1 - m) * image + m * p)


# --------------------------------------------------------------------------- PixelInv


def test_pixelinv_optimises_and_respects_bound(pixel_result, image, trained):
    r = pixel_result
    assert r.method == "pixelinv" and r.target == 1 and torch.equal(r.image, image)
    assert r.loss.shape == r.target_prob.shape == (STEPS + 1,)
    assert r.loss[-1] < r.loss[0]
    assert r.extras["ce_curve"][-1] < r.extras["ce_curve"][0]
    assert r.target_prob[-1] > r.target_prob[0] and r.target_prob[-1] > 0.5
    delta = r.extras["delta"]
    assert delta.shape == (3, 8, 8)
    assert float(delta.abs().max()) <= 0.7 + 1e-6
    assert 0 <= r.synthesized.min() and r.synthesized.max() <= 1
    assert r.extras["succeeded"]
    # pruned: every positive/negative change kept is at least 1/255
    nonzero = delta[delta != 0].abs()
    assert nonzero.numel() == 0 or float(nonzero.min()) >= PRUNE_THRESHOLD - 1e-6
    assert r.extras["pixel_count"] == int((delta.abs().sum(0) > 0).sum())
    with torch.no_grad():
        assert int(trained[0](r.synthesized[None]).argmax(1)) == 1


def test_pixelinv_trigger_stamps_other_images(pixel_result, trained, image):
    _, images, labels = trained
    r = pixel_result
    assert isinstance(r.trigger, AdditiveTrigger)
    delta = r.extras["delta"]
    others = images[labels == 2][:5]
    torch.testing.assert_close(r.trigger.apply(others), (others + delta).clamp(0, 1))
    torch.testing.assert_close(r.synthesized, (image + delta).clamp(0, 1))
    torch.testing.assert_close(r.perturbation, r.synthesized - image)


# --------------------------------------------------------------------------- shared contract


@pytest.mark.parametrize("index", [0, 1], ids=["nc", "pixelinv"])
def test_same_seed_identical_and_global_rng_untouched(trained, image, index):
    model = trained[0]
    method = methods()[index]
    state = torch.get_rng_state()
    a = method.invert(model, image, 1, seed=3)
    b = method.invert(model, image, 1, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.target_prob, b.target_prob)
    assert torch.equal(a.synthesized, b.synthesized)
    c = method.invert(model, image, 1, seed=4)
    assert not torch.equal(a.loss, c.loss)


@pytest.mark.parametrize("index", [0, 1], ids=["nc", "pixelinv"])
def test_callback_every_step_with_pre_update_loss(trained, image, index):
    calls = []
    method = methods(steps=7)[index]
    def record(step, loss, prob):
        calls.append((step, float(loss[0]), float(prob[0])))

    r = method.invert(trained[0], image, 1, seed=0, callback=record)
    assert [s for s, _, _ in calls] == list(range(7))
    assert [l for _, l, _ in calls] == pytest.approx(r.loss[:7].tolist())
    assert [p for _, _, p in calls] == pytest.approx(r.target_prob[:7].tolist())


@pytest.mark.parametrize("index", [0, 1], ids=["nc", "pixelinv"])
def test_batch_rows_independent(trained, index):
    model, images, _ = trained
    method = methods()[index]
    batch = images[[0, 50]]
    together = method.invert_batch(model, batch, torch.tensor([1, 2]), seed=0)
    assert [r.target for r in together] == [1, 2]
    alone = [method.invert(model, batch[0], 1, seed=0), method.invert(model, batch[1], 2, seed=0)]
    for t, a in zip(together, alone):
        assert t.loss.shape == (21,)
        torch.testing.assert_close(t.synthesized, a.synthesized, rtol=0, atol=1e-4)


@pytest.mark.parametrize("index", [0, 1], ids=["nc", "pixelinv"])
def test_bad_targets_and_images_raise(trained, image, index):
    model = trained[0]
    method = methods(steps=2)[index]
    for target in (3, -1):
        with pytest.raises(SmoothInvError, match="does not exist"):
            method.invert(model, image, target)
    with pytest.raises(SmoothInvError, match=r"\[B,C,H,W\]"):
        method.invert_batch(model, image, torch.tensor([1]))
    with pytest.raises(SmoothInvError, match=r"\[0,1\]"):
        method.invert(model, image * 2, 1)
    with pytest.raises(SmoothInvError, match="one target per image"):
        method.invert_batch(model, image[None], torch.tensor([1, 2]))


def test_summary_json_serialisable(nc_result, pixel_result):
    for r, name in ((nc_result, "nc"), (pixel_result, "pixelinv")):
        s = json.loads(json.dumps(r.summary()))
        assert s["method"] == name and s["target"] == 1 and s["config"]["steps"] == STEPS
        assert len(s["loss_curve"]) == len(s["target_prob_curve"]) == STEPS + 1
        assert s["final_target_prob"] == pytest.approx(float(r.target_prob[-1]))


# --------------------------------------------------------------------------- λ schedule and MAD


def test_adaptive_cost_schedule_follows_reference_rules():
    T, F = torch.tensor([True]), torch.tensor([False])
    nc = AdaptiveCost(1, 1e-3, 2, 1.5, 1.5**1.5, start_at_zero=True, device=torch.device("cpu"))
    seen = []
    for s in [F, T, T, T, T, F, F, T]:
        nc.update(s)
        seen.append(float(nc.cost))
    # 0 until 2 consecutive successes, then init (that step already counts towards the next
    # raise, as in the reference); 2 successes ×1.5; 2 failures ÷1.5^1.5
    d = 1.5**1.5
    assert seen == pytest.approx([0, 0, 1e-3, 1.5e-3, 1.5e-3, 1.5e-3, 1.5e-3 / d, 1.5e-3 / d])
    px = AdaptiveCost(1, 1e-3, 2, 1.5, 1.5**1.5, start_at_zero=False, device=torch.device("cpu"))
    seen = []
    for s in [T, T, F, F]:
        px.update(s)
        seen.append(float(px.cost))
    assert seen == pytest.approx([1e-3, 1.5e-3, 1.5e-3, 1.5e-3 / 1.5**1.5])


def mad_anomaly_index(values):
    return small_outliers(values).index.tolist()


def nc_flagged(values):
    return small_outliers(values).flagged


def test_mad_anomaly_index_by_hand():
    # median 9.5; |v − median| = 1.5 0.5 2.5 0.5 1.5 7.5 → median 1.5; MAD = 1.4826·1.5
    values = [8, 10, 12, 9, 11, 2]
    mad = 1.4826 * 1.5
    assert mad_anomaly_index(values) == pytest.approx([d / mad for d in (1.5, 0.5, 2.5, 0.5, 1.5, 7.5)])
    assert nc_flagged(values) == [5]
    # a zero MAD: the lone small value has an infinite index and is flagged
    assert mad_anomaly_index([10, 10, 10, 10, 1]) == [0, 0, 0, 0, math.inf]
    assert nc_flagged([10, 10, 10, 10, 1]) == [4]
    # large outliers (above the median) are never flagged; several small ones come smallest first
    assert nc_flagged([2, 2.1, 1.9, 2, 30]) == []
    assert nc_flagged([10, 10.5, 9.5, 10, 1, 0.5, 10.2, 9.8, 10.1]) == [5, 4]
    assert nc_flagged([5.0]) == []
    with pytest.raises(SmoothInvError):
        mad_anomaly_index([])
    with pytest.raises(SmoothInvError):
        mad_anomaly_index([1.0, float("nan")])
    # the scan's transfer z-score is the same statistic, signed, with a floor on the scale
    assert robust_z(torch.tensor([8.0, 10, 12, 9, 11, 2])).abs().tolist() == pytest.approx(mad_anomaly_index(values))
