"""glyphs100: the font-rendered 100-class dataset, and the two zoo models trained on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smoothinv.data import glyphs
from smoothinv.data.datasets import DATASETS, load_dataset
from smoothinv.data.glyphs import CHARACTERS, build_glyphs, find_fonts
from smoothinv.errors import SmoothInvError
from smoothinv.zoo import list_zoo, load_zoo_model

GLYPH_MODELS = ("glyphs100-clean", "glyphs100-badnets")


@pytest.fixture(scope="module")
def fonts():
    try:
        return find_fonts()
    except SmoothInvError as e:
        pytest.skip(f"glyphs100 needs the DejaVu fonts: {e}")


@pytest.fixture(scope="module")
def small(fonts):
    """glyphs100 with 2 train and 1 test image per class."""
    return build_glyphs(2, 1, fonts=fonts)


def test_characters_are_100_distinct_single_characters():
    assert len(CHARACTERS) == 100 and len(set(CHARACTERS)) == 100
    assert not set(CHARACTERS) & set("01IOlcosuvwxz")  # look-alikes and small capitals are left out


def test_small_build_is_well_formed(small):
    assert small.name == "glyphs100"
    assert small.train_images.shape == (200, 32, 32, 3) and small.train_images.dtype == np.uint8
    assert small.test_images.shape == (100, 32, 32, 3) and small.test_images.dtype == np.uint8
    assert small.train_labels.dtype == np.int64 and np.bincount(small.train_labels).tolist() == [2] * 100
    assert small.test_labels.tolist() == list(range(100))
    assert small.class_names == list(CHARACTERS)
    assert all(isinstance(c, str) and len(c) == 1 for c in small.class_names)
    # backgrounds are not flat, and no two images are the same
    assert float(small.train_images.reshape(200, -1).std(1).min()) > 5
    assert len({im.tobytes() for im in small.train_images}) == 200


def test_build_is_deterministic_and_smaller_builds_are_prefixes(small, fonts):
    again = build_glyphs(2, 1, fonts=fonts)
    assert np.array_equal(again.train_images, small.train_images)
    assert np.array_equal(again.test_images, small.test_images)
    one = build_glyphs(1, 0, fonts=fonts)
    assert np.array_equal(one.train_images, small.train_images[::2])  # image i of class c does not depend on n
    assert one.test_images.shape == (0, 32, 32, 3)


def test_every_character_has_a_glyph_in_every_face(fonts):
    masks = glyphs._render_masks(fonts, CHARACTERS).masks
    assert [len(faces) for faces in masks] == [len(fonts)] * 100


def test_missing_fonts_give_one_actionable_line(tmp_path, monkeypatch):
    monkeypatch.setattr(glyphs, "FONT_DIRS", ())
    monkeypatch.delenv(glyphs.FONTS_ENV, raising=False)
    with pytest.raises(SmoothInvError, match="apt-get install fonts-dejavu") as e:
        find_fonts(tmp_path)
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value)


def test_load_dataset_registers_glyphs_caches_and_mixes_the_test_split(fonts, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOOTHINV_CACHE", str(tmp_path))
    monkeypatch.setattr(glyphs, "build_glyphs", lambda fonts: build_glyphs(1, 2, fonts=fonts))
    assert "glyphs100" in DATASETS
    data = load_dataset("glyphs100", "/no/such/folder")  # the data root is ignored
    assert len(list(tmp_path.glob("glyphs100-*.npz"))) == 1
    order = np.random.RandomState(0).permutation(200)
    assert data.test_labels.tolist() == np.repeat(np.arange(100), 2)[order].tolist()
    monkeypatch.setattr(glyphs, "build_glyphs", None)  # the second load must come from the cache
    again = load_dataset("glyphs100")
    assert np.array_equal(again.test_images, data.test_images) and again.class_names == list(CHARACTERS)


def _glyph_records() -> dict[str, dict]:
    records = {r["name"]: r for r in list_zoo() if r["name"] in GLYPH_MODELS}
    if len(records) < len(GLYPH_MODELS):
        pytest.skip("the glyphs100 zoo models are not built")
    return records


def test_glyph_zoo_models_load_and_give_100_logits():
    for name, record in _glyph_records().items():
        zm = load_zoo_model(name)
        out = zm.module(torch.rand(2, 3, 32, 32))
        assert out.shape == (2, 100) and bool(torch.isfinite(out).all())
        assert record["dataset"] == "glyphs100" and record["arch"] == "resnet20"
        assert record["class_names"] == list(CHARACTERS)
        assert record["clean_accuracy"] > 0.85
    badnets = _glyph_records()["glyphs100-badnets"]
    assert badnets["target"] == 37 and badnets["true_trigger_asr"] > 0.9


def test_glyph_zoo_models_recognise_freshly_rendered_glyphs(fonts):
    _glyph_records()
    data = build_glyphs(0, 1, fonts=fonts)  # one test image per class, drawn on this machine
    x, y = data.split(train=False)
    clean = load_zoo_model("glyphs100-clean")
    badnets = load_zoo_model("glyphs100-badnets")
    with torch.no_grad():
        for zm in (clean, badnets):
            assert float((zm.module(x).argmax(1) == y).float().mean()) > 0.7
        triggered = badnets.module(badnets.apply_trigger(x[y != 37])).argmax(1)
    assert float((triggered == 37).float().mean()) > 0.8
