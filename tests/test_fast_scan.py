"""The fast scan (issue 14): the class screen's contract, the race among a sweep's configurations,
determinism by seed, and `--exhaustive` as the grid before."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from torch import nn

from conftest import PLANTED_TARGET, run_cli
from smoothinv.detection import DecisionRule, ScanSettings, scan
from smoothinv.detection.decision import class_scores
from smoothinv.detection.scan import EXHAUSTIVE_SIGMAS, SCAN_SIGMAS
from smoothinv.detection.screen import ClassScreen, bounded_scores, select_for_full
from smoothinv.engine.early_stop import RowStopper
from smoothinv.engine.metrics import wilson_bounds
from smoothinv.errors import SmoothInvError
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.race import ConfigRace
from smoothinv.protocols.sweep import Grid, Racing, run_sweep, sweep_steps

FAST = ScanSettings(method_spec("smoothinv", noise_samples=4, steps=100), eps=(1.0, 2.0), sigmas=(0.5,))
SCREEN = ClassScreen(min_classes=5, steps=30, noise_samples=2, clean_images=120, candidates=1, references=3)


def test_wilson_bounds_contain_the_rate_and_shrink_with_n():
    rate = torch.tensor([0.0, 0.1, 0.5, 1.0])
    low, high = wilson_bounds(rate, 50, 2.0)
    assert bool((low <= rate.double()).all() and (rate.double() <= high).all())
    assert bool((low >= 0).all() and (high <= 1).all())
    low2, high2 = wilson_bounds(rate, 5000, 2.0)
    assert bool(((high2 - low2) < (high - low)).all())


def test_selection_takes_passing_classes_top_candidates_and_spread_references():
    labels = list(range(20))
    point = torch.linspace(0, 1, 20)  # class 19 highest
    bounded = torch.zeros(20)
    bounded[5] = 2.0  # passes the screen's threshold although its point score is low
    chosen = select_for_full(labels, point, bounded, replace(SCREEN, candidates=2, references=4))
    assert {19, 18, 5} <= set(chosen) and len(chosen) == 7
    assert 0 in chosen and 17 in chosen  # the references span the rest, lowest to highest
    assert chosen == select_for_full(labels, point, bounded, replace(SCREEN, candidates=2, references=4))
    ties = select_for_full(labels, torch.zeros(20), torch.zeros(20), replace(SCREEN, candidates=1, references=1))
    assert ties == [0, 1]  # ties break by label


def test_bounded_scores_raise_only_the_class_judged():
    asr = torch.tensor([[0.02, 0.3], [0.03, 0.32], [0.01, 0.29], [0.05, 0.35], [0.02, 0.31], [0.6, 0.9]],
                       dtype=torch.float64)
    rule = DecisionRule()
    point = class_scores(asr, rule).score
    bounded = bounded_scores(asr, torch.full((6,), 100), rule, 2.0)
    assert bool((bounded >= point - 1e-9).all())  # a bound never lowers a class's own score
    assert float(bounded[5]) >= 3.0 and float(bounded[0]) < float(bounded[5])
    few = bounded_scores(asr, torch.full((6,), 10), rule, 2.0)
    assert float(few[0]) > float(bounded[0])  # fewer images: wider bounds, higher bounded scores
    with pytest.raises(SmoothInvError):
        bounded_scores(asr, torch.tensor([100]), rule, 2.0)


def test_class_screen_rejects_bad_settings():
    with pytest.raises(SmoothInvError):
        ClassScreen(steps=0)
    with pytest.raises(SmoothInvError):
        ClassScreen(threshold=float("nan"))
    assert not ClassScreen().applies(10) and ClassScreen().applies(100)


def test_screened_scan_finds_the_target_and_every_class_it_drops_scored_below_the_bar(planted):
    model, _, x, y = planted
    settings = replace(FAST, screen=SCREEN)
    result = scan(model, [x[y == 4][0]], x, y, 10, settings)
    screen = result.screen
    assert screen is not None and result.targets == [PLANTED_TARGET]
    assert set(screen.classes) == set(range(10)) - {4}  # class 4 is the image's own
    assert PLANTED_TARGET in screen.full and len(screen.full) + len(screen.left_out) == 9
    assert screen.left_out  # the screen saved work
    assert {cr.label for cr in result.classes} == set(screen.full)
    # the contract: a class left out could not have been flagged, given its bound, at the screen's bar
    assert all(screen.classes[c].bounded < SCREEN.threshold for c in screen.left_out)
    assert result.seconds["screen_s"] > 0
    # the same seed gives the same scan
    again = scan(model, [x[y == 4][0]], x, y, 10, settings)
    assert [(c.label, c.asr_by_eps, c.score) for c in again.classes] == [(c.label, c.asr_by_eps, c.score)
                                                                          for c in result.classes]
    assert again.screen.to_dict() | {"seconds": 0} == screen.to_dict() | {"seconds": 0}
    # a flagged class keeps its best run at every eps for a repair; the others keep only their evidence
    from smoothinv.repair.findings import scan_result_findings

    findings = scan_result_findings(result)
    assert findings.targets == (PLANTED_TARGET,) and len(findings.recovered) == len(FAST.eps)
    assert findings.recovered[0].info["evidence"] and all(not cr.alternatives for cr in result.classes if not cr.flagged)


def test_a_zero_screen_threshold_sends_every_class_to_the_full_grid(planted):
    model, _, x, y = planted
    result = scan(model, [x[y == 4][0]], x, y, 10, replace(FAST, screen=replace(SCREEN, threshold=0.0)))
    assert not result.screen.left_out and len(result.classes) == 9 and result.targets == [PLANTED_TARGET]


def test_exhaustive_is_the_grid_before_and_the_default_is_smaller():
    exhaustive = ScanSettings.exhaustive()
    assert exhaustive.sigmas == EXHAUSTIVE_SIGMAS == (0.25, 0.5, 1.0) and exhaustive.screen is None
    assert ScanSettings().sigmas == SCAN_SIGMAS and ScanSettings().screen is not None
    assert ScanSettings.exhaustive(seed=3).seed == 3


def test_scan_cli_exhaustive_runs_the_full_grid(planted, tmp_path, monkeypatch, capsys):
    import numpy as np

    from smoothinv.data import save_image
    from smoothinv.models import save_model

    model, _, x, y = planted
    path = tmp_path / "m.safetensors"
    save_model(path, model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    save_image(x[y == 4][0], tmp_path / "img.png")
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=np.round(x[:200].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y[:200].numpy())
    code, _, err = run_cli(monkeypatch, capsys, "scan", "--model", path, "--image", tmp_path / "img.png", "--clean",
                           clean, "--out", tmp_path / "out", "--steps", 3, "--noise-samples", 1, "--classes", "1,7",
                           "--fallback-sigma", "none", "--exhaustive")
    assert code == 0, err
    record = json.loads((tmp_path / "out" / "scan.json").read_text())
    assert record["settings"]["sigmas"] == list(EXHAUSTIVE_SIGMAS) and record["settings"]["class_screen"] is None
    assert record["settings"]["precision"] == "fp32" and record["settings"]["descent_precision"] == "fp32"


class _Leader(nn.Module):
    """Logits that favour class 1 more the brighter the image's first pixel: one row's perturbation
    moves it, the others' do not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = x.flatten(1)[:, :1]
        return torch.cat([torch.zeros_like(first), 40 * (first - 0.5)], dim=1)


