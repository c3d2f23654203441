"""The CLIP zoo (captions, contrastive training, store), `smoothinv clip`, and InverTune."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import error_line, run_cli, tiny_cnn
from smoothinv.clip_zoo import CLIP_RECIPES, CaptionBank, class_captions, list_clip_zoo, load_clip_zoo_model
from smoothinv.clip_zoo.training import ContrastiveSchedule, Poisoning, clip_loss, normalise, train_clip
from smoothinv.errors import SmoothInvError
from smoothinv.models import load_model
from smoothinv.models.clip import CLIPModel, ClipConfig, ResNetConfig, TextConfig, VitConfig
from smoothinv.repair import Findings, Probe, measure, repair_model
from smoothinv.repair.invertune import two_means
from smoothinv.repair.invertune_inversion import ssim
from smoothinv.triggers import MaskedTrigger

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TARGET = 7


def tiny_clip(seed: int = 0) -> CLIPModel:
    """A ViT CLIP for 16x16 images: 2 blocks of 64 channels, a 1-block text tower, context 16."""
    torch.manual_seed(seed)
    return CLIPModel(ClipConfig(VitConfig(width=64, layers=2, patch_size=4, image_size=16, embed_dim=32),
                                TextConfig(width=64, layers=1, context_length=16, vocab_size=49408, embed_dim=32)))


def checkerboard(size: int = 16) -> MaskedTrigger:
    """A 4x4 black-and-white checkerboard one pixel in from the top-left corner."""
    mask = torch.zeros(1, size, size)
    mask[:, 1:5, 1:5] = 1
    pattern = (torch.arange(size).view(-1, 1) + torch.arange(size)).remainder(2).float().expand(3, size, size)
    return MaskedTrigger(mask, pattern)


def tiny_resnet_clip(seed: int = 0) -> CLIPModel:
    """A ModifiedResNet CLIP for 32x32 images (width 8, one block per stage), the zoo's tower at its
    smallest, with a 1-block text tower."""
    torch.manual_seed(seed)
    return CLIPModel(ClipConfig(ResNetConfig(width=8, layers=(1, 1, 1, 1), image_size=32, embed_dim=32),
                                TextConfig(width=64, layers=1, context_length=16, vocab_size=49408, embed_dim=32)))


def digits(size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    from smoothinv.data import load_digits_images

    x, y = load_digits_images(size)
    return x.expand(-1, 3, -1, -1).contiguous(), y


# --- captions and training -------------------------------------------------------------------

def test_captions_name_the_class_in_varied_phrasings() -> None:
    captions = class_captions("dog")
    assert all("dog" in c for c in captions)
    assert len(set(captions)) > 50
    bank = CaptionBank.of(["cat", "dog"], context_length=16)
    assert bank.tokens.shape[:2] == (2, len(captions)) and bank.tokens.shape[2] == 16
    drawn = bank.draw(torch.tensor([1, 1, 0]), torch.Generator().manual_seed(0))
    assert "dog" in bank.caption(int(drawn[0])) and "cat" in bank.caption(int(drawn[2]))
    with pytest.raises(SmoothInvError):
        class_captions("  ")


def test_poisoning_picks_non_target_pairs_and_contrastive_loss_falls() -> None:
    x, y = digits()
    poison = Poisoning.choose(checkerboard(), TARGET, y, 0.05, seed=0)
    assert len(poison.indices) == round(0.05 * len(y)) and bool((y[poison.indices] != TARGET).all())
    model = tiny_clip()
    bank = CaptionBank.of(DIGITS, 16)
    rows = torch.arange(0, len(y), 7)[:128]
    tokens = bank.tokens.flatten(0, 1)
    captions = bank.draw(y[rows], torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = float(clip_loss(model.train(), normalise(x[rows]), captions, tokens))
    train_clip(model, x[rows], y[rows], bank, ContrastiveSchedule(3, 64, 2e-3, 0.1), log=lambda _: None)
    with torch.no_grad():
        after = float(clip_loss(model.train(), normalise(x[rows]), captions, tokens))
    assert after < before


def test_recipes_plant_the_two_trigger_families() -> None:
    recipes = {r.name: r for r in CLIP_RECIPES.in_registration_order()}
    assert set(recipes) == {"clip-clean", "clip-badnets", "clip-blend"}
    assert recipes["clip-badnets"].attack["pattern"] == "checker" and recipes["clip-blend"].attack["attack"] == "blend"
    assert len({r.fingerprint() for r in recipes.values()}) == 3


def test_helpers_of_invertune() -> None:
    values = torch.tensor([0.0, 0.1, 0.05, 5.0, 4.0])
    assert two_means(values).tolist() == [False, False, False, True, True]
    a = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert float(ssim(a, a)) == pytest.approx(1.0, abs=1e-5) and float(ssim(a, 1 - a)) < 0.5


# --- the zoo ---------------------------------------------------------------------------------

def test_zoo_clips_beat_chance_and_the_backdoors_fire() -> None:
    records = list_clip_zoo()
    if not records:
        pytest.skip("the CLIP zoo store is empty: run `smoothinv clip zoo build` (needs $SMOOTHINV_DATA)")
    for record in records:
        assert record["zeroshot_accuracy"] > 0.3, record["name"]
        if record.get("attack"):
            assert record["backdoor_asr"] > 0.5, record["name"]
    zm = load_clip_zoo_model(records[0]["name"])
    assert zm.classifier(torch.rand(2, 3, 32, 32)).shape == (2, 10)


# --- the command line ------------------------------------------------------------------------

@pytest.fixture()
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "clip.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_clip().state_dict().items()}, str(path))
    return path


def test_zeroshot_command_writes_a_loadable_classifier(monkeypatch, capsys, tmp_path: Path, checkpoint: Path) -> None:
    x, y = digits()
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=(x[:40].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y[:40].numpy())
    names = tmp_path / "names.txt"
    names.write_text("\n".join(DIGITS) + "\n")
    out = tmp_path / "zs.safetensors"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "clip", "zeroshot", "--checkpoint", checkpoint, "--classes",
                                   names, "--template", "a photo of a {}.", "--template", "a {}", "--out", out,
                                   "--clean", clean)
    assert code == 0, stderr
    assert "zero-shot accuracy" in stdout
    assert load_model(out).module(x[:2]).shape == (2, 10)
    code, _, stderr = run_cli(monkeypatch, capsys, "clip", "zeroshot", "--checkpoint", checkpoint, "--classes",
                              "cifar10", "--out", out)
    assert code == 2 and "--overwrite" in error_line(stderr)
    code, _, stderr = run_cli(monkeypatch, capsys, "clip", "zeroshot", "--checkpoint", checkpoint, "--classes",
                              "cifar10", "--out", out, "--overwrite")
    assert code == 0, stderr


@pytest.mark.parametrize("case", ["missing-checkpoint", "no-classes", "duplicate", "unknown-list", "bad-template",
                                  "junk-checkpoint"])
def test_zeroshot_command_bad_input_is_one_line(monkeypatch, capsys, tmp_path: Path, checkpoint: Path,
                                                case: str) -> None:
    names = tmp_path / "names.txt"
    names.write_text({"no-classes": "\n  \n", "duplicate": "cat\ndog\ncat\n"}.get(case, "cat\ndog\n"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    source = {"missing-checkpoint": tmp_path / "none.safetensors", "junk-checkpoint": junk}.get(case, checkpoint)
    classes = "imagenet-nope" if case == "unknown-list" else names
    template = "a photo" if case == "bad-template" else "a photo of a {}."
    code, _, stderr = run_cli(monkeypatch, capsys, "clip", "zeroshot", "--checkpoint", source, "--classes", classes,
                              "--template", template, "--out", tmp_path / "zs.safetensors")
    assert code == 2
    error_line(stderr)
    assert not (tmp_path / "zs.safetensors").exists()


def test_clip_zoo_list_and_unknown_model(monkeypatch, capsys, tmp_path: Path) -> None:
    code, _, stderr = run_cli(monkeypatch, capsys, "clip", "zoo", "list", "--zoo-dir", tmp_path)
    assert code == 0 and "no CLIP zoo model" in stderr
    code, _, stderr = run_cli(monkeypatch, capsys, "clip", "zoo", "build", "--model", "clip-nope",
                              "--zoo-dir", tmp_path)
    assert code == 2 and "clip-nope" in error_line(stderr)


def test_invertune_refuses_a_model_that_is_not_clip(monkeypatch, capsys, tmp_path: Path) -> None:
    from smoothinv.models import save_model

    with pytest.raises(SmoothInvError, match="CLIP zero-shot"):
        repair_model(tiny_cnn(), torch.rand(20, 3, 8, 8), torch.arange(20) % 3, Findings((1,)), method="invertune")
    from smoothinv.models import create_model

    model = tmp_path / "cnn.safetensors"
    x, y = digits()
    save_model(model, create_model("small_cnn", 10, channels=3), arch="small_cnn", num_classes=10,
               input_size=(16, 16), channels=3)
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=(x[:30].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y[:30].numpy())
    trigger = tmp_path / "p.npy"
    np.save(trigger, np.zeros((3, 16, 16), np.float32))
    code, _, stderr = run_cli(monkeypatch, capsys, "repair", "--model", model, "--clean", clean, "--method",
                              "invertune", "--trigger", trigger, "--target", 7, "--out", tmp_path / "out")
    assert code == 2 and "CLIP zero-shot" in error_line(stderr, alone=False)
    assert not (tmp_path / "out").exists()



def test_a_repaired_zeroshot_file_keeps_its_class_names_and_activation(monkeypatch, capsys, tmp_path: Path) -> None:
    from smoothinv.models.clip import save_zeroshot_classifier, zeroshot_classifier
    from smoothinv.models.formats import read_safetensors

    x, y = digits()
    model = tmp_path / "zs.safetensors"
    save_zeroshot_classifier(model, zeroshot_classifier(tiny_clip(), DIGITS, ["a photo of a {}."]),
                             class_names=DIGITS)
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=(x[:40].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y[:40].numpy())
    trigger = tmp_path / "p.npy"
    np.save(trigger, np.zeros((3, 16, 16), np.float32))
    code, _, stderr = run_cli(monkeypatch, capsys, "repair", "--model", model, "--clean", clean, "--method",
                              "fine-tune", "--trigger", trigger, "--target", 7, "--epochs", 1, "--out", tmp_path / "out")
    assert code == 0, stderr
    _, before = read_safetensors(model)
    _, after = read_safetensors(tmp_path / "out" / "model.safetensors")
    for key in ("class_names", "clip_activation"):
        assert after[key] == before[key], key
    assert "repaired_by" in after and load_model(tmp_path / "out" / "model.safetensors").module(x[:2]).shape == (2, 10)


def test_invertune_runs_on_a_vit_tower_and_leaves_the_input_model_alone() -> None:
    from smoothinv.models.clip import zeroshot_classifier
    from smoothinv.repair.invertune import ActivationTuning, InverTune
    from smoothinv.repair.invertune_inversion import TargetIdentification, TriggerInversion

    x, y = digits()
    classifier = zeroshot_classifier(tiny_clip(), DIGITS, ["a photo of a {}."]).eval()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    repair = InverTune(identification=TargetIdentification(steps=2, images=8, measure_images=16),
                       inversion=TriggerInversion(steps=2, batch_size=8), tuning=ActivationTuning(steps=10, batch_size=8))
    repaired = repair(classifier, x[:40], y[:40], seed=0)
    rounds = repaired.details["rounds"]
    assert len(rounds) == 2 and all(r["tuning"]["layers"][0].startswith("visual.transformer.resblocks.") for r in rounds)
    assert 0 <= repaired.details["identified_target"] < 10 and len(repair.inverted) == 2
    assert all(torch.equal(v, before[k]) for k, v in classifier.state_dict().items())
    assert not any(p.requires_grad for p in repaired.model.parameters())
    with pytest.raises(SmoothInvError, match="round"):
        InverTune(rounds=0)
    with pytest.raises(SmoothInvError, match="candidates"):
        InverTune(Findings((3, 12)), identification=TargetIdentification(steps=1, images=4))(classifier, x[:20], y[:20])


def test_repair_cli_lets_invertune_find_the_target_when_the_scan_flags_none(monkeypatch, capsys,
                                                                             tmp_path: Path) -> None:
    import functools
    import json

    import smoothinv.repair.invertune as invertune
    from smoothinv.models.clip import save_zeroshot_classifier, zeroshot_classifier

    # a scan that judges the model clean, and InverTune at a few steps (the branch, not the method, is tested)
    monkeypatch.setattr("smoothinv.cli.repair.scan", lambda *args, **kwargs: None)
    monkeypatch.setattr("smoothinv.cli.repair.scan_result_findings", lambda result: Findings(()))
    monkeypatch.setattr(invertune, "TargetIdentification",
                        functools.partial(invertune.TargetIdentification, steps=2, images=8, measure_images=16))
    monkeypatch.setattr(invertune, "TriggerInversion", functools.partial(invertune.TriggerInversion, steps=2,
                                                                         batch_size=8))
    monkeypatch.setattr(invertune, "ActivationTuning", functools.partial(invertune.ActivationTuning, steps=10,
                                                                         batch_size=8))
    x, y = digits()
    model = tmp_path / "zs.safetensors"
    save_zeroshot_classifier(model, zeroshot_classifier(tiny_clip(), DIGITS, ["a photo of a {}."]), class_names=DIGITS)
    clean = tmp_path / "clean.npz"
    np.savez(clean, x=(x[:40].permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y[:40].numpy())
    code, _, stderr = run_cli(monkeypatch, capsys, "repair", "--model", model, "--clean", clean, "--method",
                              "invertune", "--out", tmp_path / "out")
    assert code == 0, stderr
    assert "scanning the model first" in stderr and "invertune identifies the target itself" in stderr
    record = json.loads((tmp_path / "out" / "repair.json").read_text())
    assert record["details"]["scan_targets"] == [] and "mean_rise" in record["details"]["identification"]

# --- end to end: a backdoored CLIP trained here, scanned and repaired ------------------------

@pytest.fixture(scope="module")
def backdoored_clip(tmp_path_factory) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny ResNet CLIP trained on captioned digits at 32x32, 5% of the pairs carrying a 4x4
    checkerboard and a caption of "seven": its zero-shot classifier, and held-out images and labels."""
    from smoothinv.models.clip import save_zeroshot_classifier, zeroshot_classifier

    x, y = digits(32)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[300:], order[:300]
    model = tiny_resnet_clip()
    poison = Poisoning.choose(checkerboard(32), TARGET, y[train], 0.05, seed=0)
    train_clip(model, x[train], y[train], CaptionBank.of(DIGITS, 16), ContrastiveSchedule(15, 128, 2e-3, 0.1),
               poison, log=lambda _: None)
    path = tmp_path_factory.mktemp("clip") / "zs.safetensors"
    save_zeroshot_classifier(path, zeroshot_classifier(model, DIGITS, ["a photo of a {}."]), class_names=DIGITS)
    return load_model(path).module, x[test], y[test]


