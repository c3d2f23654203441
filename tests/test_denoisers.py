"""SmoothInv "w/ diffusion": the σ → t* map, loading diffusers folders safely, one-shot denoising,
the shipped denoisers, and --denoiser through the commands."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import error_line, run_cli, tiny_cnn
from smoothinv.data.datasets import DATA_ENV, data_root, load_dataset
from smoothinv.denoisers import (DENOISERS, DenoiserRef, NoiseSchedule, load_denoiser, open_denoiser,
                                 resolve_denoiser)
from smoothinv.denoisers.quality import denoising_psnr
from smoothinv.denoisers.unet import ddpm_scheduler, small_unet
from smoothinv.errors import SmoothInvError
from smoothinv.methods import get_method
from smoothinv.methods.registry import method_spec
from smoothinv.models import create_model, save_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
diffusers = pytest.importorskip("diffusers", reason="the diffusion extra (pip install 'smoothinv[diffusion]')")


def linear_schedule() -> NoiseSchedule:
    return NoiseSchedule.from_betas(torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))


def test_sigma_to_timestep_on_the_ddpm_schedule():
    schedule = linear_schedule()
    # Exact values for Ho et al.'s linear schedule: the t whose sqrt((1-ᾱ)/ᾱ) is nearest to 2σ.
    assert [schedule.timestep(s) for s in (0.12, 0.25, 0.5, 1.0)] == [70, 144, 258, 396]
    ratio = schedule.noise_ratio
    for sigma in (0.05, 0.12, 0.25, 0.5, 1.0):
        t = schedule.timestep(sigma)
        assert abs(float(ratio[t]) - 2 * sigma) <= min(abs(float(ratio[t - 1]) - 2 * sigma),
                                                       abs(float(ratio[t + 1]) - 2 * sigma))
        assert schedule.sigma_of(t) == pytest.approx(sigma, rel=0.02)  # timesteps are integers
    assert schedule.timesteps(torch.tensor([0.12, 0.25, 0.5, 1.0])).tolist() == [70, 144, 258, 396]


def test_schedule_matches_diffusers_and_refuses_bad_values():
    ours = linear_schedule().alphas_cumprod
    theirs = ddpm_scheduler().alphas_cumprod.double()
    assert torch.allclose(ours, theirs, rtol=1e-5)
    for bad in (torch.tensor([0.9, 0.95]), torch.tensor([1.0, float("nan")]), torch.tensor([0.5])):
        with pytest.raises(ValueError):
            NoiseSchedule(bad)
    with pytest.raises(ValueError):
        linear_schedule().timestep(0.0)


def save_tiny_ddpm(folder: Path, *, channels: int = 3, size: int = 8, pickled: bool = False, seed: int = 0,
                   prediction_type: str = "epsilon") -> Path:
    """A random 2-level UNet2DModel in diffusers' own format (save_pretrained)."""
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels,
                                 block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    unet.save_pretrained(folder, safe_serialization=not pickled)
    diffusers.DDPMScheduler(prediction_type=prediction_type).save_pretrained(folder)
    return folder


def test_a_diffusers_folder_loads_is_differentiable_and_nearly_identity_at_small_sigma(tmp_path):
    denoiser = load_denoiser(save_tiny_ddpm(tmp_path / "ddpm"))
    assert denoiser.info.channels == 3 and denoiser.info.size == (8, 8) and denoiser.name == "ddpm"
    x = torch.rand(4, 3, 8, 8)
    out = denoiser(x, torch.full((4,), 1e-3))
    assert out.shape == x.shape and float((out - x).abs().max()) < 0.05
    noisy = (x + 0.5 * torch.randn_like(x)).requires_grad_(True)
    y = denoiser(noisy, torch.full((4,), 0.5))
    assert float(y.detach().min()) >= 0 and float(y.detach().max()) <= 1
    (grad,) = torch.autograd.grad(y.sum(), noisy)
    assert torch.isfinite(grad).all() and float(grad.abs().sum()) > 0
    # σ = 0 rows pass through unchanged; others are denoised
    mixed = denoiser(noisy.detach(), torch.tensor([0.0, 0.5, 0.0, 0.5]))
    assert torch.equal(mixed[0], noisy[0].detach()) and not torch.equal(mixed[1], noisy[1].detach())
    assert denoiser.describe([0.25, 0.5])["timestep_per_sigma"] == {"0.25": 144, "0.5": 258}


def test_a_pipeline_layout_and_other_prediction_types_load(tmp_path):
    pipeline = tmp_path / "pipe"
    save_tiny_ddpm(pipeline / "unet", prediction_type="v_prediction")
    (pipeline / "scheduler").mkdir()
    shutil.move(pipeline / "unet" / "scheduler_config.json", pipeline / "scheduler" / "scheduler_config.json")
    (pipeline / "model_index.json").write_text("{}")
    denoiser = load_denoiser(pipeline)
    assert denoiser.info.prediction_type == "v_prediction"
    assert denoiser(torch.rand(2, 3, 8, 8), torch.full((2,), 0.25)).shape == (2, 3, 8, 8)


