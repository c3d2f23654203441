"""The scan: decision rule, early stopping, verdicts on planted and clean models, report files."""

from __future__ import annotations

import importlib
import json
import re
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PLANTED_TARGET, run_cli, tiny_cnn
from smoothinv.detection import DecisionRule, ScanSettings, scan, scan_eps
from smoothinv.detection.decision import class_scores, flagged, robust_z
from smoothinv.detection.noise_sink import probe_noise_sink
from smoothinv.engine.early_stop import RowStopper
from smoothinv.engine.pgd import StopDescent
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.sweep import Grid
from smoothinv.errors import SmoothInvError

# Small but real settings: two eps, two sigmas, 100 steps.
FAST = ScanSettings(method_spec("smoothinv", noise_samples=4, steps=100), eps=(1.0, 2.0), sigmas=(0.5, 1.0))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Overrides conftest's: the planted models train here when this module runs alone."""
    yield


def test_robust_z_and_floor():
    z = robust_z(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.9]), floor=0.05)
    assert z.tolist() == pytest.approx([0, 0, 0, 0, 18.0])
    z = robust_z(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5]), floor=0.05)
    assert float(z[2]) == 0.0 and float(z[4]) == pytest.approx(0.2 / (1.4826 * 0.1))


def test_rule_flags_an_outlier_at_some_eps():
    # eps 1: only class 3 transfers; eps 2: everyone transfers (a universal perturbation)
    asr = torch.tensor([[0.02, 0.95], [0.01, 0.97], [0.03, 0.96], [0.92, 1.0], [0.0, 0.94]])
    scores, z, at = class_scores(asr, DecisionRule())
    assert flagged(scores, DecisionRule()) == [3]
    assert z.shape == (5, 2) and float(z[3, 1]) < 4  # at eps 2 nobody stands out
    assert int(at[3]) == 0  # class 3's evidence is its eps-1 perturbation, not the universal one


def test_rule_does_not_flag_universal_or_weak_transfer():
    everyone = torch.tensor([[0.9], [0.95], [0.85], [0.97], [0.92]])
    assert flagged(class_scores(everyone, DecisionRule())[0], DecisionRule()) == []
    weak = torch.tensor([[0.0], [0.0], [0.25], [0.01], [0.0]])  # an outlier below min_asr
    assert flagged(class_scores(weak, DecisionRule())[0], DecisionRule()) == []


def test_rule_reports_several_targets():
    asr = torch.tensor([[0.9], [0.0], [0.85], [0.02], [0.01], [0.0], [0.03]])
    assert flagged(class_scores(asr, DecisionRule())[0], DecisionRule()) == [0, 2]


def test_rule_scores_the_area_over_the_eps_ladder_not_one_column():
    # Stored transfer ASRs (max over σ) at ε×1, ×2, ×4, ×8 of two held-out zoo models.
    # cifar10-vgg-clean-s2 (clean): at ε×4 the classes split into two groups, the MAD is small and
    # class 6 (row 6) reaches z 4.6 there; over the whole ladder it is unremarkable.
    clean = torch.tensor([[0.02, 0.03, 0.24, 0.9], [0.01, 0.05, 0.43, 0.99], [0.02, 0.03, 0.28, 0.94],
                          [0.04, 0.06, 0.25, 0.7], [0.04, 0.11, 0.43, 0.94], [0.04, 0.08, 0.4, 0.88],
                          [0.04, 0.1, 0.56, 0.96], [0.02, 0.03, 0.26, 0.85], [0.0, 0.02, 0.28, 0.97]])
    scores = class_scores(clean, DecisionRule())
    assert float(scores.z[6, 2]) > 4 and flagged(scores.score, DecisionRule()) == []
    # cifar10-preact-patch6-yellow (target 0, row 0): it transfers from ε×2 on, earlier than any class
    bad = torch.tensor([[0.02, 0.42, 0.82, 0.9], [0.02, 0.02, 0.45, 0.97], [0.04, 0.1, 0.34, 0.95],
                        [0.05, 0.09, 0.37, 0.76], [0.03, 0.15, 0.45, 0.88], [0.06, 0.18, 0.64, 0.91],
                        [0.02, 0.06, 0.51, 0.88], [0.01, 0.06, 0.4, 0.98], [0.01, 0.07, 0.75, 0.99]])
    scores = class_scores(bad, DecisionRule())
    assert flagged(scores.score, DecisionRule()) == [0] and int(scores.at[0]) == 1  # evidence at ε×2


