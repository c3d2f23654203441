"""Attack specs: exact trigger geometry and values per attack, registry, round trips, poisoning."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from smoothinv.attacks import (
    AttackSpec,
    BlendTrigger,
    RandomPatchTrigger,
    attack_from_dict,
    get_attack,
    list_attacks,
    poison_with,
    register_attack,
)
from smoothinv.errors import SmoothInvError
from smoothinv.triggers import MaskedTrigger

SHAPES = [(3, 32, 32), (1, 28, 28)]
ALL = ["badnets", "blend", "blind-g", "blind-p", "blind-s", "clip", "htba", "patch", "trojai"]




def spec(name: str, **params) -> AttackSpec:
    if name == "trojai":
        params.setdefault("source_classes", (1, 2))
    return get_attack(name, target=params.pop("target", 0), **params)


def images(shape, n: int = 4, seed: int = 0) -> torch.Tensor:
    """Random images strictly inside (0,1), so any stamped 0 or 1 shows as a change."""
    g = torch.Generator().manual_seed(seed)
    return 0.05 + 0.9 * torch.rand(n, *shape, generator=g)


def changed(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[H,W] bool: pixels changed in any image or channel."""
    return (before != after).any(dim=0).any(dim=0)


def box(shape, top: int, left: int, height: int, width: int) -> torch.Tensor:
    _, h, w = shape
    m = torch.zeros(h, w, dtype=torch.bool)
    m[top : top + height, left : left + width] = True
    return m


# --------------------------------------------------------------------------- registry


def test_registry_lists_every_attack():
    assert list(list_attacks()) == ALL
    assert all(isinstance(d, str) and d for d in list_attacks().values())


def test_unknown_attack_lists_names():
    with pytest.raises(SmoothInvError, match="unknown attack 'nope'.*badnets.*trojai"):
        get_attack("nope", target=0)


def test_bad_parameters_are_user_errors():
    with pytest.raises(SmoothInvError, match="no parameter 'size'"):
        get_attack("badnets", target=0, size=3)
    with pytest.raises(SmoothInvError, match="target"):
        get_attack("badnets")
    with pytest.raises(SmoothInvError, match="target"):
        get_attack("badnets", target=-1)
    with pytest.raises(SmoothInvError, match="source_classes"):
        get_attack("badnets", target=0, source_classes=())
    with pytest.raises(SmoothInvError, match="alpha"):
        get_attack("blend", target=0, alpha=1.5)
    with pytest.raises(SmoothInvError, match="'attack' key"):
        attack_from_dict({"target": 0})


@pytest.mark.parametrize("sources", [None, ()])
def test_trojai_requires_source_classes(sources):
    with pytest.raises(SmoothInvError, match="source_classes"):
        get_attack("trojai", target=0, source_classes=sources)


def test_register_attack_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):

        @register_attack
        @dataclass(frozen=True)
        class Again(AttackSpec):
            name: ClassVar[str] = "badnets"


def test_too_small_images_are_user_errors():
    with pytest.raises(SmoothInvError, match="does not fit"):
        spec("clip").trigger((1, 4, 4))
    with pytest.raises(SmoothInvError, match="does not fit"):
        spec("blind-p").trigger((1, 4, 4))


# --------------------------------------------------------------------------- every attack


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ALL)
def test_trigger_is_deterministic_and_pure(name, shape):
    x = images(shape)
    before = x.clone()
    a = spec(name).trigger(shape).apply(x)
    b = spec(name).trigger(torch.Size(shape)).apply(x)
    assert torch.equal(x, before)  # not in place
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ["badnets", "blind-g", "blind-p", "blind-s", "clip", "trojai"])
def test_masked_triggers_leave_other_pixels_alone(name, shape):
    trigger = spec(name).trigger(shape)
    assert isinstance(trigger, MaskedTrigger)
    mask = trigger.mask[0] > 0
    assert set(trigger.mask.unique().tolist()) == {0.0, 1.0}
    x = images(shape)
    out = trigger.apply(x)
    assert torch.equal(out[..., ~mask], x[..., ~mask])
    assert torch.equal(out[..., mask], trigger.pattern[:, mask].expand(len(x), -1, -1))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", ALL)
