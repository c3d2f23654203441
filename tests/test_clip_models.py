"""CLIP in plain torch: state_dict layouts, config inference, checkpoint reading, the tokenizer,
the zero-shot classifier and its file, and hostile checkpoints.

The reference key lists below are written from OpenAI's clip/model.py and open_clip's
model.py / transformer.py / modified_resnet.py (read, not imported: neither imports here), and
the full-size parameter counts are the ones OpenAI's CLIP notebook prints (ViT-B/32:
151,277,313; RN50: 102,007,137). Full-size models are built on the meta device only.
"""

from __future__ import annotations

import gzip
import hashlib
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model, get_model_info, load_model, model_names, probe_model
from smoothinv.models.clip import (
    CLIP_MEAN,
    CLIP_STD,
    RN50,
    VIT_B_32,
    CLIPModel,
    ClipConfig,
    ResNetConfig,
    TextConfig,
    VitConfig,
    ZeroShotClassifier,
    classifier_from_embeddings,
    clip_from_state,
    clip_tokenizer,
    infer_clip_config,
    load_clip,
    read_clip_state,
    save_zeroshot_classifier,
    text_class_embeddings,
    zeroshot_class_names,
    zeroshot_classifier,
)
from smoothinv.models.clip.cleaning import clean_text
from smoothinv.models.clip.tokenizer import VOCAB_FILE, byte_alphabet, split_words
from smoothinv.models.loading import Normalize

Shapes = dict[str, tuple[int, ...]]

SMALL_VIT = ClipConfig(VitConfig(width=64, layers=2, patch_size=8, image_size=32, embed_dim=32),
                       TextConfig(width=64, layers=1, context_length=77, vocab_size=49408, embed_dim=32))
SMALL_RN = ClipConfig(ResNetConfig(width=8, layers=(1, 2, 1, 1), image_size=64, embed_dim=32),
                      TextConfig(width=64, layers=1, context_length=77, vocab_size=49408, embed_dim=32))


# ----------------------------------------------------------------------------- reference layouts


def _ln(prefix: str, width: int) -> Shapes:
    return {f"{prefix}.weight": (width,), f"{prefix}.bias": (width,)}


def _linear(prefix: str, out: int, inp: int) -> Shapes:
    return {f"{prefix}.weight": (out, inp), f"{prefix}.bias": (out,)}


def _bn(prefix: str, ch: int) -> Shapes:
    keys = {f"{prefix}.{n}": (ch,) for n in ("weight", "bias", "running_mean", "running_var")}
    return keys | {f"{prefix}.num_batches_tracked": ()}


def _resblocks(prefix: str, width: int, layers: int) -> Shapes:
    """OpenAI's ResidualAttentionBlock: ln_1, nn.MultiheadAttention, ln_2, mlp.c_fc/c_proj (4x)."""
    keys: Shapes = {}
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}"
        keys |= _ln(f"{p}.ln_1", width)
        keys |= {f"{p}.attn.in_proj_weight": (3 * width, width), f"{p}.attn.in_proj_bias": (3 * width,)}
        keys |= _linear(f"{p}.attn.out_proj", width, width) | _ln(f"{p}.ln_2", width)
        keys |= _linear(f"{p}.mlp.c_fc", 4 * width, width) | _linear(f"{p}.mlp.c_proj", width, 4 * width)
    return keys


def vit_visual_keys(width: int, layers: int, patch: int, grid: int, embed: int) -> Shapes:
    keys = {"visual.class_embedding": (width,), "visual.positional_embedding": (grid * grid + 1, width),
            "visual.proj": (width, embed), "visual.conv1.weight": (width, 3, patch, patch)}
    keys |= _ln("visual.ln_pre", width) | _ln("visual.ln_post", width)
    return keys | _resblocks("visual.transformer", width, layers)