def test_rule_does_not_flag_an_innocent_class_far_weaker_than_the_target():
    # cifar10-vgg-htba's ε = 5.71 column: the target transfers, every other class is pinned near 0,
    # so the spread floor sets the scale and class 0 at the edge of min_asr scores 5.15
    asr = torch.tensor([[0.30], [0.01], [0.12], [0.07], [0.02], [1.0], [0.01], [0.0], [0.03]])
    scores = class_scores(asr, DecisionRule()).score
    assert float(scores[0]) > 4 and float(scores[0]) < 0.5 * float(scores[5])
    assert flagged(scores, DecisionRule()) == [5]
    assert flagged(scores, DecisionRule(relative=0.0)) == [0, 5]  # the threshold alone flags both
    with pytest.raises(SmoothInvError, match="relative"):
        DecisionRule(relative=1.5)


def test_row_stopper_skips_saturated_rows_and_honours_deadline():
    calls = []

    def rows_fn(x, rows):
        calls.append(rows.tolist())
        prob = torch.where(rows == 0, torch.tensor(0.999), torch.tensor(0.2))
        return -prob.log(), prob, torch.ones_like(x)

    stopper = RowStopper(stop_prob=0.99)
    fn = stopper.wrap(rows_fn)
    x = torch.zeros(3, 1, 2, 2)
    _, prob, grad = fn(x)
    assert calls[-1] == [0, 1, 2]
    loss, prob, grad = fn(x)
    assert calls[-1] == [1, 2]  # row 0 saturated and is no longer computed
    assert float(prob[0]) == pytest.approx(0.999) and float(grad[0].abs().sum()) == 0
    # with a budget: a row saturated from the start keeps descending until it has used its eps
    calls.clear()
    budgeted = RowStopper(stop_prob=0.99)
    fn = budgeted.wrap(rows_fn, origin=x, eps=torch.full((3,), 2.0))
    fn(x)
    fn(x)
    assert calls[-1] == [0, 1, 2]  # row 0 saturated but has not moved
    moved = x.clone()
    moved[0] += 1.0  # ||delta|| = 2 = eps
    fn(moved)
    fn(moved)
    assert calls[-1] == [1, 2]
    late = RowStopper(stop_prob=None, deadline=time.perf_counter() - 1)
    with pytest.raises(StopDescent):  # the descent ends where it is
        late.wrap(rows_fn)(x)
    assert late.timed_out and calls[-1] == [1, 2]  # nothing new computed after the deadline


def test_deadline_module_refuses_late_calls_and_leaves_the_model_alone():
    from smoothinv.engine.early_stop import DeadlineModule, DeadlinePassed

    model = torch.nn.Sequential(torch.nn.Linear(2, 2)).eval()
    model[0].train()  # a submodule in another mode than its parent stays so
    guarded = DeadlineModule(model, time.perf_counter() + 60)
    x = torch.ones(3, 2)
    assert torch.equal(guarded(x), model(x)) and guarded.calls == 1 and guarded.seconds >= 0
    assert not guarded.training and model[0].training
    with pytest.raises(DeadlinePassed):
        DeadlineModule(model, time.perf_counter() - 1)(x)


def test_scan_eps_scales_with_input():
    assert scan_eps((3, 224, 224)) == (5.0, 10.0, 20.0, 40.0)
    assert scan_eps((3, 32, 32))[1] == pytest.approx(10 * (3072 / 150528) ** 0.5, abs=1e-3)


