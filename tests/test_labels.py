"""smoothinv.labels.eligible: the one rule for which images a backdoor is meant to flip."""

from __future__ import annotations

import torch

from smoothinv.attacks import poison
from smoothinv.labels import eligible
from smoothinv.triggers import square_patch


def test_all_classes_but_the_target() -> None:
    labels = torch.tensor([0, 1, 2, 1, 0, 3])
    assert eligible(labels, 1).tolist() == [True, False, True, False, True, True]


def test_label_specific_backdoor_takes_only_its_sources() -> None:
    labels = torch.tensor([0, 1, 2, 1, 0, 3])
    assert eligible(labels, 1, [0, 3]).tolist() == [True, False, False, False, True, True]
    assert eligible(labels, 1, (1, 2)).tolist() == [False, False, True, False, False, False]  # the target never is


def test_empty_and_all_target_sets() -> None:
    assert eligible(torch.zeros(0, dtype=torch.long), 0).tolist() == []
    assert not eligible(torch.full((4,), 2), 2).any()


def test_poisoning_picks_only_eligible_images() -> None:
    labels = torch.arange(10).repeat(5)
    images = torch.zeros(len(labels), 1, 8, 8)
    poisoned = poison(images, labels, square_patch((1, 8, 8), 2, 0, 0), 4, 1.0, source_classes=[6, 7])
    assert sorted(set(labels[poisoned.poisoned].tolist())) == [6, 7]
    assert len(poisoned.poisoned) == int(eligible(labels, 4, [6, 7]).sum())
