"""Triggers, data poisoning and classifier training, checked pixel by pixel on tiny data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from smoothinv.attacks import PoisonedSet, poison
from smoothinv.engine.metrics import accuracy, attack_success_rate
from smoothinv.training import train_classifier
from smoothinv.triggers import AdditiveTrigger, MaskedTrigger, square_patch




# --------------------------------------------------------------------------- triggers


def test_additive_trigger_adds_and_clamps():
    p = torch.zeros(1, 2, 2)
    p[0, 0, 0] = 0.5
    p[0, 1, 1] = -0.5
    images = torch.tensor([[[[0.2, 0.3], [0.4, 0.9]]], [[[0.7, 0.0], [0.0, 0.3]]]])
    before = images.clone()
    out = AdditiveTrigger(p).apply(images)
    expected = torch.tensor([[[[0.7, 0.3], [0.4, 0.4]]], [[[1.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(out, expected)
    assert torch.equal(images, before)  # not in place
    assert out.shape == images.shape


def test_additive_trigger_keeps_dtype():
    p = torch.full((1, 2, 2), 0.25)
    out = AdditiveTrigger(p).apply(torch.zeros(3, 1, 2, 2, dtype=torch.float64))
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.full((3, 1, 2, 2), 0.25, dtype=torch.float64))


def test_masked_trigger_blends():
    mask = torch.tensor([[[1.0, 0.0], [0.5, 0.0]]])  # [1,H,W] broadcast over channels
    pattern = torch.stack([torch.full((2, 2), 1.0), torch.full((2, 2), 0.0)])  # [2,H,W]
    images = torch.full((1, 2, 2, 2), 0.4)
    out = MaskedTrigger(mask, pattern).apply(images)
    expected = torch.tensor(
        [[[[1.0, 0.4], [0.7, 0.4]], [[0.0, 0.4], [0.2, 0.4]]]]
    )
    torch.testing.assert_close(out, expected)
    assert torch.equal(images, torch.full((1, 2, 2, 2), 0.4))


def test_masked_trigger_per_channel_mask():
    mask = torch.zeros(2, 2, 2)
    mask[1] = 1.0
    out = MaskedTrigger(mask, torch.full((2, 2, 2), 0.9)).apply(torch.full((1, 2, 2, 2), 0.1))
    assert torch.equal(out[0, 0], torch.full((2, 2), 0.1))
    torch.testing.assert_close(out[0, 1], torch.full((2, 2), 0.9))


def test_square_patch_geometry_and_value():
    trig = square_patch((3, 6, 7), size=2, top=1, left=4, value=0.5)
    assert trig.mask.shape == (1, 6, 7)
    assert trig.pattern.shape == (3, 6, 7)
    expected_mask = torch.zeros(1, 6, 7)
    expected_mask[0, 1:3, 4:6] = 1.0
    assert torch.equal(trig.mask, expected_mask)
    images = torch.rand(2, 3, 6, 7, generator=torch.Generator().manual_seed(0))
    out = trig.apply(images)
    inside = torch.zeros(6, 7, dtype=torch.bool)
    inside[1:3, 4:6] = True
    assert bool((out[:, :, inside] == 0.5).all())
    assert torch.equal(out[:, :, ~inside], images[:, :, ~inside])
    assert int(inside.sum()) == 4


def test_square_patch_per_channel_value_and_edges():
    trig = square_patch((3, 4, 4), size=2, top=2, left=2, value=torch.tensor([0.1, 0.6, 1.0]))
    out = trig.apply(torch.zeros(1, 3, 4, 4))
    for c, v in enumerate([0.1, 0.6, 1.0]):
        expected = torch.zeros(4, 4)
        expected[2:, 2:] = v
        torch.testing.assert_close(out[0, c], expected)
    # default value: white; a patch covering the whole image
    full = square_patch((1, 3, 3), size=3, top=0, left=0)
    assert torch.equal(full.apply(torch.zeros(2, 1, 3, 3)), torch.ones(2, 1, 3, 3))


@pytest.mark.parametrize(
    "size,top,left", [(2, 3, 0), (2, 0, 3), (2, -1, 0), (2, 0, -1), (5, 0, 0), (3, 2, 2)]
)
def test_square_patch_out_of_bounds_raises(size, top, left):
    with pytest.raises(ValueError):
        square_patch((1, 4, 4), size=size, top=top, left=left)


# --------------------------------------------------------------------------- poisoning


def dataset(n_per_class=10, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n_per_class * classes, 1, 5, 5, generator=g) * 0.8
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    perm = torch.randperm(len(labels), generator=g)
    return images[perm], labels[perm]


PATCH = square_patch((1, 5, 5), size=2, top=3, left=3, value=1.0)


@pytest.mark.parametrize("rate,count", [(0.0, 0), (0.01, 0), (0.02, 1), (0.1, 3), (0.29, 9), (0.5, 15), (1.0, 30)])
def test_poison_exact_count_of_non_target_images(rate, count):
    images, labels = dataset()
    out = poison(images, labels, PATCH, target=0, rate=rate, seed=1)
    assert isinstance(out, PoisonedSet)
    assert out.poisoned.numel() == count
    assert bool((labels[out.poisoned] != 0).all())
    assert len(set(out.poisoned.tolist())) == count
    assert torch.equal(out.poisoned, out.poisoned.sort().values)


def test_poison_changes_exactly_the_chosen_images():
    images, labels = dataset()
    images_before, labels_before = images.clone(), labels.clone()
    out = poison(images, labels, PATCH, target=2, rate=0.3, seed=4)
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    chosen[out.poisoned] = True
    assert int(chosen.sum()) == 9  # round(0.3 * 30)
    # poisoned: stamped and relabelled
    assert torch.equal(out.images[chosen], PATCH.apply(images_before[chosen]))
    assert bool((out.labels[chosen] == 2).all())
    assert bool((labels_before[chosen] != 2).all())
    # the stamp really changes them
    assert not torch.equal(out.images[chosen], images_before[chosen])
    # the rest: identical
    assert torch.equal(out.images[~chosen], images_before[~chosen])
    assert torch.equal(out.labels[~chosen], labels_before[~chosen])
    # inputs untouched
    assert torch.equal(images, images_before) and torch.equal(labels, labels_before)
    # class 2 grew by exactly the poisoned count
    assert int((out.labels == 2).sum()) == 10 + 9


def test_poison_source_classes_only():
    images, labels = dataset()
    out = poison(images, labels, PATCH, target=0, rate=0.5, source_classes=[3], seed=0)
    assert out.poisoned.numel() == 5  # round(0.5 * 10)
    assert bool((labels[out.poisoned] == 3).all())
    untouched = torch.ones(len(labels), dtype=torch.bool)
    untouched[out.poisoned] = False
    assert torch.equal(out.images[untouched], images[untouched])
    assert torch.equal(out.labels[untouched], labels[untouched])
    # two source classes, one of them the target itself (never eligible)
    out2 = poison(images, labels, PATCH, target=0, rate=1.0, source_classes=[0, 1, 2], seed=0)
    assert out2.poisoned.numel() == 20
    assert set(labels[out2.poisoned].tolist()) == {1, 2}
    assert bool((out2.labels[labels == 3] == 3).all())


def test_poison_seeded():
    images, labels = dataset()
    a = poison(images, labels, PATCH, target=1, rate=0.3, seed=7)
    b = poison(images, labels, PATCH, target=1, rate=0.3, seed=7)
    c = poison(images, labels, PATCH, target=1, rate=0.3, seed=8)
    assert torch.equal(a.poisoned, b.poisoned)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.poisoned, c.poisoned)


@pytest.mark.parametrize("rate", [-0.1, 1.5])
def test_poison_rate_out_of_range(rate):
    images, labels = dataset()
    with pytest.raises(ValueError):
        poison(images, labels, PATCH, target=0, rate=rate)


# --------------------------------------------------------------------------- training


def separable(n=120, seed=0):
    """Class 0: bright left half; class 1: bright right half (1x8x8)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.4
    y = torch.arange(n) % 2
    x[y == 0, :, :, :4] += 0.5
    x[y == 1, :, :, 4:] += 0.5
    return x, y