def resnet_visual_keys(width: int, layers: tuple[int, ...], grid: int, embed: int) -> Shapes:
    """OpenAI's ModifiedResNet: 3-conv stem, Bottlenecks (expansion 4) with downsample.0/1, attnpool."""
    half = width // 2
    keys = {"visual.conv1.weight": (half, 3, 3, 3), "visual.conv2.weight": (half, half, 3, 3),
            "visual.conv3.weight": (width, half, 3, 3)}
    keys |= _bn("visual.bn1", half) | _bn("visual.bn2", half) | _bn("visual.bn3", width)
    inplanes = width
    for stage, blocks in enumerate(layers):
        planes = width * 2 ** stage
        for j in range(blocks):
            p = f"visual.layer{stage + 1}.{j}"
            keys |= {f"{p}.conv1.weight": (planes, inplanes, 1, 1), f"{p}.conv2.weight": (planes, planes, 3, 3),
                     f"{p}.conv3.weight": (planes * 4, planes, 1, 1)}
            keys |= _bn(f"{p}.bn1", planes) | _bn(f"{p}.bn2", planes) | _bn(f"{p}.bn3", planes * 4)
            if j == 0:  # every stage's first block changes the width (stage 1: width -> 4 width)
                keys |= {f"{p}.downsample.0.weight": (planes * 4, inplanes, 1, 1)}
                keys |= _bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    features = width * 32
    keys |= {"visual.attnpool.positional_embedding": (grid * grid + 1, features)}
    for name in ("k_proj", "q_proj", "v_proj"):
        keys |= _linear(f"visual.attnpool.{name}", features, features)
    return keys | _linear("visual.attnpool.c_proj", embed, features)


def text_keys(width: int, layers: int, context: int, vocab: int, embed: int) -> Shapes:
    keys = {"token_embedding.weight": (vocab, width), "positional_embedding": (context, width),
            "text_projection": (width, embed), "logit_scale": ()}
    return keys | _resblocks("transformer", width, layers) | _ln("ln_final", width)


def shapes(module: torch.nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def meta_clip(config: ClipConfig) -> CLIPModel:
    with torch.device("meta"):
        return CLIPModel(config)


def test_vit_b_32_keys_shapes_and_size_match_openai() -> None:
    model = meta_clip(VIT_B_32)
    assert shapes(model) == vit_visual_keys(768, 12, 32, 7, 512) | text_keys(512, 12, 77, 49408, 512)
    assert sum(p.numel() for p in model.parameters()) == 151_277_313


def test_rn50_keys_shapes_and_size_match_openai() -> None:
    model = meta_clip(RN50)
    assert shapes(model) == resnet_visual_keys(64, (3, 4, 6, 3), 7, 1024) | text_keys(512, 12, 77, 49408, 1024)
    assert sum(p.numel() for p in model.parameters()) == 102_007_137


@pytest.mark.parametrize("config", [VIT_B_32, RN50], ids=["ViT-B-32", "RN50"])
def test_config_inferred_from_full_size_shapes(config: ClipConfig) -> None:
    state = meta_clip(config).state_dict()
    assert infer_clip_config(state) == config
    assert infer_clip_config(state, quick_gelu=False).text.quick_gelu is False
    assert config.vision.heads == (12 if isinstance(config.vision, VitConfig) else 32) and config.text.heads == 8


# ----------------------------------------------------------------------------- small models


@pytest.fixture(scope="module", params=["vit", "resnet"])
def small(request: pytest.FixtureRequest) -> CLIPModel:
    torch.manual_seed(0)
    model = CLIPModel(SMALL_VIT if request.param == "vit" else SMALL_RN).eval()
    with torch.no_grad():  # BN statistics and zero-initialised scales made non-trivial
        for key, value in model.state_dict().items():
            if "running_var" in key:
                value.uniform_(0.5, 1.5)
            elif value.is_floating_point() and value.dim() == 1 and "bn" in key:
                value.normal_(0, 0.2)
    return model


def images_for(model: CLIPModel, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.config.vision.image_size
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


TOKENS = ["a photo of a cat", "a dog", "x"]


def test_small_models_have_reference_keys_and_inferred_configs(small: CLIPModel) -> None:
    v, t = small.config.vision, small.config.text
    if isinstance(v, VitConfig):
        visual = vit_visual_keys(v.width, v.layers, v.patch_size, v.grid, v.embed_dim)
    else:
        visual = resnet_visual_keys(v.width, v.layers, v.grid, v.embed_dim)
    assert shapes(small) == visual | text_keys(t.width, t.layers, t.context_length, t.vocab_size, t.embed_dim)
    assert infer_clip_config(small.state_dict()) == small.config
    logits = small(images_for(small), clip_tokenizer()(TOKENS))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def _same_outputs(a: CLIPModel, b: CLIPModel) -> None:
    x, tokens = images_for(a), clip_tokenizer()(TOKENS)
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(x), b.encode_image(x))
        torch.testing.assert_close(a.encode_text(tokens), b.encode_text(tokens))


def test_open_clip_checkpoint_round_trips_through_pt_and_safetensors(small: CLIPModel, tmp_path: Path) -> None:
    state = small.state_dict()
    # open_clip's training checkpoint: DataParallel prefix, nested under state_dict, with extras.
    wrapped = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()},
               "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    torch.save(wrapped, tmp_path / "epoch_3.pt")
    assert read_clip_state(tmp_path / "epoch_3.pt").keys() == state.keys()
    _same_outputs(small, load_clip(tmp_path / "epoch_3.pt"))
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "clip.safetensors"))
    loaded = load_clip(tmp_path / "clip.safetensors")
    _same_outputs(small, loaded)
    assert not loaded.training and loaded.config == small.config


