"""Benchmark pieces: AUROC, scan-image choice, Neural Cleanse's own decision rule."""

from __future__ import annotations

import torch

from smoothinv.bench.detect import auroc, nc_decision, scan_image
from smoothinv.detection.scan import ClassResult, Evidence, RunRecord, ScanResult, ScanSettings
from smoothinv.methods.base import InversionResult
from smoothinv.triggers import AdditiveTrigger


def test_auroc():
    assert auroc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert auroc([0.1], [0.9]) == 0.0
    assert auroc([0.5], [0.5]) == 0.5
    assert auroc([0.9, 0.1], [0.5]) == 0.5
    assert auroc([], [0.5]) is None


def test_scan_image_avoids_target_and_is_seeded():
    labels = torch.tensor([3, 3, 1, 3, 2, 3])
    picks = {scan_image(labels, 3, seed) for seed in range(20)}
    assert picks <= {2, 4} and len(picks) == 2
    assert scan_image(labels, 3, 5) == scan_image(labels, 3, 5)


def _class_result(label: int, mask_l1: float) -> ClassResult:
    x = torch.zeros(1, 2, 2)
    r = InversionResult("nc", label, x, x, AdditiveTrigger(x), torch.zeros(2), torch.zeros(2), {}, 0.0,
                        extras={"mask_l1": mask_l1})
    return ClassResult(label, 0, [RunRecord.of(r, 0.5)], {}, evidence=Evidence(r, 0.5, {}))


def test_nc_decision_flags_small_mask_outlier():
    classes = [_class_result(c, n) for c, n in enumerate([10.0, 11.0, 9.5, 10.5, 1.0, 10.2])]
    result = ScanResult(ScanSettings(method="nc"), (), (), None, classes, {}, [0], {}, False)
    flagged, score = nc_decision(result)
    assert flagged == [4] and score > 2
    calm = ScanResult(ScanSettings(method="nc"), (), (), None, [_class_result(c, 10.0 + 0.1 * c) for c in range(6)], {}, [0], {}, False)
    flagged, score = nc_decision(calm)
    assert flagged == [] and score <= 2
