"""smoothinv.repair and `smoothinv repair`: a planted backdoor removed, the repaired file loadable,
bad input refused with one line and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import PLANTED_TARGET, error_line, run_cli
from smoothinv.errors import SmoothInvError
from smoothinv.methods import method_spec
from smoothinv.repair import (REPAIRS, FineTuneRecipe, Findings, Probe, RecoveredTrigger, Split, build_repair,
                              load_recovered, measure, repair_model, save_recovered)
from smoothinv.triggers import AdditiveTrigger

RECIPE = FineTuneRecipe(epochs=6)


@pytest.fixture(scope="module")
def recovered(planted):
    """SmoothInv perturbations toward the planted target from two clean images (what a scan keeps)."""
    model, _, x, y = planted
    images = x[y != PLANTED_TARGET][:2]
    spec = method_spec("smoothinv", steps=60, noise_samples=4, eps=2.0, sigma=0.5)
    results = spec.build().invert_batch(model, images, torch.full((2,), PLANTED_TARGET), seed=0)
    return [RecoveredTrigger(AdditiveTrigger(r.perturbation), PLANTED_TARGET, f"test image {i}",
                             {"eps": 2.0, "sigma": 0.5, "evidence": i == 0}) for i, r in enumerate(results)]


def test_unlearning_removes_the_planted_backdoor_and_keeps_clean_accuracy(planted, recovered):
    model, trigger, x, y = planted
    findings = Findings((PLANTED_TARGET,), tuple(recovered))
    true = Probe("true trigger", trigger, PLANTED_TARGET)
    result = repair_model(model, x, y, findings, recipe=FineTuneRecipe(epochs=15, lr=0.01), holdout=0.3,
                          probes=[true])
    assert result.before.asr["true trigger"] > 0.5  # the backdoor is there to remove
    assert result.after.asr["true trigger"] < 0.10
    assert result.after.clean_accuracy >= result.before.clean_accuracy - 0.05
    assert result.repaired.details["synthesised"] > 0  # more perturbations were synthesised from other images
    assert all(p.requires_grad is False for p in result.repaired.model.parameters())
    assert all(not p.requires_grad for p in model.parameters())  # the user's model is untouched
    json.dumps(result.record())


def test_every_method_has_one_call_shape_and_leaves_the_model_alone(planted, recovered):
    model, _, x, y = planted
    state = {k: v.clone() for k, v in model.state_dict().items()}
    findings = Findings((PLANTED_TARGET,), tuple(recovered))
    for name in REPAIRS.names():
        if name == "invertune":
            continue  # repairs CLIP zero-shot classifiers only (tests/test_clip_zoo.py)
        repaired = build_repair(name, findings, FineTuneRecipe(epochs=1))(model, x[:100], y[:100], seed=0)
        assert repaired.method == name and repaired.model is not model
        assert repaired.model(x[:4]).shape == (4, 10)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_fine_pruning_keeps_its_pruned_channels_at_zero(planted):
    model, _, x, y = planted
    repaired = build_repair("fine-pruning", Findings((PLANTED_TARGET,)), FineTuneRecipe(epochs=2))(model, x, y)
    linear = [m for m in repaired.model.modules() if isinstance(m, torch.nn.Linear)][-1]
    pruned = repaired.details["pruned"]
    assert pruned > 0 and int((linear.weight.abs().sum(0) == 0).sum()) >= pruned


def test_split_is_seeded_disjoint_and_refuses_tiny_sets():
    a, b = Split.of(50, 0.2, 3), Split.of(50, 0.2, 3)
    assert torch.equal(a.evaluate, b.evaluate) and len(a.evaluate) == 10 and len(a.tune) == 40
    assert not set(a.tune.tolist()) & set(a.evaluate.tolist())
    with pytest.raises(SmoothInvError, match="at least 2"):
        Split.of(1, 0.2, 0)


def test_measure_restricts_a_label_specific_trigger_to_its_sources(planted):
    model, trigger, x, y = planted
    everywhere = measure(model, x, y, [Probe("all", trigger, PLANTED_TARGET)]).asr["all"]
    only = measure(model, x, y, [Probe("some", trigger, PLANTED_TARGET, (0, 1))]).asr["some"]
    assert 0 <= everywhere <= 1 and 0 <= only <= 1


def test_recovered_triggers_round_trip_and_crafted_files_are_refused(tmp_path, recovered):
    path = tmp_path / "t.safetensors"
    save_recovered(path, recovered)
    back = load_recovered(path, (1, 20, 20))
    assert [r.target for r in back] == [PLANTED_TARGET] * 2 and back[0].info["eps"] == 2.0
    assert torch.equal(back[0].trigger.perturbation, recovered[0].trigger.perturbation.float())
    with pytest.raises(SmoothInvError, match="does not fit"):
        load_recovered(path, (3, 20, 20))
    bad = tmp_path / "bad.safetensors"
    save_recovered(bad, [RecoveredTrigger(AdditiveTrigger(torch.full((1, 20, 20), float("nan"))), 1, "x")])
    with pytest.raises(SmoothInvError, match="NaN"):
        load_recovered(bad, (1, 20, 20))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SmoothInvError):
        load_recovered(tmp_path / "junk.safetensors", (1, 20, 20))


# ----------------------------------------------------------------------------- the command line


@pytest.fixture()
def files(planted, tmp_path):
    from smoothinv.files import sha256_file
    from smoothinv.models import save_model

    model, _, x, y = planted
    path = tmp_path / "m.safetensors"
    save_model(path, model, arch="small_cnn", num_classes=10, input_size=(20, 20), channels=1)
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y.numpy())
    return path, clean, sha256_file(path)


def _scan_dir(tmp_path, sha, targets, triggers):
    """A scan output as `smoothinv scan` writes it (scan.json and each flagged class's triggers)."""
    out = tmp_path / "scan"
    out.mkdir()
    files = {}
    for target in targets:
        (out / f"class-{target}").mkdir()
        save_recovered(out / f"class-{target}" / "triggers.safetensors", triggers)
        files[str(target)] = f"class-{target}/triggers.safetensors"
    (out / "scan.json").write_text(json.dumps({"model": {"sha256": sha}, "targets": targets,
                                               "files": {"triggers": files}}))
    return out


def test_repair_cli_from_a_scan_writes_a_loadable_model_and_its_record(files, recovered, tmp_path, monkeypatch, capsys):
    from smoothinv.models import load_model

    model_path, clean, sha = files
    scan_dir = _scan_dir(tmp_path, sha, [PLANTED_TARGET], recovered)
    out = tmp_path / "out"
    code, stdout, err = run_cli(monkeypatch, capsys, "repair", "--model", model_path, "--scan", scan_dir, "--clean",
                                clean, "--out", out, "--epochs", 2)
    assert code == 0, err
    record = json.loads((out / "repair.json").read_text())
    assert record["method"] == "unlearn" and record["targets"] == [PLANTED_TARGET]
    assert record["split"]["tune"] + record["split"]["evaluate"] == 400
    assert set(record["before"]["asr"]) == set(record["after"]["asr"]) and len(record["before"]["asr"]) == 2
    assert any("used in the repair itself" in w for w in record["warnings"])  # unlearning trained on them
    loaded = load_model(out / "model.safetensors")
    assert loaded.arch == "small_cnn" and loaded.num_classes == 10 and loaded.input_size == (20, 20)
    assert "clean accuracy" in stdout and (out / "report.html").read_text().startswith("<!doctype html>")


def test_repair_cli_takes_a_perturbation_file_and_a_target(files, recovered, tmp_path, monkeypatch, capsys):
    model_path, clean, _ = files
    p = tmp_path / "p.npy"
    np.save(p, recovered[0].trigger.perturbation.numpy())
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "repair", "--model", model_path, "--trigger", p, "--target",
                           PLANTED_TARGET, "--clean", clean, "--out", out, "--epochs", 1, "--method", "fine-tune")
    assert code == 0, err
    record = json.loads((out / "repair.json").read_text())
    assert record["method"] == "fine-tune"
    # fine-tuning never saw the perturbation, so its ASR after is a fair measurement: no warning says otherwise
    assert not any("used in the repair itself" in w for w in record["warnings"])