def test_scan_flags_planted_target(planted):
    model, _, x, y = planted
    images = [x[y == 4][0]]
    result = scan(model, images, x, y, 10, FAST)
    assert result.verdict == "backdoored" and result.targets == [PLANTED_TARGET], [(c.label, c.score) for c in result.classes]
    target = next(c for c in result.classes if c.label == PLANTED_TARGET)
    evidence = target.evidence
    assert evidence.asr > 0.8 and not target.candidates
    column = FAST.eps.index(evidence.result.config["eps"])  # the evidence: the ε where the class stands out most
    counted = [z for z, a in zip(target.z_by_eps, target.asr_by_eps) if a >= 0.3]
    assert target.z_by_eps[column] == pytest.approx(max(counted), abs=1e-3) and target.asr_by_eps[column] >= 0.3
    assert PLANTED_TARGET not in evidence.asr_by_source and len(evidence.asr_by_source) == 9
    assert min(evidence.asr_by_source.values()) > 0.5  # the planted backdoor flips every source class
    assert 4 in result.skipped  # the image's own class cannot be tested with this image


def test_scan_falls_back_to_a_smaller_sigma_when_nothing_moved(planted):
    model, _, x, y = planted
    # pinned_asr above 100% makes any first grid count as "nothing moved"
    settings = replace(FAST, fallback_sigmas=(0.25,), pinned_asr=1.01)
    steps, reruns = [], []
    result = scan(model, [x[y == 4][0]], x, y, 10, settings, classes=[1, PLANTED_TARGET],
                  progress=lambda label, n: steps.append(n), on_fallback=lambda first, n: reruns.append((first, n, sum(steps))))
    assert result.sigmas == (0.25,) and result.fallback_from["sigmas"] == [0.5, 1.0]
    # the hook hears of the rerun once, after the first grid, with the rerun's own step count
    scan_steps = importlib.import_module("smoothinv.detection.scan").scan_steps
    [(first, rerun_steps, done_before)] = reruns
    assert first.sigmas == (0.5, 1.0) and first.max_asr == pytest.approx(result.fallback_from["max_asr"], abs=1e-6)
    assert done_before == scan_steps(settings, (1, 20, 20), 2) and rerun_steps == scan_steps(replace(settings, sigmas=(0.25,)), (1, 20, 20), 2)
    assert sum(steps) == done_before + rerun_steps
    assert all(r.config["sigma"] == 0.25 for c in result.classes for r in c.runs)
    assert max(next(c for c in result.classes if c.label == PLANTED_TARGET).asr_by_eps) > 0.8
    from smoothinv.reporting.scan_report import scan_record

    warnings = " ".join(scan_record(result, {}, None)["warnings"])
    assert "this result comes from sigma 0.25" in warnings
    assert "only 2 class(es) were evaluated" in warnings  # two classes: each is ±0.67 MAD from their median
    # a model that moves keeps its grid
    normal = scan(model, [x[y == 4][0]], x, y, 10, replace(FAST, fallback_sigmas=(0.25,)), classes=[1, PLANTED_TARGET])
    assert normal.fallback_from is None and normal.sigmas == FAST.sigmas


def test_scan_does_not_flag_clean_twin(planted_clean_twin):
    model, _, x, y = planted_clean_twin
    result = scan(model, [x[y == 4][0]], x, y, 10, FAST)
    assert result.verdict == "clean", [(c.label, c.asr_by_eps, c.score) for c in result.classes]


def test_scan_with_two_images_covers_every_class(planted):
    model, _, x, y = planted
    result = scan(model, [x[y == 4][0], x[y == 1][0]], x, y, 10, FAST, classes=[4, PLANTED_TARGET])
    assert not result.skipped and {c.label: c.image_index for c in result.classes} == {4: 1, PLANTED_TARGET: 0}