def test_dict_round_trip_gives_identical_triggered_images(name, shape):
    s = spec(name, target=3, seed=7)
    d = s.to_dict()
    assert d["attack"] == name
    again = attack_from_dict(json.loads(json.dumps(d)))
    assert again == s and type(again) is type(s)
    x = images(shape)
    assert torch.equal(s.trigger(shape).apply(x), again.trigger(shape).apply(x))


def test_to_dict_lists_every_parameter():
    assert spec("blend", target=2, seed=5, alpha=0.25).to_dict() == {
        "attack": "blend", "target": 2, "source_classes": None, "seed": 5, "alpha": 0.25
    }
    assert spec("trojai", source_classes=[4, 1]).to_dict()["source_classes"] == [4, 1]
    assert spec("trojai", source_classes=[4, 1]).source_classes == (4, 1)


# --------------------------------------------------------------------------- geometry, per attack


@pytest.mark.parametrize("shape", SHAPES)
def test_blind_p_pattern(shape):
    trigger = spec("blind-p").trigger(shape)
    c = shape[0]
    # the paper's pattern: 9 opaque pixels (the rest of the 5x3 box is transparent)
    expected = {(0, 3): 1, (0, 4): 0, (0, 5): 1, (1, 4): 1, (2, 5): 0, (3, 4): 1, (4, 3): 1, (4, 4): 0, (4, 5): 1}
    opaque = {tuple(p) for p in (trigger.mask[0] > 0).nonzero().tolist()}
    assert opaque == set(expected)
    for (r, col), v in expected.items():
        assert torch.equal(trigger.pattern[:, r, col], torch.full((c,), float(v)))
    x = images(shape)
    assert torch.equal(changed(x, trigger.apply(x)), _points(shape, expected))


def _points(shape, points) -> torch.Tensor:
    m = torch.zeros(shape[1:], dtype=torch.bool)
    for r, col in points:
        m[r, col] = True
    return m


@pytest.mark.parametrize("shape", SHAPES)
def test_blind_s_single_white_pixel(shape):
    x = images(shape)
    out = spec("blind-s").trigger(shape).apply(x)
    assert torch.equal(changed(x, out), _points(shape, [(0, 3)]))
    assert torch.equal(out[:, :, 0, 3], torch.ones(len(x), shape[0]))


@pytest.mark.parametrize("shape", SHAPES)
def test_blind_g_noise_patch(shape):
    trigger = spec("blind-g", seed=1).trigger(shape)
    assert torch.equal(trigger.mask[0] > 0, box(shape, 0, 3, 3, 3))
    patch = trigger.pattern[:, 0:3, 3:6]
    assert patch.min() >= 0 and patch.max() <= 1 and patch.unique().numel() > 2
    assert torch.equal(patch, spec("blind-g", seed=1).trigger(shape).pattern[:, 0:3, 3:6])
    assert not torch.equal(patch, spec("blind-g", seed=2).trigger(shape).pattern[:, 0:3, 3:6])
    x = images(shape)
    assert torch.equal(trigger.apply(x)[:, :, 0:3, 3:6], patch.expand(len(x), -1, -1, -1))