@pytest.mark.parametrize("case", ["clean-scan", "other-model", "no-target", "wrong-shape", "empty-clean", "pickle"])
def test_repair_cli_refuses_bad_input_in_one_line_and_writes_nothing(case, files, recovered, tmp_path, monkeypatch,
                                                                     capsys):
    model_path, clean, sha = files
    out = tmp_path / "out"
    args = ["repair", "--model", model_path, "--clean", clean, "--out", out]
    expected = {"clean-scan": "flagged no class", "other-model": "another model", "no-target": "needs --target",
                "wrong-shape": "does not fit", "empty-clean": "non-empty image", "pickle": "pickle"}[case]
    if case == "clean-scan":
        args += ["--scan", _scan_dir(tmp_path, sha, [], recovered)]
    elif case == "other-model":
        args += ["--scan", _scan_dir(tmp_path, "0" * 64, [PLANTED_TARGET], recovered)]
    elif case == "no-target":
        np.save(tmp_path / "p.npy", np.zeros((1, 20, 20), np.float32))
        args += ["--trigger", tmp_path / "p.npy"]
    elif case == "wrong-shape":
        np.save(tmp_path / "p.npy", np.zeros((3, 8, 8), np.float32))
        args += ["--trigger", tmp_path / "p.npy", "--target", PLANTED_TARGET]
    elif case == "empty-clean":
        empty = tmp_path / "empty.npz"
        np.savez(empty, x=np.zeros((0, 20, 20, 1), np.uint8), y=np.zeros((0,), np.int64))
        args[args.index(clean)] = empty
        args += ["--trigger", tmp_path / "p.npy", "--target", PLANTED_TARGET]
        np.save(tmp_path / "p.npy", np.zeros((1, 20, 20), np.float32))
    else:
        bad = tmp_path / "p.npy"
        np.save(bad, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        args += ["--trigger", bad, "--target", PLANTED_TARGET]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code != 0
    assert expected.lower() in error_line(err, alone=False).lower()
    assert not out.exists()


@pytest.mark.slow  # 11 s
def test_repair_cli_scans_the_model_first_when_given_no_scan(files, tmp_path, monkeypatch, capsys):
    import importlib

    from smoothinv.detection import ScanSettings

    cli_repair = importlib.import_module("smoothinv.cli.repair")
    quick = ScanSettings(method_spec("smoothinv", noise_samples=4, steps=100), eps=(1.0, 2.0), sigmas=(0.5,))
    monkeypatch.setattr(cli_repair, "ScanSettings", lambda seed: quick)
    model_path, clean, _ = files
    out = tmp_path / "out"
    code, _, err = run_cli(monkeypatch, capsys, "repair", "--model", model_path, "--clean", clean, "--out", out,
                           "--epochs", 1)
    assert code == 0, err
    assert "scanning the model first" in err
    record = json.loads((out / "repair.json").read_text())
    assert record["targets"] == [PLANTED_TARGET] and record["details"]["recovered"]


def test_a_checked_eval_model_stays_in_eval_mode_after_an_inversion(planted):
    """The CLI wraps every model in CheckedModel; an inversion restores the wrapper's mode, which
    must not switch the model's BatchNorm to batch statistics for the rest of a scan."""
    from smoothinv.engine.logits import CheckedModel

    model = planted[0]
    checked = CheckedModel(model.eval())
    method_spec("smoothinv", steps=2, noise_samples=2).build().invert_batch(checked, planted[2][:1],
                                                                          torch.tensor([PLANTED_TARGET]))
    assert not checked.training and not model.training