def test_pickled_weights_need_the_opt_in(tmp_path):
    folder = save_tiny_ddpm(tmp_path / "ddpm", pickled=True)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(SmoothInvError, match="trust_code"):
        load_denoiser(folder)
    assert load_denoiser(folder, trust_code=True).info.channels == 3


def test_bad_folders_get_one_line_errors(tmp_path):
    with pytest.raises(SmoothInvError, match="neither a known denoiser"):
        resolve_denoiser(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SmoothInvError, match="has no config.json"):
        resolve_denoiser(empty)
    folder = save_tiny_ddpm(tmp_path / "ddpm")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [100000, 100000]}))
    with pytest.raises(SmoothInvError, match="out of range"):
        load_denoiser(folder)
    (folder / "config.json").write_text(json.dumps({**config, "time_embedding_dim": 10**9}))
    with pytest.raises(SmoothInvError, match="corrupt or crafted"):
        load_denoiser(folder)
    (folder / "config.json").write_text(json.dumps({**config, "block_out_channels": [16, 16]}))
    with pytest.raises(SmoothInvError, match="does not match its config.json"):
        load_denoiser(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(SmoothInvError, match="not valid JSON"):
        load_denoiser(folder)
    (folder / "config.json").write_text(json.dumps({**config, "_class_name": "UNet2DConditionModel"}))
    with pytest.raises(SmoothInvError, match="unconditional UNet2DModel"):
        load_denoiser(folder)
    corrupt = save_tiny_ddpm(tmp_path / "corrupt")
    (corrupt / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(SmoothInvError, match="corrupt safetensors"):
        load_denoiser(corrupt)


def test_changed_weights_are_refused_and_sizes_must_match(tmp_path):
    folder = save_tiny_ddpm(tmp_path / "ddpm")
    ref = resolve_denoiser(folder)
    save_tiny_ddpm(folder, seed=1)  # other weights, same folder
    with pytest.raises(SmoothInvError, match="changed since"):
        open_denoiser(ref)
    denoiser = load_denoiser(folder)
    with pytest.raises(SmoothInvError, match="takes 3x8x8 images but the model takes 1x28x28"):
        denoiser.check_images(1, (28, 28))
    with pytest.raises(SmoothInvError, match="takes 3x8x8"):
        denoiser(torch.rand(2, 3, 16, 16), torch.full((2,), 0.25))


def test_smoothinv_differentiates_through_the_denoiser_and_records_it(tmp_path):
    ref = resolve_denoiser(save_tiny_ddpm(tmp_path / "ddpm"))
    spec = method_spec("smoothinv", steps=3, noise_samples=2, denoiser=ref)
    assert spec.to_dict()["denoiser"]["sha256"] == ref.sha256
    again = method_spec("smoothinv", **{k: v for k, v in spec.to_dict().items() if k != "method"})
    assert again.config.denoiser == ref  # a settings file's dict comes back as a DenoiserRef
    model = tiny_cnn()
    image = torch.rand(3, 8, 8)
    with_t = spec.build().invert(model, image, 1, seed=0)
    without = method_spec("smoothinv", steps=3, noise_samples=2).build().invert(model, image, 1, seed=0)
    assert with_t.config["denoiser"]["timestep_per_sigma"] == {"0.25": 144}
    assert not torch.allclose(with_t.perturbation, without.perturbation)
    with pytest.raises(SmoothInvError, match="no option 'denoiser'"):
        get_method("nc", denoiser=ref)


@pytest.mark.parametrize("name", ["cifar10-ddpm", "fashion-mnist-ddpm"])
def test_shipped_denoisers_load_and_beat_the_noisy_input(name):
    denoiser = load_denoiser(name)
    dataset = DENOISERS.get(name).dataset
    root = data_root() if os.environ.get(DATA_ENV) else SHARED
    needed = root / ("cifar10-jpeg.tar" if dataset == "cifar10" else "fashion-mnist")
    if not needed.exists():
        pytest.skip(f"{needed} not found; set {DATA_ENV} to check {name} on real test images")
    x, _ = load_dataset(dataset, root).split(train=False)
    rows = denoising_psnr(denoiser, x[:16], [0.25], seed=0)
    assert rows[0]["psnr_denoised"] > rows[0]["psnr_clipped"] + 3, rows


def write_npz(path: Path, x: torch.Tensor, y: torch.Tensor) -> None:
    np.savez(path, x=(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8), y=y.numpy())


def test_invert_and_scan_take_a_denoiser_folder(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model_path = tmp_path / "model.safetensors"
    save_model(model_path, create_model("small_cnn", 3), arch="small_cnn", num_classes=3, input_size=(28, 28),
               channels=1)
    folder = save_tiny_ddpm(tmp_path / "ddpm", channels=1, size=28)
    x = torch.rand(30, 1, 28, 28)
    y = torch.arange(30) % 3
    write_npz(tmp_path / "clean.npz", x, y)
    Image.fromarray((x[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "img.png")
    common = ("--model", model_path, "--image", tmp_path / "img.png", "--clean", tmp_path / "clean.npz",
              "--steps", 2, "--noise-samples", 2, "--sigma", "0.25")
    code, out, err = run_cli(monkeypatch, capsys, "invert", *common, "--target", 1, "--out", tmp_path / "inv",
                             "--no-baseline", "--denoiser", folder)
    assert code == 0, err
    record = json.loads((tmp_path / "inv" / "result.json").read_text())
    assert record["denoiser"]["name"] == "ddpm" and record["denoiser"]["timestep_per_sigma"] == {"0.25": 144}
    assert record["settings"]["method"]["denoiser"]["sha256"] == record["denoiser"]["sha256"]
    code, out, err = run_cli(monkeypatch, capsys, "scan", *common, "--out", tmp_path / "scan",
                             "--fallback-sigma", "none", "--denoiser", folder)
    assert code == 0, err
    scan = json.loads((tmp_path / "scan" / "scan.json").read_text())
    assert scan["denoiser"]["sha256"] == record["denoiser"]["sha256"]
    # a denoiser for other images, and a method that does not smooth, are refused before any work
    other = save_tiny_ddpm(tmp_path / "rgb", channels=3, size=8)
    code, _, err = run_cli(monkeypatch, capsys, "invert", *common, "--target", 1, "--out", tmp_path / "inv2",
                           "--denoiser", other)
    assert code == 2 and "takes 3x8x8 images but the model takes 1x28x28" in error_line(err, alone=False)
    code, _, err = run_cli(monkeypatch, capsys, "invert", *common[:6], "--steps", 2, "--target", 1,
                           "--out", tmp_path / "inv3", "--method", "nc", "--denoiser", folder)
    assert code == 2 and "--denoiser does not apply to --method nc" in error_line(err, alone=False)
    assert not (tmp_path / "inv2").exists() and not (tmp_path / "inv3").exists()


def test_training_exports_a_folder_both_loaders_read_and_resumes(tmp_path):
    from smoothinv.denoiser_training import DenoiserRecipe, train_denoiser

    images = torch.rand(16, 1, 8, 8)
    recipe = DenoiserRecipe(steps=2, batch_size=4, widths=(16, 16), checkpoint_every=1, bf16=False)
    folder = train_denoiser(images, recipe, tmp_path / "dn", name="dn", dataset="random")
    denoiser = load_denoiser(folder)
    assert denoiser.info.trained_sigma == pytest.approx((0.0397, 1.6038), rel=1e-3)
    assert denoiser(torch.rand(2, 1, 8, 8), torch.full((2,), 0.25)).shape == (2, 1, 8, 8)
    theirs = diffusers.UNet2DModel.from_pretrained(folder)  # diffusers' own loader reads it too
    assert theirs.config.in_channels == 1
    meta = json.loads((folder / "smoothinv.json").read_text())
    assert meta["trained_timesteps"] == [20, 487] and len(meta["loss_every_50_steps"]) == 1
    # a longer run with the same recipe but more steps is another recipe: refused, not mixed
    with pytest.raises(ValueError, match="different recipe"):
        train_denoiser(images, DenoiserRecipe(steps=3, batch_size=4, widths=(16, 16)), folder, name="dn",
                       dataset="random")
    # rerunning the same recipe resumes from the checkpoint (nothing left to do) and gives the same weights
    before = (folder / "diffusion_pytorch_model.safetensors").read_bytes()
    train_denoiser(images, recipe, folder, name="dn", dataset="random")
    assert (folder / "diffusion_pytorch_model.safetensors").read_bytes() == before


def test_bench_refuses_a_denoiser_for_methods_that_do_not_smooth(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "bench", "detect", "--method", "mmbd", "--denoiser", "auto")
    assert code == 2 and "--denoiser does not apply to --method mmbd" in error_line(err)
    code, _, err = run_cli(monkeypatch, capsys, "bench", "table2", "--method", "nc", "--denoiser", "auto")
    assert code == 2 and "--denoiser does not apply to --method nc" in error_line(err)
    code, _, err = run_cli(monkeypatch, capsys, "zoo", "sanity", "fmnist-badnets", "--denoiser", "/nonexistent")
    assert code == 2 and "neither a known denoiser" in error_line(err)
