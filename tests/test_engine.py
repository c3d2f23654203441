"""Engine: the soft smoothed classifier, PGD, metrics and the config sweep.

Everything runs on tiny models built here (linear maps or a 2-layer CNN on 1x8x8 /
3x5x5 inputs) so the whole file takes a few seconds on one CPU thread.
"""

from __future__ import annotations

import functools
import json
import math

import pytest
import torch
from torch import nn

from conftest import bar_data, tiny_cnn
from smoothinv.engine.metrics import accuracy, asr_by_source, attack_success_rate, predict
from smoothinv.methods.registry import method_spec
from smoothinv.engine.pgd import PGDSettings, descend, normalize_l2, project_l2
from smoothinv.engine.smoothing import SmoothedClassifier
from smoothinv.protocols.sweep import Grid, eps_scale, grid_options, run_sweep, sweep_steps
from smoothinv.errors import SmoothInvError
from smoothinv.training import train_classifier
from smoothinv.triggers import AdditiveTrigger, square_patch




# --------------------------------------------------------------------------- helpers


def linear_model(shape=(1, 8, 8), classes=5, seed=0, scale=1.0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))
    with torch.no_grad():
        model[1].weight.mul_(scale)
        model[1].bias.mul_(scale)
    return model.eval()






@pytest.fixture(scope="module")
def trained():
    """A linear classifier trained (with Gaussian augmentation) on the bar data; ~100% accurate."""
    images, labels = bar_data(channels=1)
    model = linear_model(classes=3, seed=1)
    train_classifier(model, images, labels, epochs=8, batch_size=30, lr=0.2, noise_sigma=0.5, seed=0)
    assert accuracy(model, images, labels) >= 0.95
    return model, images, labels