def test_openai_state_dict_bookkeeping_and_half_precision(small: CLIPModel) -> None:
    state = {k: v.half() if v.is_floating_point() else v for k, v in small.state_dict().items()}
    state |= {"input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
              "vocab_size": torch.tensor(49408)}
    state["logit_scale"] = state["logit_scale"].reshape(1)  # open_clip's nonscalar_logit_scale
    model = clip_from_state(state)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(t.is_meta for t in model.state_dict().values())


def test_quick_gelu_flag_changes_the_vit() -> None:
    torch.manual_seed(0)
    model = CLIPModel(SMALL_VIT).eval()
    gelu = clip_from_state(model.state_dict(), quick_gelu=False)
    x = images_for(model)
    assert not torch.allclose(model.encode_image(x), gelu.encode_image(x))


def hashed(n: int, seed: int) -> torch.Tensor:
    """n values in [-0.5, 0.5) from an integer hash: the same on every platform and torch version."""
    mask = 0xFFFFFFFF
    h = (torch.arange(n, dtype=torch.int64) * 0x9E3779B1 + seed * 0x7F4A7C15) & mask
    h = ((h ^ (h >> 15)) * 0x85EBCA77) & mask
    h = ((h ^ (h >> 13)) * 0xC2B2AE3D) & mask
    return (h ^ (h >> 16)).double() / 2**32 - 0.5


