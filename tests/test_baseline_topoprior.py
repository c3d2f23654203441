"""TopoPrior baseline (Hu et al., ICLR 2022): persistence, topological loss, and the method
on a tiny trained model."""

from __future__ import annotations

import json

import pytest
import torch

from smoothinv.errors import SmoothInvError
from smoothinv.methods.registry import get_method, list_methods, method_options
from smoothinv.methods.topoprior import TopoPrior, count_components, persistence_0d, topological_loss
from smoothinv.triggers import MaskedTrigger

W = 8  # width of the hand-made masks


def idx(r: int, c: int) -> int:
    return r * W + c


def two_blobs() -> torch.Tensor:
    """6×8: blob A (0.9) at rows 1-3 cols 1-2, blob B (0.7) at rows 1-3 cols 4-5,
    joined by one bridge pixel (2,3) = 0.3; background 0."""
    m = torch.zeros(6, W)
    m[1:4, 1:3] = 0.9
    m[1:4, 4:6] = 0.7
    m[2, 3] = 0.3
    return m


# --------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("connectivity", [4, 8])
def test_one_blob_has_one_essential_component(connectivity):
    m = torch.zeros(6, W)
    m[2:4, 2:5] = 0.8
    assert persistence_0d(m, connectivity) == [(idx(2, 2), None)]


@pytest.mark.parametrize("connectivity", [4, 8])
def test_two_blobs_give_essential_plus_one_pair_at_the_saddle(connectivity):
    m = two_blobs()
    pairs = persistence_0d(m, connectivity)
    # A (the higher blob) never dies; B is born at its first pixel and dies at the bridge
    assert pairs == [(idx(1, 1), None), (idx(1, 4), idx(2, 3))]
    flat = m.reshape(-1)
    assert float(flat[pairs[1][0]]) == pytest.approx(0.7)
    assert float(flat[pairs[1][1]]) == pytest.approx(0.3)


@pytest.mark.parametrize("connectivity", [4, 8])
def test_a_third_small_blob_adds_one_finite_pair(connectivity):
    m = two_blobs()
    m[5, 7] = 0.35  # isolated from A and B in both connectivities
    pairs = persistence_0d(m, connectivity)
    assert len(pairs) == 3
    assert pairs[:2] == [(idx(1, 1), None), (idx(1, 4), idx(2, 3))]  # sorted by persistence
    birth, death = pairs[2]
    assert birth == idx(5, 7)
    assert float(m.reshape(-1)[death]) == 0.0  # it merges at background level


def test_connectivity_decides_whether_diagonal_pixels_touch():
    m = torch.zeros(4, 4)
    m[1, 1] = m[2, 2] = 0.9
    assert count_components(m, connectivity=8) == 1
    assert count_components(m, connectivity=4) == 2
    assert len(persistence_0d(m, 4)) == 2 and len(persistence_0d(m, 8)) == 1


def flood_count(binary: torch.Tensor, connectivity: int) -> int:
    """Connected components of a boolean [H,W] grid by flood fill (independent of union-find)."""
    h, w = binary.shape
    steps = [(-1, 0), (1, 0), (0, -1), (0, 1)]
    if connectivity == 8:
        steps += [(-1, -1), (-1, 1), (1, -1), (1, 1)]
    seen, count = set(), 0
    for r in range(h):
        for c in range(w):
            if binary[r, c] and (r, c) not in seen:
                count += 1
                stack = [(r, c)]
                seen.add((r, c))
                while stack:
                    a, b = stack.pop()
                    for dr, dc in steps:
                        n = (a + dr, b + dc)
                        if 0 <= n[0] < h and 0 <= n[1] < w and binary[n] and n not in seen:
                            seen.add(n)
                            stack.append(n)
    return count


def test_persistence_matches_component_counts_at_every_level():
    """Betti-0 of each superlevel set {v >= t} = pairs born at or above t that die below t."""
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        v = torch.randint(0, 4, (5, 6), generator=g).double() if trial % 2 else torch.rand(5, 6, generator=g).double()
        flat = v.reshape(-1)
        for conn in (4, 8):
            pairs = persistence_0d(v, conn)
            for t in torch.unique(v).tolist():
                alive = sum(1 for b, d in pairs if flat[b] >= t and (d is None or flat[d] < t))
                assert alive == flood_count(v >= t, conn)
                assert count_components(v, t, conn) == flood_count(v > t, conn)


