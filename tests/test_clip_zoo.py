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
from smoothinv.models.clip import CLIPModel, ClipConfig, TextConfig, VitConfig
from smoothinv.repair import Findings, Probe, repair_model
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


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from smoothinv.data import load_digits_images

    x, y = load_digits_images(16)
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


# --- end to end: a backdoored CLIP trained here, scanned and repaired ------------------------

@pytest.fixture(scope="module")
def backdoored_clip(tmp_path_factory) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny ViT CLIP trained on captioned digits, 5% of the pairs carrying the checkerboard and
    a caption of "seven": its zero-shot classifier, and held-out images and labels."""
    from smoothinv.models.clip import save_zeroshot_classifier, zeroshot_classifier

    x, y = digits()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[300:], order[:300]
    model = tiny_clip()
    poison = Poisoning.choose(checkerboard(), TARGET, y[train], 0.05, seed=0)
    train_clip(model, x[train], y[train], CaptionBank.of(DIGITS, 16), ContrastiveSchedule(15, 128, 2e-3, 0.1),
               poison, log=lambda _: None)
    path = tmp_path_factory.mktemp("clip") / "zs.safetensors"
    save_zeroshot_classifier(path, zeroshot_classifier(model, DIGITS, ["a photo of a {}."]), class_names=DIGITS)
    return load_model(path).module, x[test], y[test]


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 16 is open: the default scan does not flag a CLIP's checkerboard "
                                       "backdoor (nor the zoo's, docs/clip.md)")
def test_tiny_backdoored_clip_is_flagged(backdoored_clip) -> None:
    from smoothinv.detection import ScanSettings, scan

    classifier, x, y = backdoored_clip
    result = scan(classifier, [x[0]], x[1:], y[1:], 10, ScanSettings(seed=0))
    assert result.targets == [TARGET]


@pytest.fixture(scope="module")
def invertune_repair(backdoored_clip):
    """InverTune run on the tiny backdoored CLIP, measured with the true trigger."""
    classifier, x, y = backdoored_clip
    return repair_model(classifier, x, y, Findings((TARGET,)), method="invertune",
                        probes=[Probe("true trigger", checkerboard(), TARGET)])


@pytest.mark.slow
def test_tiny_backdoored_clip_is_backdoored_and_invertune_finds_its_target(backdoored_clip, invertune_repair) -> None:
    from smoothinv.engine.metrics import accuracy, attack_success_rate

    classifier, x, y = backdoored_clip
    assert accuracy(classifier, x, y) > 0.5
    assert attack_success_rate(classifier, checkerboard(), x, y, TARGET) > 0.9
    assert invertune_repair.repaired.details["identified_target"] == TARGET


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="issue 16 is open: on this tiny CLIP InverTune's tuning leaves the true "
                                       "trigger's ASR at 100% (on the zoo's checkerboard CLIP it removes 87%)")
def test_tiny_backdoored_clip_invertune_lowers_its_asr(invertune_repair) -> None:
    assert invertune_repair.after.asr["true trigger"] < invertune_repair.before.asr["true trigger"]