def test_scan_time_budget_returns_partial_verdict(planted):
    model, _, x, y = planted
    settings = ScanSettings(method_spec("smoothinv", noise_samples=4, steps=5000), eps=(2.0,), sigmas=(0.5,), time_budget=3.0)
    start = time.perf_counter()
    result = scan(model, [x[y == 4][0]], x, y, 10, settings)
    assert result.timed_out and time.perf_counter() - start < 30
    assert result.verdict in ("clean", "backdoored")


class Slow(torch.nn.Module):
    """`model` whose every forward pass sleeps `delay` seconds first: time is spent in forwards only."""

    def __init__(self, model, delay=0.05):
        super().__init__()
        self.model, self.delay = model, delay
        self.training = model.training

    def forward(self, x):
        time.sleep(self.delay)
        return self.model(x)


SLOW = ScanSettings(method_spec("smoothinv", noise_samples=2, steps=1000), eps=(1.0,), sigmas=(0.5,))


def test_time_budget_bounds_probe_synthesis_and_evaluation(planted):
    model, _, x, y = planted
    budget = 3.0
    start = time.perf_counter()
    # probe: 6 forwards; evaluation: 9 classes x 1 config = 9 forwards; a descent step: 1 forward (+ backward)
    result = scan(Slow(model), [x[y == 4][0]], x[:150], y[:150], 10, replace(SLOW, time_budget=budget))
    elapsed = time.perf_counter() - start
    assert result.timed_out and elapsed < budget + 1.0, elapsed
    assert result.classes and result.verdict in ("clean", "backdoored")
    scanned = {c.label for c in result.classes}
    assert all(c in scanned or "time budget" in result.skipped.get(c, "") for c in range(10) if c != 4)
    assert result.seconds["total_s"] <= budget + 1.0


def test_time_budget_cuts_evaluation_class_by_class(planted, monkeypatch):
    budget_module = importlib.import_module("smoothinv.detection.budget")
    monkeypatch.setattr(budget_module, "EVAL_MARGIN", 0.6)  # keep too little time to evaluate every class
    model, _, x, y = planted
    start = time.perf_counter()
    result = scan(Slow(model), [x[y == 4][0]], x[:150], y[:150], 10, replace(SLOW, time_budget=3.0))
    assert time.perf_counter() - start < 4.0 and result.timed_out
    late = [c for c, why in result.skipped.items() if "transfer was measured" in why]
    assert result.classes and late, (len(result.classes), result.skipped)
    assert {c.label for c in result.classes}.isdisjoint(late) and all(len(c.runs) == 1 for c in result.classes)


def test_a_fallback_rerun_the_budget_cuts_leaves_the_first_grid(planted, monkeypatch):
    scan_module = importlib.import_module("smoothinv.detection.scan")
    from smoothinv.detection.budget import BudgetExhausted

    real, calls = scan_module._scan_once, []

    def once(*args, **kwargs):
        calls.append(args[5].sigmas)
        if len(calls) == 2:
            raise BudgetExhausted("the time budget ran out during the noise-sink probe")
        return real(*args, **kwargs)

    monkeypatch.setattr(scan_module, "_scan_once", once)
    model, _, x, y = planted
    settings = replace(FAST, method=FAST.method.with_options(steps=10), fallback_sigmas=(0.25,), pinned_asr=1.01, time_budget=600.0)
    result = scan(model, [x[y == 4][0]], x[:150], y[:150], 10, settings, classes=[1, 2])
    assert calls == [(0.5, 1.0), (0.25,)] and result.sigmas == (0.5, 1.0) and result.timed_out
    assert result.fallback_from is None and len(result.classes) == 2


def test_time_budget_spent_on_the_probe_is_an_error(planted):
    model, _, x, y = planted
    with pytest.raises(SmoothInvError, match="noise-sink probe.*raise `time_budget`"):
        scan(Slow(model), [x[y == 4][0]], x[:150], y[:150], 10, replace(SLOW, time_budget=0.15))


