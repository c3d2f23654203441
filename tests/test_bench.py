"""Benchmark pieces: AUROC, scan-image choice, Neural Cleanse's own decision rule."""

from __future__ import annotations

import pytest
import torch

from smoothinv.bench.detect import auroc, scan_image
from smoothinv.detection.decision import DecisionRule
from smoothinv.detection.scan import ClassResult, Evidence, RunRecord, _decide
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


def _nc_verdict(norms: list[float]) -> tuple[list[int], float]:
    """The scan's decision for a method judged on its mask norm (Neural Cleanse): (flagged, score)."""
    classes = [_class_result(c, n) for c, n in enumerate(norms)]
    for c in classes:
        c.candidates = {None: c.evidence}
    rule = _decide(classes, (), DecisionRule(), "mask_l1")
    assert "Neural Cleanse" in rule
    return [c.label for c in classes if c.flagged], max(c.score for c in classes)


def test_nc_decision_flags_small_mask_outlier():
    flagged, score = _nc_verdict([10.0, 11.0, 9.5, 10.5, 1.0, 10.2])
    assert flagged == [4] and score > 2
    flagged, score = _nc_verdict([10.0 + 0.1 * c for c in range(6)])
    assert flagged == [] and score <= 2
    # a large mask is never suspicious
    flagged, _ = _nc_verdict([10.0, 11.0, 9.5, 10.5, 100.0, 10.2])
    assert flagged == []


def _row(model: str, backdoored: bool, score: float, found: bool | None) -> dict:
    flagged = [3] if score > 4 else []
    return {"model": model, "backdoored": backdoored, "true_target": 3 if backdoored else None,
            "verdict": "backdoored" if flagged else "clean", "flagged": flagged, "score": score,
            "correct": bool(flagged) == backdoored, "target_found": found, "seconds": 10.0}


SETTINGS = {"method": "smoothinv", "steps": 200, "noise_samples": 8, "sigmas": [0.25, 0.5, 1.0],
            "fallback_sigmas": [0.12], "clean_images": 500, "seed": 0}


def test_merge_reports_recomputes_the_summary_over_all_shards():
    from smoothinv.bench.detect import merge_reports, summarize

    a = {"settings": SETTINGS, "rows": [_row("m-bad", True, 9.0, True), _row("m-clean", False, 1.5, None)]}
    b = {"settings": SETTINGS, "rows": [_row("a-bad", True, 1.0, False)]}
    merged = merge_reports([a, b])
    assert [r["model"] for r in merged["rows"]] == ["a-bad", "m-bad", "m-clean"]
    assert merged["summary"] == summarize(merged["rows"], "smoothinv")
    assert merged["summary"]["models"] == 3 and merged["summary"]["auroc"] == 0.5
    assert merged["summary"]["target_identification"] == 0.5


@pytest.mark.parametrize("shards, message", [
    ([], "nothing to merge"),
    ([{"rows": []}], "not a detection benchmark report"),
    ([{"settings": SETTINGS, "rows": [{"model": "x"}]}], "needs settings and rows"),
    ([{"settings": SETTINGS, "rows": []}, {"settings": {**SETTINGS, "steps": 100}, "rows": []}], "other settings"),
    ([{"settings": SETTINGS, "rows": [_row("x", True, 9.0, True)]}] * 2, "more than one report"),
])
def test_merge_reports_refuses_what_is_not_one_run(shards, message):
    from smoothinv.bench.detect import merge_reports
    from smoothinv.errors import SmoothInvError

    with pytest.raises(SmoothInvError, match=message):
        merge_reports(shards)


def test_bench_merge_cli(tmp_path, monkeypatch, capsys):
    import json

    from smoothinv.cli.main import main

    (tmp_path / "a.json").write_text(json.dumps({"settings": SETTINGS, "rows": [_row("m-bad", True, 9.0, True)]}))
    (tmp_path / "b.json").write_text(json.dumps({"settings": SETTINGS, "rows": [_row("m-clean", False, 1.5, None)]}))
    (tmp_path / "bad.json").write_text("{not json")

    def run(*args):
        monkeypatch.setattr("sys.argv", ["smoothinv", "bench", "merge", *args])
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr()

    code, out = run(str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--out", str(tmp_path / "all.json"))
    assert code == 0, out.err
    merged = json.loads((tmp_path / "all.json").read_text())
    assert merged["summary"]["verdict_accuracy"] == 1.0 and merged["summary"]["auroc"] == 1.0
    for broken in ("bad.json", "missing.json"):
        code, out = run(str(tmp_path / "a.json"), str(tmp_path / broken), "--out", str(tmp_path / "x.json"))
        assert code == 2 and out.err.startswith("error:") and broken in out.err and "Traceback" not in out.err
        assert not (tmp_path / "x.json").exists()
