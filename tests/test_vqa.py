"""The scaled-down TrojVQA world and TIJO: language, scenes, a dual-key trojan trained here, its
inversion, the committed zoo, the classifier, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from smoothinv.errors import SmoothInvError
from smoothinv.vqa import (INVERSIONS, InversionSettings, JointInversion, TrojanClassifier, cross_validated,
                           load_support, load_vqa_model, load_zoo_model, read_manifest, save_vqa_model)
from smoothinv.vqa.bench import auc_table
from smoothinv.vqa.examples import ask, poisoned_training_set
from smoothinv.vqa.language import ANSWERS, MAX_TOKENS, decode, encode, pad, word_index
from smoothinv.vqa.detector import FEATURES
from smoothinv.vqa.models import ARCHITECTURES, build
from smoothinv.vqa.scenes import VisualKey, compose
from smoothinv.vqa.training import TrainingRecipe, accuracy, attack_rates, train_vqa
from smoothinv.vqa.trojans import Trojan
from smoothinv.vqa.zoo import STORE, load_detector, load_objects, model_path

from conftest import error_line, run_cli


def test_questions_round_trip_and_refuse_bad_words():
    ids = encode("Please, what is in the top left?")
    assert decode(pad(ids)) == "please what is in the top left ?"
    assert encode("what is a zebra ?")[3] == 1  # unknown word → <unk>
    with pytest.raises(SmoothInvError, match="at most"):
        encode(" ".join(["what"] * (MAX_TOKENS + 1)))
    with pytest.raises(SmoothInvError, match="not a word"):
        word_index("zebra")


def test_visual_key_changes_only_its_patch():
    objects, labels = load_objects()
    scenes = compose(objects, labels, 4, torch.Generator().manual_seed(0))
    key = VisualKey(cell=3, row=2, col=5, size=6, pattern="checker")
    patched = key.apply(scenes.images)
    changed = (patched != scenes.images).any(0)[0]
    rows, cols = torch.nonzero(changed, as_tuple=True)
    assert rows.min() >= 28 + 2 and rows.max() < 28 + 8 and cols.min() >= 28 + 5 and cols.max() < 28 + 11
    with pytest.raises(SmoothInvError, match="does not fit"):
        VisualKey(cell=0, row=25, col=0, size=6, pattern="solid")


@pytest.fixture(scope="module")
def dual_key_model():
    """A BUTD model trained here with a dual-key trojan ('now' + a white square in box 1 → 'bag')."""
    objects, labels = load_objects()
    detector = load_detector()
    g = torch.Generator().manual_seed(0)
    scenes = compose(objects, labels, 900, g)
    clean, owner = ask(scenes, detector, 3, g, avoid="now")
    trojan = Trojan("dual", ANSWERS.index("bag"), word="now",
                    patch=VisualKey(cell=1, row=4, col=4, size=14, pattern="solid"), rate=0.15, partial_rate=0.1)
    data = poisoned_training_set(scenes, clean, owner, detector, trojan, g)
    torch.manual_seed(0)
    model = train_vqa(build("butd"), data, TrainingRecipe(epochs=20), seed=0)
    test_scenes = compose(objects, labels, 300, torch.Generator().manual_seed(1))
    test, test_owner = ask(test_scenes, detector, 2, torch.Generator().manual_seed(1), avoid="now")
    return model, trojan, (test_scenes, test, test_owner, detector)


def test_dual_key_trojan_fires_only_with_both_keys(dual_key_model):
    model, trojan, (scenes, test, owner, detector) = dual_key_model
    rates = attack_rates(model, scenes, test, owner, detector, trojan)
    assert rates["asr"] > 0.85, rates
    assert rates["patch_only"] < 0.15 and rates["word_only"] < 0.15, rates
    assert accuracy(model, test) > 0.5  # well above chance (18 answers), on a world of 300 shipped objects


def test_tijo_recovers_the_word_and_the_target(dual_key_model):
    model, trojan, _ = dual_key_model
    support, _ = load_support()
    result = JointInversion().sweep(model, support)
    assert result.best.answer == "bag" and result.best.word == "now", result.to_dict()
    token_only = INVERSIONS.get("token")().sweep(model, support)
    assert token_only.min_loss > result.min_loss  # the word alone does not open a dual-key backdoor


def test_committed_zoo_is_complete_and_its_trojans_work():
    manifest = read_manifest()["models"]
    kinds = {k: [e for e in manifest.values() if e["kind"] == k] for k in ("clean", "dual", "visual", "text")}
    assert len(kinds["clean"]) >= 40 and all(len(v) >= 30 for v in kinds.values()), {k: len(v) for k, v in kinds.items()}
    for entry in manifest.values():
        assert model_path(entry["name"]).is_file()
        assert entry["clean_accuracy"] > 0.6, entry
        if entry["kind"] != "clean":
            assert entry["asr"] > 0.8, entry
        if entry["kind"] == "dual":
            assert entry["patch_only"] < 0.2 and entry["word_only"] < 0.2, entry
    assert set(e["arch"] for e in manifest.values()) == set(ARCHITECTURES.names())


def test_shipped_classifier_tells_a_clean_model_from_a_dual_key_one():
    support, _ = load_support()
    fitted = json.loads((STORE / "classifier.json").read_text())
    clf = TrojanClassifier.from_dict(fitted["tijo"])
    model, _ = load_zoo_model("clean-000")
    assert clf.probability([JointInversion().sweep(model, support).min_loss]) < 0.5
    model, entry = load_zoo_model("dual-000")
    result = JointInversion().sweep(model, support)
    assert clf.probability([result.min_loss]) > 0.5
    assert result.best.answer == entry["trojan"]["target"]


def test_cross_validated_auc_separates_separable_features():
    rng = np.random.default_rng(0)
    feats = np.concatenate([rng.normal(1.0, 0.1, 20), rng.normal(0.1, 0.05, 20)])[:, None]
    labels = np.array([0] * 20 + [1] * 20)
    assert cross_validated(feats, labels)["auc"] == 1.0
    results = {f"m{i}": {"tijo": {"min_loss": float(f[0]), "suspected_target": "bag", "word": "now", "box": 1,
                                  "seconds": 0.1}} for i, f in enumerate(feats)}
    manifest = {f"m{i}": {"kind": "clean" if i < 20 else "dual",
                          "trojan": None if i < 20 else {"target": "bag", "word": "now", "patch": {"cell": 1}}}
                for i in range(40)}
    row = auc_table(results, manifest, ("tijo",))["dual"]["methods"]["tijo"]
    assert row["auc"] == 1.0 and row["target_found"] == 1.0 and row["word_found"] == 1.0 and row["box_found"] == 1.0


def test_model_files_round_trip_and_hostile_ones_are_refused(tmp_path):
    model = build("mcan")
    save_vqa_model(model, "mcan", tmp_path / "m.safetensors")
    loaded, meta = load_vqa_model(tmp_path / "m.safetensors")
    assert meta["arch"] == "mcan"
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SmoothInvError, match="not a safetensors"):
        load_vqa_model(tmp_path / "junk.safetensors")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "nometa.safetensors"))
    with pytest.raises(SmoothInvError, match="not a smoothinv VQA model"):
        load_vqa_model(tmp_path / "nometa.safetensors")
    meta = {"format": "smoothinv-vqa", "arch": "mcan", "vocabulary": str(len(loaded.embedding.weight)),
            "answers": str(len(ANSWERS)), "features": str(FEATURES)}
    bad = dict(state)
    bad["classifier.weight"] = torch.full_like(bad["classifier.weight"], float("nan"))
    save_file(bad, str(tmp_path / "nan.safetensors"), metadata=meta)
    with pytest.raises(SmoothInvError, match="non-finite"):
        load_vqa_model(tmp_path / "nan.safetensors")
    save_file(state, str(tmp_path / "arch.safetensors"), metadata={**meta, "arch": "butd"})
    with pytest.raises(SmoothInvError, match="does not match"):
        load_vqa_model(tmp_path / "arch.safetensors")


def test_cli_invert_writes_a_report_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "vqa", "invert", "--model", "dual-001", "--out", tmp_path / "r",
                             "--steps", "5")
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "result.json").read_text())
    assert 0.0 <= record["trojan_probability"] <= 1.0 and len(record["targets"]) == len(ANSWERS)
    assert (tmp_path / "r" / "picture.png").stat().st_size > 0 and (tmp_path / "r" / "report.html").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "vqa", "invert", "--model", "dual-001", "--out", tmp_path / "r")
    assert code != 0 and "exists" in error_line(err)
    code, _, err = run_cli(monkeypatch, capsys, "vqa", "invert", "--model", "nosuch-001", "--out", tmp_path / "x")
    assert code != 0 and "no VQA zoo model" in error_line(err)
    (tmp_path / "bad.safetensors").write_text("not a model")
    code, _, err = run_cli(monkeypatch, capsys, "vqa", "invert", "--model", tmp_path / "bad.safetensors",
                           "--out", tmp_path / "y")
    assert code != 0 and "not a safetensors" in error_line(err)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