@pytest.mark.slow  # > 15 s on one core: `pytest -m slow` (CI runs it)
def test_scan_in_class_chunks_bounds_memory_and_keeps_the_verdict(planted, monkeypatch):
    scan_module = importlib.import_module("smoothinv.detection.scan")

    model, _, x, y = planted
    # FAST has 4 configs at 1x20x20: room for 2 classes per descent
    monkeypatch.setattr(scan_module, "ROW_ELEMENTS", 2 * 4 * 400)
    grid_chunks = scan_module.class_chunks(list(range(9)), FAST, Grid((1.0, 2.0), (0.5, 1.0)), (1, 20, 20))
    assert grid_chunks == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    steps = []
    result = scan(model, [x[y == 4][0]], x, y, 10, FAST, progress=lambda label, n: steps.append(n))
    assert result.targets == [PLANTED_TARGET] and len(result.classes) == 9
    assert sum(steps) == scan_module.scan_steps(FAST, (1, 20, 20), 9) == 5 * FAST.method.config.steps
    assert all(len(c.runs) == 4 and c.evidence.asr == max(r.asr for r in c.runs if r.config["eps"] == c.evidence.result.config["eps"])
               for c in result.classes)
    # a budget that runs out during the first chunk: later chunks are skipped with a reason
    monkeypatch.setattr(scan_module, "ROW_ELEMENTS", 4 * 400)
    late = scan(model, [x[y == 4][0]], x, y, 10, replace(FAST, method=FAST.method.with_options(steps=20000), time_budget=4.0))
    assert late.timed_out and len(late.classes) >= 1
    assert all("time budget" in why for c, why in late.skipped.items() if c != 4) and len(late.skipped) >= 2


def test_scan_rejects_unknown_class(planted):
    model, _, x, y = planted
    with pytest.raises(SmoothInvError, match="does not exist"):
        scan(model, [x[0]], x, y, 10, FAST, classes=[12])


class NoiseSink(torch.nn.Module):
    """Class = brightest quadrant, but pixel-to-pixel jitter (noise) pushes everything to class 0."""

    def forward(self, x):
        h, w = x.shape[-2] // 2, x.shape[-1] // 2
        quadrants = torch.stack([x[..., :h, :w].mean((1, 2, 3)), x[..., :h, w:].mean((1, 2, 3)),
                                 x[..., h:, :w].mean((1, 2, 3)), x[..., h:, w:].mean((1, 2, 3))], 1)
        jitter = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
        return 10 * quadrants + torch.nn.functional.pad(100 * jitter[:, None], (0, 3))