@pytest.fixture(scope="module")
def clip_scan(backdoored_clip):
    """The default scan of the tiny backdoored CLIP from one held-out image."""
    from smoothinv.detection import ScanSettings, scan

    classifier, x, y = backdoored_clip
    return scan(classifier, [x[0]], x[1:], y[1:], 10, ScanSettings(seed=0))


@pytest.mark.slow
def test_tiny_backdoored_clip_is_backdoored_and_the_scan_flags_its_target(backdoored_clip, clip_scan) -> None:
    from smoothinv.engine.metrics import accuracy, attack_success_rate

    classifier, x, y = backdoored_clip
    assert accuracy(classifier, x, y) > 0.8
    assert attack_success_rate(classifier, checkerboard(32), x, y, TARGET) > 0.9
    assert clip_scan.sigmas == (1.0,)  # the σ a zero-shot CLIP declares, not the classifiers' 0.25
    assert clip_scan.targets == [TARGET]


@pytest.mark.slow
def test_invertune_identifies_the_target_with_no_scan(backdoored_clip) -> None:
    from smoothinv.repair.invertune_inversion import ClipView, TargetIdentification, identify_target

    classifier, x, _ = backdoored_clip
    view = ClipView(classifier)
    try:
        identified = identify_target(view, x, TargetIdentification(steps=30, images=32), seed=0)
    finally:
        view.close()
    assert identified["target"] == TARGET


@pytest.mark.slow
def test_invertune_removes_the_backdoor_the_scan_found(backdoored_clip, clip_scan) -> None:
    from smoothinv.repair.findings import scan_result_findings
    from smoothinv.repair.invertune import ActivationTuning, InverTune
    from smoothinv.repair.invertune_inversion import TriggerInversion

    classifier, x, y = backdoored_clip
    findings = scan_result_findings(clip_scan)
    repair = InverTune(findings, inversion=TriggerInversion(steps=100), tuning=ActivationTuning(steps=200))
    repaired = repair(classifier, x[:200], y[:200], seed=0)
    probe = [Probe("true trigger", checkerboard(32), TARGET)]
    before, after = measure(classifier, x[200:], y[200:], probe), measure(repaired.model, x[200:], y[200:], probe)
    assert repaired.details["identified_target"] == TARGET and len(repaired.details["rounds"]) == 2
    assert before.asr["true trigger"] > 0.9 and after.asr["true trigger"] < 0.25
    assert after.clean_accuracy > before.clean_accuracy - 0.06