def test_persistence_rejects_bad_input():
    with pytest.raises(SmoothInvError):
        persistence_0d(torch.zeros(2, 3, 4))
    with pytest.raises(SmoothInvError):
        persistence_0d(torch.zeros(3, 3), connectivity=6)


# --------------------------------------------------------------------------- topological loss


def test_topological_loss_zero_for_one_blob_positive_for_two():
    one = torch.zeros(6, W)
    one[2:4, 2:5] = 0.8
    assert float(topological_loss(one)) == 0.0
    assert float(topological_loss(two_blobs())) == pytest.approx((0.7 - 0.3) ** 2)
    assert float(topological_loss(two_blobs(), k=2)) == 0.0  # both blobs allowed
    assert float(topological_loss(two_blobs(), k=0)) == pytest.approx(0.9**2 + 0.4**2)
    assert float(topological_loss(two_blobs()[None])) == pytest.approx(0.16)  # [1,H,W] accepted


def test_topological_gradient_lowers_the_weaker_blob_and_spares_the_main_one():
    m = two_blobs().requires_grad_(True)
    topological_loss(m).backward()
    grad = m.grad
    assert grad[1, 4] > 0  # descent lowers B's birth pixel
    assert grad[2, 3] < 0  # and raises the saddle
    assert float(grad[1:4, 1:3].abs().sum()) == 0.0  # A untouched
    assert int((grad != 0).sum()) == 2

    # gradient descent on the prior alone shrinks B's persistence, A stays
    m = two_blobs().requires_grad_(True)
    opt = torch.optim.SGD([m], lr=0.5)
    before = float(topological_loss(m).detach())
    for _ in range(30):
        opt.zero_grad()
        topological_loss(m).backward()
        opt.step()
    assert float(topological_loss(m).detach()) < 0.5 * before
    assert float(m.detach()[1:4, 4:6].mean()) < 0.7
    assert torch.equal(m.detach()[1:4, 1:3], torch.full((3, 2), 0.9))


# --------------------------------------------------------------------------- the method


STEPS = 40


@pytest.fixture(scope="module")
def result(trained, image):
    model, _, _ = trained
    return TopoPrior(steps=STEPS).invert(model, image, 2, seed=3)


def test_method_flips_to_target_with_a_valid_masked_trigger(trained, image, result):
    model, _, _ = trained
    r = result
    assert r.method == "topoprior" and r.target == 2
    assert r.loss.shape == (STEPS + 1,) and r.target_prob.shape == (STEPS + 1,)
    assert float(r.loss[-1]) < float(r.loss[0])
    assert float(r.target_prob[-1]) > float(r.target_prob[0])
    assert float(r.target_prob[-1]) > 0.9
    assert isinstance(r.trigger, MaskedTrigger)
    mask, pattern = r.trigger.mask, r.trigger.pattern
    assert mask.shape == (1, 8, 8) and pattern.shape == (3, 8, 8)
    for t in (mask, pattern, r.synthesized):
        assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    assert torch.allclose(r.synthesized, r.trigger.apply(image[None])[0])
    assert torch.equal(r.image, image)
    with torch.no_grad():
        assert int(model(r.synthesized[None]).argmax()) == 2
    assert r.config == TopoPrior(steps=STEPS).describe()
    assert r.seconds > 0


def test_extras_report_components_size_and_the_other_candidates(result):
    ex = result.extras
    assert ex["components"] == count_components(result.trigger.mask)
    assert ex["components"] >= 1
    assert ex["mask_l1"] == pytest.approx(float(result.trigger.mask.sum()))
    assert len(ex["candidate_target_probs"]) == 3
    others = ex["candidates"]
    assert len(others) == 2 and ex["candidate"] not in [c["index"] for c in others]
    for c in others:
        assert isinstance(c["trigger"], MaskedTrigger)
        assert c["loss"] >= float(result.loss[-1])  # the chosen one has the lowest final loss
        assert set(c) >= {"target_prob", "components", "mask_l1"}


def test_candidates_differ_and_diversity_pushes_them_apart(trained, image, result):
    model, _, _ = trained
    masks = [result.trigger.mask] + [c["trigger"].mask for c in result.extras["candidates"]]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not torch.allclose(masks[i], masks[j], atol=1e-3)

    def spread(r):
        content = [r.trigger.mask * r.trigger.pattern] + [
            c["trigger"].mask * c["trigger"].pattern for c in r.extras["candidates"]
        ]
        return sum(float((a - b).abs().mean()) for i, a in enumerate(content) for b in content[i + 1 :])

    plain = TopoPrior(steps=STEPS, lambda_div=0.0).invert(model, image, 2, seed=3)
    pushed = TopoPrior(steps=STEPS, lambda_div=5.0).invert(model, image, 2, seed=3)
    assert spread(pushed) > spread(plain)