def hashed_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights of `model`'s layout filled from `hashed`, in sorted key order: norm scales near 1,
    variances in [1, 1.125], matrices scaled by 1/sqrt(fan-in), the rest within ±0.1."""
    state = {}
    for seed, (key, value) in enumerate(sorted(model.state_dict().items())):
        shape, n = tuple(value.shape), value.numel()
        t = hashed(n, seed).reshape(shape)
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
            continue
        if "running_var" in key:
            t = 1 + 0.5 * t ** 2
        elif key.endswith("weight") and t.dim() == 1:
            t = 1 + 0.2 * t
        elif key == "logit_scale":
            t = torch.tensor(4.605170186, dtype=torch.float64)
        elif t.dim() >= 2:
            t = t * 3.5 / (n / shape[0]) ** 0.5
        else:
            t = 0.2 * t
        state[key] = t.float()
    return state


# First four values of both rows of encode_image / encode_text, computed by open_clip 3.3.0's
# CLIP class (open_clip/model.py, transformer.py, modified_resnet.py) holding `hashed_state`
# weights; text tower width 64, one layer, embed 32; tokens of "a photo of a cat", "a dog".
OPEN_CLIP_OUTPUTS = {
    ("vit", True): ([[1.256331, -1.012964, -0.705812, 1.521692], [-0.020112, -1.740986, -0.303023, 1.994828]],
                    [[1.050997, 0.108593, 1.513914, 0.690262], [0.974381, 0.273576, 0.349886, -0.854039]]),
    ("vit", False): ([[1.255908, -1.024266, -0.730556, 1.532156], [-0.005269, -1.752996, -0.327778, 1.998476]],
                     [[1.052937, 0.105972, 1.506202, 0.700402], [0.980234, 0.266418, 0.362644, -0.849342]]),
    ("resnet", True): ([[0.080202, -0.183265, -0.075583, 0.278287], [0.080781, -0.181937, -0.075443, 0.278022]],
                       [[1.050997, 0.108593, 1.513914, 0.690262], [0.974381, 0.273576, 0.349886, -0.854039]]),
}


@pytest.mark.parametrize(("tower", "quick_gelu"), list(OPEN_CLIP_OUTPUTS))
def test_outputs_equal_open_clips_on_the_same_weights(tower: str, quick_gelu: bool) -> None:
    vision = (VitConfig(width=64, layers=2, patch_size=8, image_size=32, embed_dim=32, quick_gelu=quick_gelu)
              if tower == "vit" else ResNetConfig(width=8, layers=(1, 2, 1, 1), image_size=64, embed_dim=32))
    config = ClipConfig(vision, TextConfig(width=64, layers=1, context_length=77, vocab_size=49408, embed_dim=32,
                                           quick_gelu=quick_gelu))
    model = clip_from_state(hashed_state(meta_clip(config)), quick_gelu=quick_gelu)
    size = vision.image_size
    images = (2 * hashed(2 * 3 * size * size, 999)).reshape(2, 3, size, size).float()
    with torch.no_grad():
        image, text = model.encode_image(images), model.encode_text(clip_tokenizer()(["a photo of a cat", "a dog"]))
    want_image, want_text = OPEN_CLIP_OUTPUTS[(tower, quick_gelu)]
    torch.testing.assert_close(image[:, :4], torch.tensor(want_image), rtol=0, atol=2e-5)
    torch.testing.assert_close(text[:, :4], torch.tensor(want_text), rtol=0, atol=2e-5)


def test_image_size_is_checked(small: CLIPModel) -> None:
    with pytest.raises(SmoothInvError, match="resize the images") as err:
        small.encode_image(torch.zeros(1, 3, 16, 16))
    assert "\n" not in str(err.value)
    with pytest.raises(SmoothInvError, match="integer token ids"):
        small.encode_text(torch.zeros(1, 10, dtype=torch.long))


# ----------------------------------------------------------------------------- tokenizer


def _merges() -> list[tuple[str, ...]]:
    path = Path(__file__).parents[1] / "src/smoothinv/models/clip" / VOCAB_FILE
    return [tuple(line.split()) for line in gzip.decompress(path.read_bytes()).decode().split("\n")[1:48895]]


def test_vocabulary_file_is_the_published_one() -> None:
    path = Path(__file__).parents[1] / "src/smoothinv/models/clip" / VOCAB_FILE
    digest = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert (path.parent / "bpe_simple_vocab_16e6.LICENSE.txt").is_file()


def test_known_ids_derived_from_the_vocabulary() -> None:
    tok = clip_tokenizer()
    merges = _merges()

    def word_id(word: str) -> int:  # a merged token's id: 512 + its merge's rank (unique in the file)
        ranks = [r for r, m in enumerate(merges) if "".join(m) == word + "</w>"]
        assert len(ranks) == 1
        return 512 + ranks[0]

    alphabet = list(byte_alphabet().values())
    assert len(alphabet) == 256 and alphabet[0] == "!" and 256 + alphabet.index("a") == 320  # "a</w>"
    expected = [49406, 320, word_id("photo"), word_id("of"), 320, word_id("cat"), 49407]
    assert expected == [49406, 320, 1125, 539, 320, 2368, 49407]  # the ids published with CLIP
    assert tok("a photo of a cat")[0, :8].tolist() == expected + [0]
    assert tok("  A   PHOTO of a\tCat ")[0, :7].tolist() == expected  # cleaned and lowercased
    assert tok.vocab_size == 49408 and (tok.start_id, tok.end_id) == (49406, 49407)


def test_tokenizer_round_trip_padding_and_truncation() -> None:
    tok = clip_tokenizer()
    for text in ["a photo of a cat", "it's a jack-o'-lantern!", "naïve café 東京 2024", "😀 emoji"]:
        ids = tok.encode(text)
        assert tok.encode(tok.decode(ids)) == ids
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat "
    rows = tok(["cat " * 100, "dog"], context_length=77)
    assert rows.shape == (2, 77) and rows.dtype == torch.long
    assert rows[0, 0] == 49406 and rows[0, -1] == 49407 and (rows[0, 1:-1] == tok.encode("cat")[0]).all()
    assert rows[1, :3].tolist() == [49406, tok.encode("dog")[0], 49407] and (rows[1, 3:] == 0).all()
    with pytest.raises(SmoothInvError, match="outside CLIP's vocabulary"):
        tok.decode([49408])


def test_cleaning_does_ftfy_fixes_for_well_formed_text() -> None:
    assert clean_text("It’s “ﬁne” &amp; ＦＵＬＬ\u3000width\x00") == "it's \"fine\" & full width"
    assert clean_text("&amp;lt;b&amp;gt;") == "<b>"  # unescaped twice, as CLIP does
    assert split_words("it's a cat's 2024 toy!!") == ["it", "'s", "a", "cat", "'s", "2", "0", "2", "4", "toy", "!!"]


def test_word_split_matches_clips_pattern() -> None:
    regex = pytest.importorskip("regex")  # not a dependency; checks the hand-written scanner when present
    pattern = regex.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
                            regex.IGNORECASE)
    rng = random.Random(0)
    alphabet = "ab s'tredvmlſ!?.-<>_ 0123½²éß東ｶ😀\u0301\u00a0"
    for _ in range(300):
        text = clean_text("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25))) + "<end_of_text>")
        assert split_words(text) == pattern.findall(text), text


# ----------------------------------------------------------------------------- zero-shot


def test_zero_shot_logits_follow_clips_protocol(small: CLIPModel) -> None:
    names, templates = ["cat", "dog", "car"], ["a photo of a {}.", "a drawing of a {}."]
    classifier = zeroshot_classifier(small, names, templates)
    x = images_for(small, batch=4)
    logits = classifier(x)
    assert logits.shape == (4, 3)
    with torch.no_grad():
        prompts = clip_tokenizer()([t.format(n) for n in names for t in templates])
        per_prompt = F.normalize(small.encode_text(prompts), dim=-1)
        classes = F.normalize(per_prompt.reshape(3, 2, -1).mean(1), dim=-1)
        expected = small.logit_scale.exp() * F.normalize(small.encode_image(x), dim=-1) @ classes.T
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(text_class_embeddings(small, names, templates), classes)
    precomputed = classifier_from_embeddings(small.visual, classes * 7, small.logit_scale)
    torch.testing.assert_close(precomputed(x), logits)
    with pytest.raises(SmoothInvError, match="needs a {}"):
        text_class_embeddings(small, names, ["a photo"])
    with pytest.raises(SmoothInvError, match="all zeros"):
        classifier_from_embeddings(small.visual, torch.zeros(2, 32), 4.6)


def test_saved_classifier_loads_with_load_model(small: CLIPModel, tmp_path: Path) -> None:
    classifier = zeroshot_classifier(small, ["cat", "dog"])
    path = tmp_path / "zs.safetensors"
    save_zeroshot_classifier(path, classifier, class_names=["cat", "dog"])
    loaded = load_model(path)  # no flags
    size = small.config.vision.image_size
    assert (loaded.arch, loaded.num_classes, loaded.channels) == ("clip-zeroshot", 2, 3)
    assert loaded.input_size == (size, size)
    assert isinstance(loaded.module, Normalize) and loaded.mean == CLIP_MEAN and loaded.std == CLIP_STD
    x = torch.rand(3, 3, size, size)
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(loaded.module(x), classifier((x - mean) / std))
    assert probe_model(loaded.module, channels=3, input_size=(size, size)) == 2
    assert zeroshot_class_names(path) == ["cat", "dog"]
    with pytest.raises(SmoothInvError, match="resize the images"):
        probe_model(loaded.module, channels=3, input_size=(size + 32, size + 32))


def test_gelu_vit_classifier_keeps_its_activation(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = clip_from_state(CLIPModel(SMALL_VIT).state_dict(), quick_gelu=False)
    classifier = zeroshot_classifier(model, ["a", "b"])
    save_zeroshot_classifier(tmp_path / "zs.safetensors", classifier)
    loaded = load_model(tmp_path / "zs.safetensors").module.model
    assert loaded.visual.config.quick_gelu is False and zeroshot_class_names(tmp_path / "zs.safetensors") is None
    x = images_for(model)
    torch.testing.assert_close(loaded(x), classifier(x))


def test_registered_arch_defaults() -> None:
    assert "clip-zeroshot" in model_names()
    info = get_model_info("clip-zeroshot")
    assert (info.input_size, info.channels, info.mean, info.std) == ((224, 224), 3, CLIP_MEAN, CLIP_STD)
    with torch.device("meta"):
        default, gray = create_model("clip-zeroshot"), create_model("clip-zeroshot", num_classes=5, channels=1)
    assert shapes(default)["class_embeddings"] == (1000, 512) and shapes(default)["visual.proj"] == (768, 512)
    assert shapes(gray)["visual.conv1.weight"] == (768, 1, 32, 32) and shapes(gray)["class_embeddings"] == (5, 512)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.fx's fuse touches torch.jit
def test_resnet_classifier_folds_batch_norm(small: CLIPModel) -> None:
    from smoothinv.engine.precision import folded_for_inference

    classifier = zeroshot_classifier(small, ["cat", "dog"]).eval()
    x = images_for(small)
    folded = folded_for_inference(classifier, x)
    if isinstance(small.config.vision, ResNetConfig):
        assert folded is not classifier  # torch.fx traced it, image check included
    torch.testing.assert_close(folded(x), classifier(x), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- hostile files


def _saved(classifier: ZeroShotClassifier, tmp_path: Path, change) -> Path:
    path = tmp_path / "zs.safetensors"
    save_zeroshot_classifier(path, classifier)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        state, metadata = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    change(state, metadata)
    save_file(state, str(path), metadata=metadata)
    return path


def _nan(state: dict, _: dict) -> None:
    state["visual.transformer.resblocks.0.ln_1.weight"][0] = float("nan")


def _no_key(state: dict, _: dict) -> None:
    del state["visual.transformer.resblocks.1.mlp.c_fc.bias"]


def _gap(state: dict, _: dict) -> None:
    for key in [k for k in state if ".resblocks.1." in k]:
        state[key.replace(".resblocks.1.", ".resblocks.2.")] = state.pop(key)


HOSTILE = [
    (_no_key, "missing visual.transformer.resblocks.1.mlp.c_fc.bias"),
    (lambda s, m: s.update(class_embeddings=torch.ones(2, 31)), r"class_embeddings is \[2, 31\], expected \[2, 32\]"),
    (lambda s, m: s.update({"visual.proj": torch.ones(64, 8)}), r"class_embeddings is \[2, 32\], expected \[2, 8\]"),
    (lambda s, m: s.update({"visual.positional_embedding": torch.ones(18, 64)}), "not a square grid"),
    (_nan, "NaN or infinite"),
    (lambda s, m: s.update(logit_scale=torch.tensor(1000.0)), "logit_scale must be one finite number"),
    (_gap, "no visual.transformer.resblocks.1"),
    (lambda s, m: s.update({"visual.extra": torch.ones(1)}), "unexpected visual.extra"),
    (lambda s, m: m.update(clip_activation="relu"), "expected one of quick_gelu, gelu"),
    (lambda s, m: s.update(class_embeddings=torch.ones(3)), r"needs class_embeddings \[classes, 32\]"),
]


@pytest.mark.parametrize(("change", "message"), HOSTILE, ids=[m[:24] for _, m in HOSTILE])
def test_hostile_zero_shot_files_are_refused_in_one_line(tmp_path: Path, change, message: str) -> None:
    torch.manual_seed(3)
    classifier = zeroshot_classifier(CLIPModel(SMALL_VIT), ["a", "b"])
    with pytest.raises(SmoothInvError, match=message) as err:
        load_model(_saved(classifier, tmp_path, change))
    assert "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_hostile_clip_checkpoints_are_refused_in_one_line(small: CLIPModel, tmp_path: Path) -> None:
    traced = torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2))
    torch.jit.save(traced, str(tmp_path / "ViT-B-32.pt"))  # OpenAI's downloads are TorchScript
    state = dict(small.state_dict())
    cases = {
        "ViT-B-32.pt": "TorchScript archive .*convert it once",
        "resnet.pt": "has no CLIP image tower",
        "shape.safetensors": r"text_projection has shape \[64\]",
        "text.safetensors": "unexpected transformer.resblocks.0.ln_3.weight",
    }
    torch.save(create_model("resnet20").state_dict(), tmp_path / "resnet.pt")
    save_file({k: v.contiguous() for k, v in state.items()} | {"text_projection": torch.ones(64)},
              str(tmp_path / "shape.safetensors"))
    save_file({k: v.contiguous() for k, v in state.items()} | {"transformer.resblocks.0.ln_3.weight": torch.ones(64)},
              str(tmp_path / "text.safetensors"))
    for name, message in cases.items():
        with pytest.raises(SmoothInvError, match=message) as err:
            load_clip(tmp_path / name)
        assert "\n" not in str(err.value), name
    with pytest.raises(SmoothInvError, match="trust_code"):
        load_model(tmp_path / "ViT-B-32.pt", arch="clip-zeroshot")