def test_race_measures_densely_first_and_less_often_later():
    race = ConfigRace(_Leader(), torch.zeros(1, 1, 2, 2), 1, torch.zeros(4, 1, 2, 2))
    due = [s for s in range(10, 410, 10) if race.due(s)]
    assert due[:8] == list(range(10, 90, 10)) and len(due) < 20 and due == sorted(set(due))
    assert [s for s in range(1, 6) if ConfigRace(_Leader(), torch.zeros(1, 1, 2, 2), 1, torch.zeros(4, 1, 2, 2),
                                                 every=1, start=1, growth=0.0).due(s)] == [1, 2, 3, 4, 5]


def test_race_stops_rows_that_cannot_be_the_best():
    origin = torch.zeros(3, 1, 2, 2)
    clean = torch.zeros(64, 1, 2, 2)
    race = ConfigRace(_Leader(), origin, 1, clean, every=1, start=1)
    x = origin.clone()
    x[0, 0, 0, 0] = 1.0  # row 0 sends every clean image to class 1; rows 1 and 2 none
    stop = race(x, torch.tensor([True, True, True]))
    assert stop.tolist() == [False, True, True]
    assert race.eliminated[1].asr == 0.0 and race.eliminated[1].upper < race.eliminated[1].best_lower
    assert "stopped at step 1" in race.eliminated[1].describe(64)


def test_row_stopper_runs_the_race_every_few_calls_and_checkpoints_its_count():
    calls = []

    class Race:
        every = 3

        def __call__(self, x, active):
            calls.append(active.clone())
            return torch.tensor([False, True])

    stopper = RowStopper(None, race=Race())
    fn = stopper.wrap(lambda x, idx: (x.sum((1, 2, 3)), torch.zeros(len(idx)), torch.ones_like(x)))
    for _ in range(3):
        fn(torch.zeros(2, 1, 1, 1))
    assert len(calls) == 1 and stopper.active.tolist() == [True, False]
    state = stopper.state_dict()
    other = RowStopper(None, race=Race())
    other.load_state_dict(state)
    assert other.calls == 3