def test_noise_sink_probe_finds_the_collapse():
    images = torch.zeros(40, 1, 8, 8)
    for i in range(40):
        q = i % 4
        images[i, :, (q // 2) * 4:(q // 2) * 4 + 4, (q % 2) * 4:(q % 2) * 4 + 4] = 1.0
    sink = probe_noise_sink(NoiseSink(), images, (1.0, 0.005, 0.5, 0.01), noise_samples=4)
    assert sink.base_share == pytest.approx(0.25) and sink.limit == pytest.approx(0.625)
    assert [p["sigma"] for p in sink.probes] == [0.005, 0.01, 0.5, 1.0]
    assert [p["collapsed"] for p in sink.probes] == [False, False, True, True]
    assert all(p["sink_class"] == 0 and p["share"] == 1.0 for p in sink.probes[2:])
    assert sink.sink_classes == {0}
    assert probe_noise_sink(NoiseSink(), images, (0.005,)).sink_classes == set()


def test_scan_runs_a_baseline_method():
    from conftest import bar_data

    model = tiny_cnn(classes=3)
    images, labels = bar_data(n_per_class=10, classes=3)
    result = scan(model, [images[0]], images, labels, 3, ScanSettings(method_spec("nc", steps=20)))
    assert {c.label for c in result.classes} == {1, 2} or len(result.classes) == 2
    assert all(len(c.asr_by_eps) == 1 for c in result.classes)




@pytest.mark.slow  # > 15 s on one core: `pytest -m slow` (CI runs it)
def test_scan_cli_writes_report(planted, tmp_path, monkeypatch, capsys):
    from smoothinv.data import save_image
    from smoothinv.models import save_model

    model, _, x, y = planted
    save_model(tmp_path / "m.safetensors", model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    save_image(x[y == 4][0], tmp_path / "img.png")
    np.savez(tmp_path / "clean.npz", x=np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y.numpy())
    out = tmp_path / "scan"
    code, stdout, err = run_cli(monkeypatch, capsys, "scan", "--model", str(tmp_path / "m.safetensors"), "--image",
                                str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean.npz"), "--out", str(out),
                                "--eps", "1,2", "--noise-samples", "4", "--steps", "100")
    assert code == 0, err
    record = json.loads((out / "scan.json").read_text())
    assert record["verdict"] == "backdoored" and record["targets"] == [PLANTED_TARGET]
    assert len(record["classes"]) == 9 and record["skipped_classes"].keys() == {"4"}
    assert record["settings"]["sigmas"] == [0.25]  # the default grid
    assert all(len(c["runs"]) == 2 for c in record["classes"])
    assert [p["sigma"] for p in record["noise_sink"]["probes"]] == [0.25]
    assert record["settings"]["class_screen"]["min_classes"] > 10 and record["screen"] is None  # 10 classes: no screen
    assert isinstance(record["warnings"], list)
    flagged_class = next(c for c in record["classes"] if c["class"] == PLANTED_TARGET)
    assert set(flagged_class["evidence"]["asr_by_source"]) == {str(c) for c in range(10)} - {str(PLANTED_TARGET)}
    assert flagged_class["max_asr"] >= flagged_class["evidence"]["asr"]
    html = (out / "report.html").read_text()
    assert "Noise sink" in html and "sources it flips most" in html
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced and all((out / ref).is_file() for ref in referenced), referenced
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert (out / f"class-{PLANTED_TARGET}" / "overview.png").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", str(tmp_path / "m.safetensors"), "--image",
                           str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean.npz"), "--out",
                           str(tmp_path / "scan2"), "--classes", "3,99")
    assert code == 2 and err.startswith("error:") and not Path(tmp_path / "scan2").exists()
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", str(tmp_path / "m.safetensors"), "--image",
                           str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean.npz"), "--out",
                           str(tmp_path / "scan3"), "--fallback-sigma", "0")
    assert code == 2 and "--fallback-sigma" in err and not Path(tmp_path / "scan3").exists()



def test_scan_cli_announces_the_fallback_rerun(planted, tmp_path, monkeypatch, capsys):
    import functools

    from smoothinv.data import save_image
    from smoothinv.models import save_model

    model, _, x, y = planted
    save_model(tmp_path / "m.safetensors", model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    save_image(x[y == 4][0], tmp_path / "img.png")
    np.savez(tmp_path / "clean.npz", x=np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y.numpy())
    # pinned_asr above 100% makes any first grid count as "nothing moved"
    monkeypatch.setattr("smoothinv.cli.scan.ScanSettings", functools.partial(ScanSettings, pinned_asr=1.01))
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", str(tmp_path / "m.safetensors"), "--image",
                           str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean.npz"), "--out",
                           str(tmp_path / "scan"), "--classes", f"1,{PLANTED_TARGET}", "--eps", "1", "--sigma", "0.5",
                           "--fallback-sigma", "0.25", "--noise-samples", "2", "--steps", "20")
    assert code == 0, err
    assert "rescanning at sigma 0.25" in err and err.count("20/20") == 2, err  # a second bar for the rerun
    assert json.loads((tmp_path / "scan" / "scan.json").read_text())["fallback_from"]["sigmas"] == [0.5]

def test_record_warns_when_a_flagged_class_is_the_noise_sink():
    from smoothinv.detection.noise_sink import NoiseSink as Sink
    from smoothinv.detection.scan import ClassResult, Evidence, RunRecord, ScanResult
    from smoothinv.methods.base import InversionResult
    from smoothinv.reporting.scan_report import scan_record
    from smoothinv.triggers import AdditiveTrigger

    x = torch.zeros(1, 2, 2)

    def cls(label, flag):
        r = InversionResult("smoothinv", label, x, x, AdditiveTrigger(x), torch.zeros(2), torch.zeros(2), {"eps": 1.0}, 0.0)
        asr = 0.9 if flag else 0.1
        return ClassResult(label, 0, [RunRecord.of(r, asr)], {}, flagged=flag, evidence=Evidence(r, asr, {0: asr}))

    sink = Sink(0.1, 0.55, [{"sigma": 0.25, "sink_class": 6, "share": 0.97, "collapsed": True}])
    result = ScanResult(ScanSettings(), (1.0,), (0.25,), sink, [cls(6, True), cls(3, False), cls(4, False)], {}, [0], {"total_s": 1.0}, False)
    record = scan_record(result, {}, [f"c{i}" for i in range(10)])
    assert len(record["warnings"]) == 1 and record["warnings"][0].startswith("class 6 (c6) is also where")
    clear = Sink(0.1, 0.55, [{"sigma": 0.25, "sink_class": 2, "share": 0.3, "collapsed": False}])
    result = ScanResult(ScanSettings(), (1.0,), (0.25,), clear, [cls(6, True), cls(3, False), cls(4, False)], {}, [0],
                        {"total_s": 1.0}, False)
    assert scan_record(result, {}, None)["warnings"] == []


def test_scan_cli_on_torchscript_model_with_folder_clean_set(planted, tmp_path, monkeypatch, capsys):
    from smoothinv.data import save_image

    model, _, x, y = planted
    path = tmp_path / "model_ts.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.* deprecation notices
        torch.jit.trace(model, x[:1]).save(str(path))
    for i in range(60):  # an ImageFolder: one folder per class, sorted names give the labels
        save_image(x[i], tmp_path / "clean" / f"{int(y[i])}" / f"{i}.png")
    save_image(x[y == 4][0], tmp_path / "img.png")
    out = tmp_path / "scan"
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", str(path), "--num-classes", "10", "--image",
                           str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean"), "--out", str(out),
                           "--classes", f"3,{PLANTED_TARGET}", "--eps", "2", "--sigma", "0.5", "--noise-samples", "2",
                           "--steps", "20", "--trust-code")
    assert code == 0, err
    record = json.loads((out / "scan.json").read_text())
    assert record["model"]["format"] == "torchscript" and record["clean_set"]["images"] == 60
    assert [c["class"] for c in record["classes"]] == [3, PLANTED_TARGET] and (out / "report.html").is_file()


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_scan_cli_rejects_a_bad_time_budget(tmp_path, monkeypatch, capsys, value):
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", str(tmp_path / "m.safetensors"), "--image",
                           str(tmp_path / "img.png"), "--clean", str(tmp_path / "clean.npz"), "--out",
                           str(tmp_path / "out"), "--time-budget", value)
    assert code == 2 and "--time-budget" in err and not (tmp_path / "out").exists(), err


def test_a_class_result_does_not_depend_on_the_other_classes_scanned(planted):
    """Defect 1: every (class, ε, σ) row draws its own noise, so --classes cannot change the
    result of a class that is scanned either way."""
    model, _, x, y = planted
    settings = replace(FAST, method=FAST.method.with_options(steps=15), fallback_sigmas=())
    image = [x[y == 4][0]]
    few = scan(model, image, x[:100], y[:100], 10, settings, classes=[1, PLANTED_TARGET])
    more = scan(model, image, x[:100], y[:100], 10, settings, classes=[1, 2, 5, PLANTED_TARGET])
    for label in (1, PLANTED_TARGET):
        a = next(c for c in few.classes if c.label == label)
        b = next(c for c in more.classes if c.label == label)
        assert [r.config for r in a.runs] == [r.config for r in b.runs]
        assert [r.asr for r in a.runs] == [r.asr for r in b.runs], label
        assert [r.final_target_prob for r in a.runs] == pytest.approx([r.final_target_prob for r in b.runs], abs=1e-5)