class PixelModel(nn.Module):
    """Class 1 iff pixel (0,0,0) > 0.5, else class 0. Parameter-free."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([torch.zeros_like(v), 100.0 * (v - 0.5)], dim=1)


def reference_loss_grad(model, x, targets, sigma_rows, copies, seed, chunk):
    """−log mean_i softmax(f(x+σδ_i))_y and its autograd gradient, computed naively.

    The noise is drawn exactly as SmoothedClassifier draws it: one randn call per chunk of
    `chunk` noisy copies, rows ordered row0×copies, row1×copies, ...
    """
    g = torch.Generator().manual_seed(seed)
    B = x.shape[0]
    rows = torch.arange(B).repeat_interleave(copies)
    noise = torch.cat(
        [torch.randn((len(rows[s : s + chunk]),) + tuple(x.shape[1:]), generator=g) for s in range(0, len(rows), chunk)]
    )
    xr = x.clone().requires_grad_(True)
    noisy = xr[rows] + noise * sigma_rows[rows].view(-1, 1, 1, 1)
    p = torch.softmax(model(noisy), dim=1)
    G = torch.zeros(B, p.shape[1]).index_add(0, rows, p) / copies
    loss = -torch.log(G[torch.arange(B), targets])
    (grad,) = torch.autograd.grad(loss.sum(), xr)
    return loss.detach(), G.detach(), grad


def cosine(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a / a.abs().max(), b / b.abs().max()  # rescale first: tiny/huge vectors are fine
    return float(a @ b / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- smoothing


def test_probs_rows_sum_to_one_and_are_probabilities():
    model = tiny_cnn(channels=1, classes=4)
    x = torch.rand(3, 1, 8, 8)
    sc = SmoothedClassifier(model, num_samples=7, max_batch=5)
    p = sc.probs(x, 0.5, torch.Generator().manual_seed(0))
    assert p.shape == (3, 4)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-6)
    assert bool((p >= 0).all())


def test_probs_with_sigma_zero_is_softmax_of_model():
    model = linear_model()
    x = torch.rand(4, 1, 8, 8)
    p = SmoothedClassifier(model, num_samples=9).probs(x, 0.0, torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = torch.softmax(model(x), 1)
    torch.testing.assert_close(p, expected, rtol=1e-6, atol=1e-7)


def test_probs_matches_naive_mean_softmax_on_same_noise():
    model = tiny_cnn(channels=1, classes=4)
    x = torch.rand(2, 1, 8, 8)
    sigma = torch.tensor([0.3, 0.7])
    p = SmoothedClassifier(model, num_samples=6, max_batch=1000).probs(x, sigma, torch.Generator().manual_seed(5))
    _, G, _ = reference_loss_grad(model, x, torch.zeros(2, dtype=torch.long), sigma, 6, seed=5, chunk=1000)
    torch.testing.assert_close(p, G, rtol=1e-5, atol=1e-6)
    # ...and genuinely noisy: differs from the σ=0 softmax.
    with torch.no_grad():
        assert (p - torch.softmax(model(x), 1)).abs().max() > 1e-3


def test_num_samples_must_be_positive():
    with pytest.raises(ValueError):
        SmoothedClassifier(linear_model(), num_samples=0)


def test_model_with_wrong_output_shape_raises_smoothinv_error():
    bad = nn.Sequential(nn.Flatten(0))  # returns a 1-D tensor
    with pytest.raises(SmoothInvError):
        SmoothedClassifier(bad, 2).probs(torch.rand(2, 1, 4, 4), 0.1, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("model_fn", [linear_model, functools.partial(tiny_cnn, channels=1)])
def test_loss_and_grad_equals_autograd_of_direct_formula_single_chunk(model_fn):
    model = model_fn()
    x = torch.rand(3, 1, 8, 8)
    y = torch.tensor([0, 2, 1])
    sc = SmoothedClassifier(model, num_samples=8, max_batch=1000)
    loss, prob, grad = sc.loss_and_grad(x, y, 0.4, torch.Generator().manual_seed(11))
    ref_loss, ref_G, ref_grad = reference_loss_grad(model, x, y, torch.full((3,), 0.4), 8, seed=11, chunk=1000)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prob, ref_G[torch.arange(3), y], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert grad.abs().max() > 1e-4  # a real, non-trivial gradient


@pytest.mark.parametrize("max_batch", [1, 3, 5, 7])
def test_loss_and_grad_online_merge_exact_with_chunked_noise(max_batch):
    """Chunks are merged exactly: with the noise reproduced chunk by chunk, the chunked
    result equals the naive formula (3x5x5 images: the chunked draws differ from one big
    draw, so this checks the merge itself, not an RNG coincidence)."""
    model = linear_model(shape=(3, 5, 5), classes=4, seed=2)
    x = torch.rand(3, 3, 5, 5)
    y = torch.tensor([3, 0, 1])
    sigma = torch.tensor([0.2, 0.5, 1.0])
    sc = SmoothedClassifier(model, num_samples=5, max_batch=max_batch)
    loss, prob, grad = sc.loss_and_grad(x, y, sigma, torch.Generator().manual_seed(7))
    ref_loss, ref_G, ref_grad = reference_loss_grad(model, x, y, sigma, 5, seed=7, chunk=max_batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prob, ref_G[torch.arange(3), y], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_loss_and_grad_same_for_max_batch_3_and_1000_when_noise_identical():
    """For 1x8x8 images (64 values, a multiple of torch's CPU 16-value normal block) the
    chunked draws concatenate to the single draw, so max_batch must not change the result."""
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    whole = torch.randn(24, 1, 8, 8, generator=g1)
    pieces = torch.cat([torch.randn(min(3, 24 - s), 1, 8, 8, generator=g2) for s in range(0, 24, 3)])
    assert torch.equal(whole, pieces), "precondition: identical noise for both chunkings"

    model = tiny_cnn(channels=1, classes=3)
    x = torch.rand(3, 1, 8, 8)
    y = torch.tensor([1, 1, 2])
    small = SmoothedClassifier(model, num_samples=8, max_batch=3)
    large = SmoothedClassifier(model, num_samples=8, max_batch=1000)
    a = small.loss_and_grad(x, y, 0.5, torch.Generator().manual_seed(0))
    b = large.loss_and_grad(x, y, 0.5, torch.Generator().manual_seed(0))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-7)
    pa = small.probs(x, 0.5, torch.Generator().manual_seed(1))
    pb = large.probs(x, 0.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-7)


def test_loss_and_grad_statistically_independent_of_max_batch():
    """On 3x5x5 images the draw order changes the noise, so chunking is only equal in
    distribution: with many samples loss and gradient direction agree closely."""
    model = linear_model(shape=(3, 5, 5), classes=4, seed=4)
    x = torch.rand(1, 3, 5, 5)
    y = torch.tensor([2])
    a = SmoothedClassifier(model, num_samples=4000, max_batch=3).loss_and_grad(x, y, 0.5, torch.Generator().manual_seed(0))
    b = SmoothedClassifier(model, num_samples=4000, max_batch=4000).loss_and_grad(
        x, y, 0.5, torch.Generator().manual_seed(0)
    )
    assert not torch.equal(a[0], b[0])  # really different noise
    assert abs(float(a[0] - b[0])) < 0.05 * float(b[0]) + 0.02
    assert cosine(a[2], b[2]) > 0.98


def test_loss_and_grad_survives_target_probability_below_float32_range():
    model = linear_model(classes=3, seed=5, scale=1e4)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        logits = model(x)
    y = logits.argmin(1)  # least likely class: probability ~exp(-1e4)
    sigma = 0.05
    # The regime under test: every noisy copy's softmax target probability underflows to 0.
    g = torch.Generator().manual_seed(9)
    rows = torch.arange(2).repeat_interleave(16)
    with torch.no_grad():
        naive = torch.softmax(model(x[rows] + sigma * torch.randn(32, 1, 8, 8, generator=g)), 1)
    assert float(naive[torch.arange(32), y[rows]].max()) == 0.0

    sc = SmoothedClassifier(model, num_samples=16, max_batch=5)
    loss, prob, grad = sc.loss_and_grad(x, y, sigma, torch.Generator().manual_seed(9))
    assert bool(torch.isfinite(loss).all()) and bool((loss > 200).all())
    assert bool(torch.isfinite(grad).all())
    assert float(grad.flatten(1).norm(dim=1).min()) > 0

    # Agrees with an exact float64 log-sum-exp computation on the same noise.
    m64 = linear_model(classes=3, seed=5, scale=1e4).double()
    g = torch.Generator().manual_seed(9)
    noise = torch.cat([torch.randn(min(5, 32 - s), 1, 8, 8, generator=g) for s in range(0, 32, 5)]).double()
    x64 = x.double().requires_grad_(True)
    ell = torch.log_softmax(m64(x64[rows] + sigma * noise), 1)[torch.arange(32), y[rows]].view(2, 16)
    ref = -(torch.logsumexp(ell, 1) - math.log(16))
    (ref_grad,) = torch.autograd.grad(ref.sum(), x64)
    torch.testing.assert_close(loss.double(), ref.detach(), rtol=1e-4, atol=0)
    for b in range(2):
        assert cosine(grad[b].double(), ref_grad[b]) > 0.999


def test_per_row_sigma_zero_row_is_deterministic_value():
    model = tiny_cnn(channels=1, classes=3)
    x = torch.rand(2, 1, 8, 8)
    y = torch.tensor([2, 0])
    sigma = torch.tensor([0.0, 0.5])
    sc = SmoothedClassifier(model, num_samples=6, max_batch=4)
    loss, prob, grad = sc.loss_and_grad(x, y, sigma, torch.Generator().manual_seed(1))

    x0 = x[:1].clone().requires_grad_(True)
    det = -torch.log_softmax(model(x0), 1)[0, 2]
    (det_grad,) = torch.autograd.grad(det, x0)
    torch.testing.assert_close(loss[0], det.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prob[0], torch.exp(-det.detach()), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad[0], det_grad[0], rtol=1e-4, atol=1e-6)

    p = sc.probs(x, sigma, torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(p[0], torch.softmax(model(x[:1]), 1)[0], rtol=1e-5, atol=1e-7)
        # the σ=0.5 row is noisy
        assert (p[1] - torch.softmax(model(x[1:]), 1)[0]).abs().max() > 1e-3

    ref_loss, _, ref_grad = reference_loss_grad(model, x, y, sigma, 6, seed=1, chunk=4)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)


def test_rows_use_their_own_targets():
    model = linear_model(classes=3)
    x = torch.rand(1, 1, 8, 8).repeat(3, 1, 1, 1)
    y = torch.tensor([0, 1, 2])
    sc = SmoothedClassifier(model, num_samples=9)  # σ = 0: one copy, whatever num_samples
    loss, prob, _ = sc.loss_and_grad(x, y, 0.0)
    with torch.no_grad():
        expected = torch.softmax(model(x[:1]), 1)[0]
    torch.testing.assert_close(prob, expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(loss, -torch.log(expected), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- PGD


def quadratic(center):
    """loss = ½‖x − c‖² per row, grad = x − c; records every point it is evaluated at."""
    seen = []

    def fn(x_adv):
        seen.append(x_adv.clone())
        diff = x_adv - center
        loss = 0.5 * diff.flatten(1).pow(2).sum(1)
        return loss, torch.exp(-loss), diff

    return fn, seen


@pytest.mark.parametrize("optimizer", ["pgd", "momentum"])
def test_descend_keeps_constraints_after_every_step(optimizer):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    x[0] = 0.98  # near the upper box edge
    x[1] = 0.02  # near the lower box edge
    center = torch.rand(3, 1, 8, 8, generator=g) * 4 - 2  # far outside the box
    eps = torch.tensor([0.5, 1.0, 2.0])
    fn, seen = quadratic(center)
    settings = PGDSettings(steps=25, step_fraction=0.3, optimizer=optimizer, decay_every=10)
    trace = descend(fn, x, eps, settings)
    assert len(seen) == 26
    torch.testing.assert_close(seen[0], x, rtol=0, atol=0)  # starts at p = 0
    for x_adv in seen:
        p = x_adv - x
        assert bool((p.flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all())
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool((trace.perturbation.flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all())
    final = x + trace.perturbation
    assert float(final.min()) >= 0.0 and float(final.max()) <= 1.0
    # the ball constraint is active for at least the large-step rows
    assert float(trace.perturbation[2].norm()) > 0.9 * 2.0


def test_descend_trace_shapes_first_loss_and_decrease():
    x = torch.full((2, 1, 4, 4), 0.5)
    center = torch.full((2, 1, 4, 4), 0.5)
    center[0, 0, 0, 0] = 0.9
    center[1, 0, 1:3, 1:3] = 0.2
    fn, _ = quadratic(center)
    calls = []
    trace = descend(fn, x, torch.tensor([1.0, 1.0]), PGDSettings(steps=40, step_fraction=0.05),
                    callback=lambda s, l, p: calls.append((s, l.clone(), p.clone())))
    assert trace.loss.shape == (41, 2) and trace.target_prob.shape == (41, 2)
    assert trace.perturbation.shape == x.shape
    first, _, _ = fn(x)
    torch.testing.assert_close(trace.loss[0], first)
    assert bool((trace.loss[-1] < 0.05 * trace.loss[0]).all())
    # the callback sees each step's pre-update loss, steps 0..39
    assert [c[0] for c in calls] == list(range(40))
    for s, l, p in calls:
        torch.testing.assert_close(l, trace.loss[s])
        torch.testing.assert_close(p, trace.target_prob[s])
    # optimum of the first row is p = 0.4 e_0 (inside the ball): reached up to one step
    assert abs(float(trace.perturbation[0, 0, 0, 0]) - 0.4) <= 0.05 + 1e-6


def test_pgd_step_is_normalised_gradient_times_constant_rate():
    """Linear objective with unit-free gradient: after k steps p = −k·α·ĝ (no clamping)."""
    x = torch.full((1, 1, 4, 4), 0.5)
    direction = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 7
    seen = []

    def fn(x_adv):
        seen.append(x_adv - x)
        return (x_adv * direction).flatten(1).sum(1), torch.ones(1), direction.clone()

    eps = torch.tensor([50.0])
    descend(fn, x, eps, PGDSettings(steps=5, step_fraction=1e-4))
    unit = direction / direction.norm()
    for k, p in enumerate(seen):
        torch.testing.assert_close(p, -k * 5e-3 * unit, rtol=1e-4, atol=1e-6)


def test_momentum_learning_rate_halves_every_decay_every_steps():
    s = PGDSettings(steps=10, step_fraction=0.1, optimizer="momentum", decay_every=3)
    eps = torch.tensor([2.0, 4.0])
    expected = {0: 1.0, 2: 1.0, 3: 0.5, 5: 0.5, 6: 0.25, 9: 0.125}
    for step, f in expected.items():
        torch.testing.assert_close(s.learning_rate(step, eps), torch.tensor([0.2, 0.4]) * f)
    plain = PGDSettings(steps=10, step_fraction=0.1, optimizer="pgd", decay_every=3)
    torch.testing.assert_close(plain.learning_rate(9, eps), torch.tensor([0.2, 0.4]))
    default = PGDSettings(optimizer="momentum")
    torch.testing.assert_close(default.learning_rate(299, eps), 0.05 * eps)
    torch.testing.assert_close(default.learning_rate(300, eps), 0.025 * eps)


def test_momentum_descent_uses_velocity_and_decayed_rate():
    x = torch.full((1, 1, 4, 4), 0.5)
    direction = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    seen = []

    def fn(x_adv):
        seen.append(x_adv - x)
        return (x_adv * direction).flatten(1).sum(1), torch.ones(1), direction.clone()

    settings = PGDSettings(steps=6, step_fraction=1e-4, optimizer="momentum", decay_every=2)
    eps = torch.tensor([50.0])
    descend(fn, x, eps, settings)
    unit = direction / direction.norm()
    p, v = torch.zeros_like(x), torch.zeros_like(x)
    for k in range(6):
        torch.testing.assert_close(seen[k], p, rtol=1e-4, atol=1e-7)
        v = 0.9 * v + unit
        p = p - 5e-3 * 0.5 ** (k // 2) * v
    torch.testing.assert_close(seen[6], p, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("bad_step", [0, 3])
def test_nan_loss_raises(bad_step):
    x = torch.full((1, 1, 2, 2), 0.5)
    count = [0]

    def fn(x_adv):
        loss = torch.tensor([float("nan")]) if count[0] == bad_step else torch.tensor([1.0])
        count[0] += 1
        return loss, torch.ones(1), torch.ones_like(x_adv)

    with pytest.raises(SmoothInvError, match=f"step {bad_step}"):
        descend(fn, x, torch.tensor([1.0]), PGDSettings(steps=5))


def test_inf_loss_raises():
    x = torch.full((2, 1, 2, 2), 0.5)
    fn = lambda xa: (torch.tensor([1.0, float("inf")]), torch.ones(2), torch.ones_like(xa))  # noqa: E731
    with pytest.raises(SmoothInvError):
        descend(fn, x, torch.tensor([1.0, 1.0]), PGDSettings(steps=2))


@pytest.mark.parametrize("optimizer", ["pgd", "momentum"])
def test_zero_gradient_leaves_perturbation_at_zero(optimizer):
    x = torch.rand(2, 1, 4, 4)
    fn = lambda xa: (torch.ones(2), torch.full((2,), 0.5), torch.zeros_like(xa))  # noqa: E731
    trace = descend(fn, x, torch.tensor([1.0, 2.0]), PGDSettings(steps=5, optimizer=optimizer))
    assert torch.equal(trace.perturbation, torch.zeros_like(x))
    assert bool(torch.isfinite(trace.loss).all())


def test_pgd_settings_validation():
    with pytest.raises(SmoothInvError):
        PGDSettings(steps=0)
    with pytest.raises(SmoothInvError):
        PGDSettings(step_fraction=0.0)
    with pytest.raises(SmoothInvError):
        PGDSettings(optimizer="adam")  # type: ignore[arg-type]


def test_project_l2_properties():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(4, 3, 5, 5, generator=g)
    p[3] = 0.0
    norms = p.flatten(1).norm(dim=1)
    eps = torch.tensor([1.0, 100.0, float(norms[2]) * 0.5, 1.0])
    q = project_l2(p, eps)
    qn = q.flatten(1).norm(dim=1)
    torch.testing.assert_close(qn[0], eps[0])  # shrunk exactly onto the sphere
    assert torch.equal(q[1], p[1])  # inside the ball: untouched
    torch.testing.assert_close(qn[2], eps[2])
    assert torch.equal(q[3], torch.zeros_like(q[3]))  # zero stays zero, no NaN
    for b in range(3):  # same direction
        assert cosine(q[b], p[b]) > 1 - 1e-6
    # idempotent
    torch.testing.assert_close(project_l2(q, eps), q)


def test_normalize_l2_properties():
    g = torch.Generator().manual_seed(0)
    v = torch.randn(5, 2, 3, 3, generator=g)
    v[1] *= 1e-12
    v[2] *= 1e12
    v[4] = 0.0
    u = normalize_l2(v)
    n = u.flatten(1).norm(dim=1)
    torch.testing.assert_close(n[:4], torch.ones(4), rtol=1e-5, atol=1e-6)
    assert torch.equal(u[4], torch.zeros_like(u[4]))
    assert bool(torch.isfinite(u).all())
    for b in range(4):
        assert cosine(u[b], v[b]) > 1 - 1e-6


def test_normalize_l2_extreme_magnitudes_still_unit_norm():
    v = torch.ones(2, 1, 4, 4)
    v[0] *= 1e-25
    v[1] *= 1e25
    n = normalize_l2(v).flatten(1).norm(dim=1)
    torch.testing.assert_close(n, torch.ones(2), rtol=1e-5, atol=1e-6)


def test_descend_on_smoothed_classifier_reduces_loss():
    model = tiny_cnn(channels=1, classes=3, seed=3)
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 2])
    sc = SmoothedClassifier(model, num_samples=4)
    gen = torch.Generator().manual_seed(0)
    trace = descend(lambda xa: sc.loss_and_grad(xa, y, 0.1, gen), x, torch.tensor([2.0, 2.0]),
                    PGDSettings(steps=30, step_fraction=0.1))
    assert bool((trace.loss[-5:].mean(0) < trace.loss[0]).all())
    assert bool((trace.target_prob[-1] > trace.target_prob[0]).all())


# --------------------------------------------------------------------------- metrics


def test_attack_success_rate_hand_counted():
    model = PixelModel()
    vals0 = [0.1, 0.2, 0.3, 0.35, 0.45, 0.05]  # +0.25 → 0.35 0.45 0.55 0.6 0.7 0.3: 3 flip to 1
    images = torch.zeros(10, 1, 3, 3)
    images[:6, 0, 0, 0] = torch.tensor(vals0)
    images[6:, 0, 0, 0] = 0.0  # labelled 1 (target) but predicted 0 even with the trigger
    labels = torch.tensor([0] * 6 + [1] * 4)
    bump = torch.zeros(1, 3, 3)
    bump[0, 0, 0] = 0.25
    trigger = AdditiveTrigger(bump)
    for bs in (1, 4, 256):
        assert attack_success_rate(model, trigger, images, labels, target=1, batch_size=bs) == pytest.approx(0.5)
    # target 0: only the four label-1 images count; all are predicted 0 after the trigger
    assert attack_success_rate(model, trigger, images, labels, target=0) == pytest.approx(1.0)
    # a trigger that does nothing flips nobody
    assert attack_success_rate(model, AdditiveTrigger(torch.zeros(1, 3, 3)), images, labels, 1) == 0.0
    # a patch at pixel (0,0) with value 1 flips everyone
    assert attack_success_rate(model, square_patch((1, 3, 3), 1, 0, 0, 1.0), images, labels, 1) == 1.0


def test_asr_by_source_splits_the_flips_by_true_class():
    model = PixelModel()
    images = torch.zeros(9, 1, 3, 3)
    images[:, 0, 0, 0] = torch.tensor([0.3, 0.35, 0.0, 0.0, 0.45, 0.3, 0.0, 0.6, 0.9])
    labels = torch.tensor([0, 0, 0, 2, 2, 3, 3, 1, 1])  # label-1 images are the target's own
    bump = torch.zeros(1, 3, 3)
    bump[0, 0, 0] = 0.25  # value > 0.5 → class 1: flips 0.3, 0.35, 0.45, 0.3
    trigger = AdditiveTrigger(bump)
    by_source = asr_by_source(model, trigger, images, labels, target=1, batch_size=2)
    assert by_source == {0: pytest.approx(2 / 3), 2: pytest.approx(0.5), 3: pytest.approx(0.5)}
    overall = attack_success_rate(model, trigger, images, labels, target=1)
    assert overall == pytest.approx(4 / 7)


def test_attack_success_rate_needs_non_target_images():
    images = torch.rand(3, 1, 3, 3)
    with pytest.raises(SmoothInvError, match="target class 2"):
        attack_success_rate(PixelModel(), AdditiveTrigger(torch.zeros(1, 3, 3)), images, torch.full((3,), 2), 2)


def test_accuracy_hand_counted():
    images = torch.zeros(4, 1, 2, 2)
    images[:, 0, 0, 0] = torch.tensor([0.9, 0.1, 0.8, 0.2])  # predictions 1 0 1 0
    assert accuracy(PixelModel(), images, torch.tensor([1, 0, 0, 0])) == pytest.approx(0.75)
    assert accuracy(PixelModel(), images, torch.tensor([0, 1, 0, 1])) == pytest.approx(0.0)


def test_predict_independent_of_batch_size(trained):
    model, images, labels = trained
    full = predict(model, images, batch_size=1000)
    with torch.no_grad():
        torch.testing.assert_close(full, model(images).argmax(1))
    for bs in (1, 7, 64):
        assert torch.equal(predict(model, images, batch_size=bs), full)
    assert full.dtype == torch.long
    assert predict(model, images[:0]).shape == (0,)


# --------------------------------------------------------------------------- sweep


def test_eps_scale():
    assert eps_scale((3, 224, 224)) == 1.0
    assert eps_scale((3, 32, 32)) == pytest.approx(math.sqrt(3072 / 150528))
    assert eps_scale((1, 28, 28)) == pytest.approx(math.sqrt(784 / 150528))


def test_grid_for_shape_scales_paper_eps():
    grid = Grid.for_shape((3, 32, 32))
    s = math.sqrt(3072 / 150528)
    assert grid.eps == pytest.approx((5 * s, 10 * s), abs=1e-4)
    assert grid.sigmas == (0.12, 0.25, 0.5, 1.0)
    d = grid.describe()
    json.dumps(d)
    assert d["eps"] == pytest.approx([5 * s, 10 * s], abs=1e-4)
    assert d["sigmas"] == [0.12, 0.25, 0.5, 1.0]
    assert d["eps_reference_224"] == [5.0, 10.0]
    assert d["eps_scale"] == pytest.approx(s, abs=1e-6)
    assert "sqrt" in d["eps_source"]
    assert Grid.for_shape((3, 224, 224)).eps == (5.0, 10.0)


def test_grid_absolute_eps_override():
    grid = Grid.for_shape((3, 32, 32), eps=[0.5, 2], sigmas=[0, 0.3])
    assert grid.eps == (0.5, 2.0)
    assert grid.sigmas == (0.0, 0.3)
    d = grid.describe()
    assert d["eps"] == [0.5, 2.0]
    assert d["eps_scale"] is None and d["eps_reference_224"] is None
    assert "absolute" in d["eps_source"]


@pytest.mark.parametrize("kwargs", [{"eps": [1.0, -0.5]}, {"eps": [0.0]}, {"sigmas": [0.25, -0.1]}])
def test_grid_rejects_bad_values(kwargs):
    with pytest.raises(SmoothInvError):
        Grid.for_shape((3, 32, 32), **kwargs)


def test_grid_options_default_grid():
    grid = Grid.for_shape((3, 32, 32))
    smooth = grid_options("smoothinv", grid)
    assert len(smooth) == 8
    assert {(o["eps"], o["sigma"]) for o in smooth} == {(e, s) for e in grid.eps for s in grid.sigmas}
    plain = grid_options("plainadv", grid)
    assert plain == [{"eps": grid.eps[0]}, {"eps": grid.eps[1]}]
    assert len(grid_options("momentum", grid)) == 8
    assert len(grid_options("pgd", grid)) == 8
    with pytest.raises(SmoothInvError):
        grid_options("nope", grid)
    assert sweep_steps(method_spec("smoothinv", steps=10), method_spec("plainadv", steps=10), grid, None) == 100
    # raced (the default), each method's configs are one batched descent
    assert sweep_steps(method_spec("smoothinv", steps=10), method_spec("plainadv", steps=10), grid) == 20
    assert sweep_steps(method_spec("smoothinv", steps=10), None, grid, None) == 80


@pytest.fixture(scope="module")
def sweep_setup(trained):
    model, images, labels = trained
    image = images[0]  # class 0
    clean = images[labels != 1][::4]
    clean_labels = labels[labels != 1][::4]
    return model, image, clean, clean_labels


def test_run_sweep_runs_asr_and_best(sweep_setup):
    model, image, clean, clean_labels = sweep_setup
    grid = Grid.for_shape((1, 8, 8), eps=[0.5, 3.0], sigmas=[0.25, 0.5])
    progress = []
    method = method_spec("smoothinv", steps=15, noise_samples=4, step_fraction=0.2)
    baseline = method_spec("plainadv", steps=15, step_fraction=0.2)
    sweep = run_sweep(model, image, 1, clean, clean_labels, grid, method=method, baseline=baseline, seed=3,
                      progress=lambda label, n: progress.append((label, n)))
    assert sweep.method == "smoothinv"
    assert len(sweep.runs) == 4 and len(sweep.baseline) == 2
    assert {(r.result.config["eps"], r.result.config["sigma"]) for r in sweep.runs} == {
        (0.5, 0.25), (0.5, 0.5), (3.0, 0.25), (3.0, 0.5)}
    assert all(r.result.method == "plainadv" for r in sweep.baseline)
    for r in sweep.runs + sweep.baseline:
        assert 0.0 <= r.asr <= 1.0
        assert r.result.loss.shape == (16,)
        assert float(r.result.perturbation.norm()) <= r.result.config["eps"] * (1 + 1e-5)
        # the reported ASR is the trigger's ASR on the clean set (a raced-out config keeps the race's)
        if r.asr_images is None:
            assert r.asr == attack_success_rate(model, r.result.trigger, clean, clean_labels, 1)
        else:
            assert r.stopped and r.asr_images <= len(clean)
        s = r.summary()
        json.dumps(s)
        assert s["asr"] == pytest.approx(r.asr, abs=1e-6)
    assert sweep.best.asr == max(r.asr for r in sweep.runs)
    # a large budget on this easy model should flip at least some images
    assert sweep.best.asr > 0
    # progress: one tick per step per config
    assert sum(n for _, n in progress) == sweep_steps(method, baseline, grid)
    assert any(label.startswith("plainadv") for label, _ in progress)


def test_run_sweep_config_result_independent_of_other_configs(sweep_setup):
    model, image, clean, clean_labels = sweep_setup
    method = method_spec("smoothinv", steps=5, noise_samples=3)
    full = run_sweep(model, image, 2, clean, clean_labels,
                     Grid.for_shape((1, 8, 8), eps=[0.5, 1.0], sigmas=[0.25, 0.5]), method=method, seed=7)
    alone = run_sweep(model, image, 2, clean, clean_labels,
                      Grid.for_shape((1, 8, 8), eps=[1.0], sigmas=[0.5]), method=method, seed=7)
    assert full.baseline == [] and len(alone.runs) == 1
    match = [r for r in full.runs if r.result.config["eps"] == 1.0 and r.result.config["sigma"] == 0.5]
    assert len(match) == 1
    assert torch.equal(match[0].result.synthesized, alone.runs[0].result.synthesized)
    assert torch.equal(match[0].result.loss, alone.runs[0].result.loss)
    assert match[0].asr == alone.runs[0].asr
    # the seed matters: another seed gives another noisy descent
    other = run_sweep(model, image, 2, clean, clean_labels,
                      Grid.for_shape((1, 8, 8), eps=[1.0], sigmas=[0.5]), method=method, seed=8)
    assert not torch.equal(other.runs[0].result.synthesized, alone.runs[0].result.synthesized)


def test_sweep_best_breaks_ties_by_final_target_prob():
    from smoothinv.protocols.sweep import Run, Sweep
    from smoothinv.methods.base import InversionResult

    def run(asr, final):
        res = InversionResult("x", 0, torch.zeros(1, 2, 2), torch.zeros(1, 2, 2), AdditiveTrigger(torch.zeros(1, 2, 2)),
                              torch.zeros(2), torch.tensor([0.0, final]), {}, 0.0)
        return Run(res, asr, 0.0)

    runs = [run(0.5, 0.9), run(0.7, 0.1), run(0.7, 0.3), run(0.2, 1.0)]
    assert Sweep("x", runs).best is runs[2]


def test_energy_concentration_separates_a_patch_from_a_diffuse_perturbation():
    from smoothinv.engine.metrics import energy_concentration
    from smoothinv.errors import SmoothInvError

    diffuse = torch.full((3, 32, 32), 0.1)
    assert energy_concentration(diffuse) == pytest.approx(51 / 1024, abs=1e-9)  # top 5% of 1024 positions
    patch = torch.zeros(3, 32, 32)
    patch[:, 28:, 28:] = 0.5
    assert energy_concentration(patch) == pytest.approx(1.0)
    assert energy_concentration(torch.zeros(3, 8, 8)) == 0.0
    with pytest.raises(SmoothInvError, match="C,H,W"):
        energy_concentration(torch.zeros(32, 32))