@pytest.mark.parametrize("shape", SHAPES)
def test_htba_random_square_per_image(shape):
    trigger = spec("htba", seed=3).trigger(shape)
    assert isinstance(trigger, RandomPatchTrigger)
    assert trigger.patch.shape == (shape[0], 4, 4)
    assert trigger.patch.min() >= 0 and trigger.patch.max() <= 1
    x = images(shape, n=8)
    out = trigger.apply(x)
    assert torch.equal(out, trigger.apply(x))  # same batch, same positions
    positions = trigger.positions(8, *shape[1:])
    assert len({tuple(p) for p in positions.tolist()}) > 1  # images get different places
    for i, (top, left) in enumerate(positions.tolist()):
        assert 0 <= top <= shape[1] - 4 and 0 <= left <= shape[2] - 4
        assert torch.equal(out[i, :, top : top + 4, left : left + 4], trigger.patch)
        assert torch.equal(changed(x[i : i + 1], out[i : i + 1]), box(shape, top, left, 4, 4))
    # positions depend on the index in the batch, not on the batch's content
    other = images(shape, n=8, seed=1)
    assert torch.equal(trigger.apply(other) != other, out != x)
    # a different seed moves the squares and changes the colours
    other_trigger = spec("htba", seed=4).trigger(shape)
    assert not torch.equal(other_trigger.positions(8, *shape[1:]), positions)
    assert not torch.equal(other_trigger.patch, trigger.patch)


def test_htba_patch_at_224_is_a_nearest_resized_4x4_grid():
    patch = spec("htba").trigger((3, 224, 224)).patch
    assert patch.shape == (3, 30, 30)
    cells = {tuple(patch[:, r, col].tolist()) for r in range(30) for col in range(30)}
    assert len(cells) == 16


@pytest.mark.parametrize("shape", SHAPES)
def test_trojai_polygon_in_centre_one_colour(shape):
    c, h, w = shape
    trigger = spec("trojai", seed=5).trigger(shape)
    mask = trigger.mask[0] > 0
    assert mask.sum() >= 10
    assert not (mask & ~box(shape, h // 4, w // 4, h - 2 * (h // 4), w - 2 * (w // 4))).any()
    colours = trigger.pattern[:, mask]
    assert torch.equal(colours, colours[:, :1].expand_as(colours))
    x = images(shape)
    assert torch.equal(changed(x, trigger.apply(x)), mask)
    assert not torch.equal(spec("trojai", seed=6).trigger(shape).mask, trigger.mask)


@pytest.mark.parametrize("shape", SHAPES)
def test_clip_checkerboard_bottom_right(shape):
    c, h, w = shape
    trigger = spec("clip").trigger(shape)
    top, left = h - 5, w - 5  # 4x4 cells of 1 px, 1 px margin
    assert torch.equal(trigger.mask[0] > 0, box(shape, top, left, 4, 4))
    board = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]])
    x = images(shape)
    out = trigger.apply(x)
    assert torch.equal(out[:, :, top : top + 4, left : left + 4], board.expand(len(x), c, 4, 4))
    assert torch.equal(changed(x, out), box(shape, top, left, 4, 4))


@pytest.mark.parametrize("shape", SHAPES)
def test_badnets_white_square_in_corner(shape):
    c, h, w = shape
    x = images(shape)
    out = spec("badnets").trigger(shape).apply(x)
    assert torch.equal(changed(x, out), box(shape, h - 3, w - 3, 3, 3))
    assert torch.equal(out[:, :, h - 3 :, w - 3 :], torch.ones(len(x), c, 3, 3))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("alpha", [0.1, 0.25])
def test_blend_formula_exact(shape, alpha):
    trigger = spec("blend", alpha=alpha, seed=2).trigger(shape)
    assert isinstance(trigger, BlendTrigger) and trigger.alpha == alpha
    assert trigger.noise.shape == shape and trigger.noise.min() >= 0 and trigger.noise.max() <= 1
    x = images(shape)
    assert torch.equal(trigger.apply(x), (1 - alpha) * x + alpha * trigger.noise)
    assert not torch.equal(spec("blend", seed=3).trigger(shape).noise, trigger.noise)