def linear(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def test_train_classifier_learns_separable_problem():
    x, y = separable()
    model = linear(seed=3)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    assert accuracy(model.eval(), x, y) == 0.5  # all ties → class 0: not solved before training
    losses = []
    out = train_classifier(model, x, y, epochs=6, batch_size=16, lr=0.1, seed=0,
                           on_epoch=lambda e, l: losses.append((e, l)))
    assert out is model and not model.training
    assert [e for e, _ in losses] == list(range(6))
    assert losses[-1][1] < losses[0][1]
    xt, yt = separable(seed=1)
    assert accuracy(model, xt, yt) >= 0.95


@pytest.mark.parametrize("noise_sigma", [0.0, 0.5])
def test_train_classifier_reproducible_by_seed(noise_sigma):
    x, y = separable()

    def run(seed):
        m = linear(seed=0)
        train_classifier(m, x, y, epochs=2, batch_size=16, lr=0.05, noise_sigma=noise_sigma, seed=seed)
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_backdoor_end_to_end_tiny():
    """Poison a separable set with a corner patch → the trained model learns the backdoor."""
    x, y = separable(n=200)
    trig = square_patch((1, 8, 8), size=3, top=0, left=0, value=1.0)
    data = poison(x, y, trig, target=1, rate=0.3, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 2))
    train_classifier(model, data.images, data.labels, epochs=15, batch_size=20, lr=0.05, seed=0)
    xt, yt = separable(n=100, seed=2)
    assert accuracy(model, xt, yt) >= 0.9
    assert attack_success_rate(model, trig, xt, yt, target=1) >= 0.8
    # the same patch elsewhere in the left half is not the backdoor
    other = square_patch((1, 8, 8), size=3, top=5, left=0, value=1.0)
    assert attack_success_rate(model, other, xt, yt, target=1) < 0.5
