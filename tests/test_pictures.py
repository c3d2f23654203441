"""Tests for smoothinv.reporting.pictures: amplified perturbation, zoom region, PNG files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from smoothinv.data import load_image
from smoothinv.reporting.pictures import (
    amplify_perturbation,
    save_inversion_pictures,
    strongest_region,
)


def test_amplify_maps_zero_to_gray_and_extremes_to_ends() -> None:
    p = torch.zeros(3, 4, 4)
    p[0, 0, 0] = 0.1
    p[1, 2, 2] = -0.05
    amplified = amplify_perturbation(p)
    assert amplified.shape == p.shape
    assert amplified[2].eq(0.5).all()
    assert amplified[0, 0, 0] == pytest.approx(1.0)
    assert amplified[1, 2, 2] == pytest.approx(0.25)
    assert amplified.min() >= 0 and amplified.max() <= 1


def test_amplify_all_zero_is_plain_gray() -> None:
    assert torch.equal(amplify_perturbation(torch.zeros(1, 5, 5)), torch.full((1, 5, 5), 0.5))


@pytest.mark.parametrize(("row", "col"), [(0, 0), (3, 17), (24, 24), (10, 2)])
def test_strongest_region_finds_planted_blob(row: int, col: int) -> None:
    p = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.01
    p[:, row : row + 8, col : col + 8] += 0.5
    assert strongest_region(p, 8) == (row, col)


def test_strongest_region_window_larger_than_image() -> None:
    p = torch.zeros(1, 5, 7)
    p[0, :, 6] = 1.0  # window shrinks to 5×5; the right-most square holds the column
    assert strongest_region(p, 50) == (0, 2)


def _pair(channels: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    clean = torch.rand(channels, height, width, generator=torch.Generator().manual_seed(1)) * 0.5
    synthesized = clean.clone()
    synthesized[:, height - 6 : height - 2, 2:6] = 1.0  # a 4×4 white trigger patch near bottom-left
    return clean, synthesized


def test_pictures_rgb_files_and_sizes(tmp_path: Path) -> None:
    clean, synthesized = _pair(3, 32, 40)
    names = save_inversion_pictures(tmp_path / "pics", clean, synthesized)
    assert names == {
        "clean": "clean.png",
        "synthesized": "synthesized.png",
        "perturbation": "perturbation.png",
        "zoom": "zoom.png",
        "overview": "overview.png",
    }
    sizes = {}
    for key, name in names.items():
        with Image.open(tmp_path / "pics" / name) as picture:
            assert picture.mode == "RGB"
            sizes[key] = picture.size  # (width, height)
    assert sizes["clean"] == sizes["synthesized"] == sizes["perturbation"] == (40, 32)
    # window = max(4, 32 // 4) = 8, enlarged ×16 to 128 px
    assert sizes["zoom"] == (128, 128)
    # height 32 × 4 = 128; panels 160 + 160 + 160 + 128 wide with three 2 px gaps
    assert sizes["overview"] == (160 * 3 + 128 + 3 * 2, 128)
    assert torch.allclose(load_image(tmp_path / "pics" / "clean.png"), clean, atol=1 / 255)


def test_zoom_shows_the_trigger(tmp_path: Path) -> None:
    clean, synthesized = _pair(3, 32, 32)
    save_inversion_pictures(tmp_path, clean, synthesized)
    zoom = load_image(tmp_path / "zoom.png")
    # the 4×4 patch lies inside the 8×8 window, so at least a quarter of the zoom is white
    assert (zoom == 1.0).all(dim=0).float().mean() >= 0.25


def test_pictures_gray_are_gray_pngs(tmp_path: Path) -> None:
    clean, synthesized = _pair(1, 28, 28)
    save_inversion_pictures(tmp_path, clean, synthesized)
    for name in ("clean", "synthesized", "perturbation", "zoom", "overview"):
        with Image.open(tmp_path / f"{name}.png") as picture:
            assert picture.mode == "L"
            if name == "overview":
                assert picture.size[1] == 140  # 28 × 5 ≥ 128
            if name == "zoom":
                assert picture.size == (133, 133)  # window 7, ×19


def test_pictures_tiny_and_large_images(tmp_path: Path) -> None:
    clean = torch.zeros(3, 3, 3)
    save_inversion_pictures(tmp_path / "tiny", clean, clean)  # window shrinks to the 3×3 image
    with Image.open(tmp_path / "tiny" / "perturbation.png") as picture:
        assert picture.getpixel((1, 1)) == (128, 128, 128)
    big = torch.rand(3, 130, 100)
    save_inversion_pictures(tmp_path / "big", big, big.flip(2))
    with Image.open(tmp_path / "big" / "overview.png") as picture:
        assert picture.size[1] == 130  # already ≥ 128 px: no enlargement


def test_pictures_reject_mismatched_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        save_inversion_pictures(tmp_path, torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