def test_geometry_at_the_papers_224():
    shape = (3, 224, 224)
    p = spec("blind-p").trigger(shape).mask[0]
    assert p[3, 23] == 1 and p[:3].sum() == 0 and p[:, :23].sum() == 0 and p.sum() == 9
    assert torch.equal(spec("blind-g").trigger(shape).mask[0] > 0, box(shape, 3, 23, 10, 10))
    assert torch.equal(spec("clip").trigger(shape).mask[0] > 0, box(shape, 204, 204, 16, 16))
    assert torch.equal(spec("badnets").trigger(shape).mask[0] > 0, box(shape, 203, 203, 21, 21))


# --------------------------------------------------------------------------- poisoning


def test_poison_with_source_classes_flips_only_those():
    shape = (1, 28, 28)
    x = images(shape, n=60)
    labels = torch.arange(60) % 5
    s = spec("trojai", target=0, source_classes=(0, 2, 3))
    out = poison_with(s, x, labels, rate=1.0, seed=1)
    assert set(labels[out.poisoned].tolist()) == {2, 3}  # never the target class 0
    assert len(out.poisoned) == 24
    assert (out.labels[out.poisoned] == 0).all()
    untouched = torch.ones(60, dtype=torch.bool)
    untouched[out.poisoned] = False
    assert torch.equal(out.images[untouched], x[untouched])
    assert torch.equal(out.labels[untouched], labels[untouched])
    assert torch.equal(out.images[out.poisoned], s.trigger(shape).apply(x[out.poisoned]))


def test_poison_with_all_sources_spares_target_class():
    x = images((3, 32, 32), n=40)
    labels = torch.arange(40) % 4
    out = poison_with(spec("badnets", target=1), x, labels, rate=0.5, seed=0)
    assert len(out.poisoned) == 15
    assert not (labels[out.poisoned] == 1).any()
    assert torch.equal(out.images[labels == 1], x[labels == 1])


# --------------------------------------------------------------------------- patch (the diverse zoo's BadNets variants)


@pytest.mark.parametrize("corner, top, left", [("top-left", 1, 1), ("top-right", 1, 27), ("bottom-left", 27, 1),
                                               ("bottom-right", 27, 27), ("centre", 14, 14)])
def test_patch_sits_where_its_corner_and_margin_say(corner, top, left):
    shape = (3, 32, 32)
    x = images(shape)
    after = spec("patch", size=4, corner=corner, margin=1, colour=(1.0, 0.0, 0.5)).trigger(shape).apply(x)
    assert torch.equal(changed(x, after), box(shape, top, left, 4, 4))
    patch = after[:, :, top : top + 4, left : left + 4]
    assert torch.equal(patch[:, 0], torch.ones_like(patch[:, 0])) and torch.equal(patch[:, 1], torch.zeros_like(patch[:, 1]))
    assert torch.allclose(patch[:, 2], torch.full_like(patch[:, 2], 0.5))


def test_patch_scales_with_the_image_and_checker_alternates():
    t = spec("patch", size=4, corner="bottom-right", margin=0, pattern="checker", colour=(1.0,)).trigger((1, 64, 64))
    assert isinstance(t, MaskedTrigger) and int(t.mask.sum()) == 64  # 8x8 at 64 px
    cells = t.pattern[0, 56:, 56:]
    assert cells[0, 0] == 1 and cells[0, 1] == 0 and cells[1, 0] == 0 and cells[1, 1] == 1


@pytest.mark.parametrize("params, message", [
    ({"size": 0}, "size"), ({"margin": -1}, "margin"), ({"colour": (1.5,)}, "colour"), ({"corner": "middle"}, "corner"),
    ({"pattern": "stripes"}, "pattern"),
])
def test_patch_refuses_bad_parameters(params, message):
    with pytest.raises(SmoothInvError, match=message):
        spec("patch", **params)


def test_patch_colour_must_match_the_channels():
    with pytest.raises(SmoothInvError, match="3 values; the images have 1 channels"):
        spec("patch", colour=(1.0, 0.0, 0.0)).trigger((1, 28, 28))