def test_raced_sweep_matches_the_exhaustive_best_on_the_planted_model(planted):
    model, trigger, x, y = planted
    image = x[y == 4][0]
    grid = Grid.for_shape(image.shape, eps=[1.0, 2.0], sigmas=[0.25, 0.5, 1.0])
    method = method_spec("smoothinv", steps=60, noise_samples=4)
    raced = run_sweep(model, image, PLANTED_TARGET, x, y, grid, method=method, seed=0)
    full = run_sweep(model, image, PLANTED_TARGET, x, y, grid, method=method, seed=0, racing=None)
    assert len(raced.runs) == len(full.runs) == 6
    assert raced.best.asr >= full.best.asr - 0.05 and raced.best.asr > 0.8
    assert any(r.stopped for r in raced.runs) and not any(r.stopped for r in full.runs)
    assert all("stopped" in r.summary() for r in raced.runs)
    # the configs still running at the end are measured on the whole clean set; raced-out ones keep the race's
    assert raced.best.asr_images is None
    assert all((r.asr_images is not None) == (r.stopped is not None and "stopped at step" in r.stopped)
               for r in raced.runs)
    assert sweep_steps(method, None, grid) == 60 and sweep_steps(method, None, grid, None) == 360
    assert Racing().stop_prob is None  # stopping at a saturated probability cost ASR (race.py)


def test_bench_speed_refuses_a_model_not_in_the_zoo(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "bench", "speed", "--model", "no-such-model", "--scaling", "cifar10-badnets")
    assert code == 2 and "not in the zoo: no-such-model" in err and "Traceback" not in err


def test_precision_wrapper_keeps_float32_logits_and_fp32_leaves_the_model_alone(planted):
    from smoothinv.engine.precision import Autocast, precision_used, with_precision

    model = planted[0]
    assert with_precision(model, "fp32") is model and precision_used(model) == "fp32"
    fast = with_precision(model, "bf16")
    assert isinstance(fast, Autocast) and precision_used(fast) == "bf16" and with_precision(fast, "bf16") is fast
    x = planted[2][:16]
    assert fast(x).dtype == torch.float32
    assert (fast(x).argmax(1) == model(x).argmax(1)).float().mean() >= 0.9
    with pytest.raises(SmoothInvError):
        with_precision(model, "fp8")


@pytest.mark.slow  # 10 s
def test_bench_speed_measures_a_screened_scan(planted, monkeypatch):
    """The speed benchmark's rows, on a stand-in 'zoo' of the planted model with a forced screen."""
    import importlib

    speed = importlib.import_module("smoothinv.bench.speed")
    model, _, x, y = planted
    record = {"name": "planted", "dataset": "digits", "class_names": [str(c) for c in range(10)], "target": PLANTED_TARGET}
    monkeypatch.setattr(speed, "read_manifest", lambda: {"planted": record})

    class Subject:
        def __init__(self, *args):
            self.model, self.image, self.clean_images, self.clean_labels, self.num_classes = model, x[y == 4][0], x, y, 10

    monkeypatch.setattr(speed, "zoo_subject", lambda *args: Subject())
    monkeypatch.setattr(speed, "ScanSettings", type("S", (), {
        "exhaustive": staticmethod(lambda seed: replace(FAST, screen=None, seed=seed)),
        "__new__": lambda cls, seed: replace(FAST, screen=SCREEN, seed=seed)}))
    report = speed.speed_benchmark(["planted"], ["planted"], log=lambda line: None)
    [row] = report["comparison"]
    assert row["exhaustive"]["flagged"] == row["default"]["flagged"] == [PLANTED_TARGET] and row["same_targets"]
    [scaled] = report["scaling"]
    assert scaled["screen"]["left_out"] > 0 and scaled["relative_time"] == 1.0 and scaled["target_found"]
    json.dumps(report)


def test_precision_wrapper_runs_a_model_that_cannot_take_channels_last_inputs():
    from smoothinv.engine.precision import Autocast

    class Viewing(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4 * 8 * 8, 5)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(h.view(h.shape[0], -1))  # view needs the default layout

    model = Viewing().eval()
    x = torch.rand(2, 3, 8, 8)
    fast = Autocast(model)
    out = fast(x)
    assert out.shape == (2, 5) and out.dtype == torch.float32 and fast.channels_last is False
    assert fast(x).shape == (2, 5)
    plain = Autocast(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(256, 5)).eval())
    plain(x)
    assert plain.channels_last is True


def test_batchnorm_folded_for_the_descent_computes_the_same_function():
    from smoothinv.engine.precision import Autocast, folded_for_inference

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4))
    model[1].running_mean.uniform_(-1, 1)
    model[1].running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.rand(5, 3, 6, 6)
    folded = folded_for_inference(model, x[:2])
    assert folded is not model and not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert torch.allclose(folded(x), model(x), atol=1e-5)
    assert all(not p.requires_grad for p in folded.parameters()) and all(p.requires_grad for p in model.parameters())
    fast = Autocast(model)
    assert torch.allclose(fast(x), model(x), atol=0.1) and fast.folded
    assert set(dict(fast.named_parameters())) == {f"model.{k}" for k, _ in model.named_parameters()}
    assert folded_for_inference(model.train(), x[:2]) is model  # batch statistics: nothing to fold
    model.eval()

    class Branching(nn.Module):  # data-dependent control flow cannot be traced: the model is kept
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x) if float(x.mean()) > 0 else -self.body(x)

    branching = Branching().eval()
    assert folded_for_inference(branching, x[:2]) is branching