def test_topological_prior_simplifies_the_masks(trained, image):
    model, _, _ = trained

    def total_topo(r):
        masks = [r.trigger.mask] + [c["trigger"].mask for c in r.extras["candidates"]]
        return sum(float(topological_loss(m)) for m in masks)

    without = TopoPrior(steps=STEPS, lambda_topo=0.0).invert(model, image, 2, seed=3)
    with_prior = TopoPrior(steps=STEPS).invert(model, image, 2, seed=3)
    assert total_topo(with_prior) < total_topo(without)


def test_same_seed_bit_identical_other_seed_differs_global_rng_untouched(trained, image):
    model, _, _ = trained
    method = TopoPrior(steps=10)
    rng = torch.get_rng_state()
    a = method.invert(model, image, 1, seed=5)
    b = method.invert(model, image, 1, seed=5)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.trigger.mask, b.trigger.mask) and torch.equal(a.trigger.pattern, b.trigger.pattern)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.target_prob, b.target_prob)
    c = method.invert(model, image, 1, seed=6)
    assert not torch.equal(a.trigger.mask, c.trigger.mask)


def test_batch_rows_callback_and_single_candidate(trained):
    model, images, labels = trained
    x = torch.stack([images[labels == 0][0], images[labels == 1][0]])
    calls = []
    results = TopoPrior(steps=5, num_triggers=1).invert_batch(
        model, x, torch.tensor([1, 2]), seed=0, callback=lambda s, loss, p: calls.append((s, loss.shape, p.shape))
    )
    assert [r.target for r in results] == [1, 2]
    assert [s for s, _, _ in calls] == list(range(5))
    assert all(ls == (2,) and ps == (2,) for _, ls, ps in calls)
    assert all(r.extras["candidates"] == [] and r.extras["candidate"] == 0 for r in results)
    assert torch.equal(results[1].image, x[1])


def test_targets_and_images_are_checked(trained, image):
    model, _, _ = trained
    method = TopoPrior(steps=2)
    for bad in (3, -1):
        with pytest.raises(SmoothInvError, match="does not exist"):
            method.invert(model, image, bad)
    with pytest.raises(SmoothInvError):
        method.invert_batch(model, image, torch.tensor([1]))  # not [B,C,H,W]
    with pytest.raises(SmoothInvError):
        method.invert(model, image * 2, 1)  # outside [0,1]
    with pytest.raises(SmoothInvError):
        method.invert_batch(model, image[None], torch.tensor([1, 2]))  # count mismatch


@pytest.mark.parametrize(
    "options",
    [
        {"num_triggers": 0},
        {"steps": 0},
        {"steps": 2.5},
        {"lr": 0.0},
        {"lr": float("nan")},
        {"lambda_div": -1.0},
        {"lambda_topo": float("inf")},
        {"lambda_size": -0.1},
        {"topo_k": -1},
        {"connectivity": 6},
        {"diversity": "l2"},
        {"mask_init": 0.0},
        {"mask_init": 1.0},
        {"topo_start": 1.5},
        {"max_batch": 0},
    ],
)
def test_bad_hyper_parameters_raise(options):
    with pytest.raises(SmoothInvError):
        TopoPrior(**options)


def test_registry_config_and_summary(result):
    method = get_method("topoprior", steps=7)
    assert isinstance(method, TopoPrior) and method.total_steps() == 7
    assert "topoprior" in list_methods()
    assert TopoPrior.grid_axes == ()
    assert {"steps", "max_batch"} <= set(method_options("topoprior")) and "noise_samples" not in method_options("topoprior")
    json.dumps(method.describe())
    summary = json.loads(json.dumps(result.summary()))
    assert summary["method"] == "topoprior" and len(summary["loss_curve"]) == STEPS + 1
    defaults = TopoPrior().describe()
    assert (defaults["num_triggers"], defaults["lambda_div"], defaults["lambda_topo"]) == (3, 1.0, 10.0)
    assert defaults["connectivity"] == 8 and defaults["topo_k"] == 1
