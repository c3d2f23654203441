"""Architectures and registry: output shapes, and state_dict names/shapes of the references.

Expected key sets are written out from the reference sources (torchvision resnet.py,
vgg.py, alexnet.py; chenyaofo/pytorch-cifar-models; kuangliu/pytorch-cifar), so that
checkpoints trained with those libraries load with strict=True.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models import (
    ModelInfo,
    create_model,
    get_model_info,
    list_models,
    model_names,
    register_model,
)



ALL_MODELS = [
    "alexnet",
    "clip-zeroshot",
    "plain_cnn",
    "preact_resnet18",
    "preact_resnet18_w16",
    "resnet18",
    "resnet18_cifar",
    "resnet20",
    "small_cnn",
    "vgg11",
    "vgg11_bn",
    "vgg_cifar_bn",
]


def meta_model(name: str, num_classes: int | None = None) -> nn.Module:
    """Build on the meta device: shapes without memory or init cost."""
    with torch.device("meta"):
        return create_model(name, num_classes)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def bn(prefix: str, ch: int) -> dict[str, tuple[int, ...]]:
    """BatchNorm2d state_dict entries: 4 per-channel tensors and a scalar counter."""
    out = {f"{prefix}.{n}": (ch,) for n in ("weight", "bias", "running_mean", "running_var")}
    out[f"{prefix}.num_batches_tracked"] = ()
    return out


def linear(prefix: str, fan_out: int, fan_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.weight": (fan_out, fan_in), f"{prefix}.bias": (fan_out,)}


def conv(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool) -> dict[str, tuple[int, ...]]:
    out = {f"{prefix}.weight": (out_ch, in_ch, k, k)}
    if bias:
        out[f"{prefix}.bias"] = (out_ch,)
    return out


def torchvision_resnet_keys(
    widths: tuple[int, ...], depths: tuple[int, ...], stem_k: int, num_classes: int
) -> dict[str, tuple[int, ...]]:
    """torchvision/chenyaofo BasicBlock ResNet keys: conv1, bn1, layerI.J.*, fc."""
    keys = conv("conv1", widths[0], 3, stem_k, bias=False) | bn("bn1", widths[0])
    in_ch = widths[0]
    for i, (width, depth) in enumerate(zip(widths, depths), start=1):
        for j in range(depth):
            p = f"layer{i}.{j}"
            keys |= conv(f"{p}.conv1", width, in_ch, 3, bias=False) | bn(f"{p}.bn1", width)
            keys |= conv(f"{p}.conv2", width, width, 3, bias=False) | bn(f"{p}.bn2", width)
            if j == 0 and in_ch != width:
                keys |= conv(f"{p}.downsample.0", width, in_ch, 1, bias=False)
                keys |= bn(f"{p}.downsample.1", width)
            in_ch = width
    return keys | linear("fc", num_classes, in_ch)


def vgg11_keys(batch_norm: bool) -> dict[str, tuple[int, ...]]:
    """torchvision VGG config A: features.N counts conv, [BN,] ReLU and pool layers."""
    keys: dict[str, tuple[int, ...]] = {}
    index, in_ch = 0, 3
    for item in [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]:
        if item == "M":
            index += 1
            continue
        keys |= conv(f"features.{index}", int(item), in_ch, 3, bias=True)
        if batch_norm:
            keys |= bn(f"features.{index + 1}", int(item))
        index += 3 if batch_norm else 2
        in_ch = int(item)
    keys |= linear("classifier.0", 4096, 512 * 7 * 7)
    keys |= linear("classifier.3", 4096, 4096)
    return keys | linear("classifier.6", 1000, 4096)


# ----------------------------------------------------------------------------- registry


def test_registered_names() -> None:
    assert model_names() == ALL_MODELS
    assert [info.name for info in list_models()] == ALL_MODELS
    assert all(isinstance(info, ModelInfo) for info in list_models())


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(SmoothInvError, match="unknown architecture 'resnet99'") as err:
        get_model_info("resnet99")
    assert "resnet18" in str(err.value) and "small_cnn" in str(err.value)
    with pytest.raises(SmoothInvError):
        create_model("nope")


def test_duplicate_registration_is_an_error() -> None:
    decorator = register_model(
        "resnet20", input_size=(32, 32), channels=3, num_classes=10, head="fc.weight",
        description="duplicate",
    )
    with pytest.raises(ValueError, match="already registered"):
        decorator(lambda n: nn.Linear(1, n))
    assert get_model_info("resnet20").description != "duplicate"


def test_model_info_is_frozen() -> None:
    info = get_model_info("small_cnn")
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 3  # type: ignore[misc]


def test_create_model_num_classes() -> None:
    model = create_model("resnet20", num_classes=7)
    assert model.state_dict()["fc.weight"].shape == (7, 64)
    assert create_model("resnet20").state_dict()["fc.weight"].shape == (10, 64)
    for bad in (0, -3, 2.5, "10", True):
        with pytest.raises(SmoothInvError, match="num_classes"):
            create_model("resnet20", num_classes=bad)  # type: ignore[arg-type]


def test_unknown_builder_keyword_is_a_user_error() -> None:
    with pytest.raises(SmoothInvError, match="'small_cnn' has no option 'depth'; its options: num_classes, channels"):
        create_model("small_cnn", depth=3)
    with pytest.raises(SmoothInvError, match="channels must be a positive integer"):
        create_model("small_cnn", channels=0)


IMAGENET_ARCHS = ["alexnet", "resnet18", "vgg11", "vgg11_bn"]
CLIP_ARCHS = ["clip-zeroshot"]


@pytest.mark.parametrize("name", ALL_MODELS)
def test_default_normalisation(name: str) -> None:
    info = get_model_info(name)
    if name in CLIP_ARCHS:  # CLIP's own statistics (OpenAI's preprocessing)
        assert info.mean == (0.48145466, 0.4578275, 0.40821073) and info.std == (0.26862954, 0.26130258, 0.27577711)
    elif name in IMAGENET_ARCHS:
        assert info.input_size == (224, 224)
        assert info.mean == (0.485, 0.456, 0.406) and info.std == (0.229, 0.224, 0.225)
    else:
        assert info.mean is None and info.std is None


@pytest.mark.parametrize("name", ALL_MODELS)
def test_channels_keyword_sets_the_first_conv(name: str) -> None:
    info = get_model_info(name)
    other = 3 if info.channels == 1 else 1
    assert info.first_conv is not None
    assert shapes(meta_model(name))[info.first_conv][1] == info.channels
    with torch.device("meta"):
        model = create_model(name, channels=other)
    assert model.state_dict()[info.first_conv].shape[1] == other


@pytest.mark.parametrize("name", ALL_MODELS)
def test_head_key_matches_num_classes(name: str) -> None:
    info = get_model_info(name)
    state = shapes(meta_model(name, num_classes=13))
    assert state[info.head][0] == 13
    assert shapes(meta_model(name))[info.head][0] == info.num_classes


# ----------------------------------------------------------------------------- forward


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_at_default_input_size(name: str) -> None:
    info = get_model_info(name)
    model = create_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(1, info.channels, *info.input_size))
    assert out.shape == (1, info.num_classes)
    assert torch.isfinite(out).all()


def test_small_cnn_accepts_32x32_and_is_small() -> None:
    model = create_model("small_cnn").eval()
    with torch.no_grad():
        assert model(torch.rand(4, 1, 32, 32)).shape == (4, 10)
        assert model(torch.rand(4, 1, 28, 28)).shape == (4, 10)
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 <= n_params <= 300_000


def test_cifar_models_take_32x32_and_train_mode_backward() -> None:
    for name in ("resnet20", "preact_resnet18", "resnet18_cifar"):
        model = create_model(name, num_classes=4).train()
        out = model(torch.rand(2, 3, 32, 32))
        out.sum().backward()
        assert out.shape == (2, 4)


# ----------------------------------------------------------------------------- key names


def test_resnet18_matches_torchvision_keys() -> None:
    model = meta_model("resnet18")
    got = shapes(model)
    # conv1 + bn1 (1+5) + 8 blocks x 12 + 3 downsamples x 6 + fc 2 = 122
    assert len(got) == 122
    assert got == torchvision_resnet_keys((64, 128, 256, 512), (2, 2, 2, 2), 7, 1000)
    assert got["fc.weight"] == (1000, 512)
    assert sum(p.numel() for p in model.parameters()) == 11_689_512  # torchvision's count


def test_resnet18_cifar_has_resnet18_keys_with_3x3_stem() -> None:
    got = shapes(meta_model("resnet18_cifar"))
    assert got == torchvision_resnet_keys((64, 128, 256, 512), (2, 2, 2, 2), 3, 10)
    assert got["conv1.weight"] == (64, 3, 3, 3)
    model = create_model("resnet18_cifar")
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert model.conv1.stride == (1, 1)


def test_resnet20_matches_chenyaofo_keys() -> None:
    model = meta_model("resnet20")
    got = shapes(model)
    # conv1 + bn1 (6) + 9 blocks x 12 + 2 downsamples x 6 + fc 2 = 128
    assert len(got) == 128
    assert got == torchvision_resnet_keys((16, 32, 64), (3, 3, 3), 3, 10)
    assert got["layer2.0.downsample.0.weight"] == (32, 16, 1, 1)
    assert sum(p.numel() for p in model.parameters()) == 272_474  # the usual "0.27M"


def test_preact_resnet18_matches_kuangliu_keys() -> None:
    got = shapes(meta_model("preact_resnet18"))
    expected = conv("conv1", 64, 3, 3, bias=False)
    in_ch = 64
    for i, width in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            p = f"layer{i}.{j}"
            expected |= bn(f"{p}.bn1", in_ch) | conv(f"{p}.conv1", width, in_ch, 3, bias=False)
            expected |= bn(f"{p}.bn2", width) | conv(f"{p}.conv2", width, width, 3, bias=False)
            if j == 0 and in_ch != width:
                expected |= conv(f"{p}.shortcut.0", width, in_ch, 1, bias=False)
            in_ch = width
    expected |= linear("linear", 10, 512)
    # conv1 1 + 8 blocks x 12 + 3 shortcut convs + linear 2 = 102; no final BN
    assert len(got) == 102
    assert got == expected


@pytest.mark.parametrize(
    ("name", "count", "n_params"),
    [("vgg11", 22, 132_863_336), ("vgg11_bn", 62, 132_868_840)],
)
def test_vgg11_matches_torchvision_keys(name: str, count: int, n_params: int) -> None:
    model = meta_model(name)
    got = shapes(model)
    assert len(got) == count  # 8 convs x 2 (+ 8 BNs x 5) + 3 linears x 2
    assert got == vgg11_keys(batch_norm=name.endswith("_bn"))
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_alexnet_matches_torchvision_keys() -> None:
    model = meta_model("alexnet")
    got = shapes(model)
    expected = (
        conv("features.0", 64, 3, 11, bias=True)
        | conv("features.3", 192, 64, 5, bias=True)
        | conv("features.6", 384, 192, 3, bias=True)
        | conv("features.8", 256, 384, 3, bias=True)
        | conv("features.10", 256, 256, 3, bias=True)
        | linear("classifier.1", 4096, 256 * 6 * 6)
        | linear("classifier.4", 4096, 4096)
        | linear("classifier.6", 1000, 4096)
    )
    assert len(got) == 16
    assert got == expected
    assert sum(p.numel() for p in model.parameters()) == 61_100_840


def test_preact_resnet18_w16_is_the_same_network_at_a_quarter_width() -> None:
    full, narrow = shapes(meta_model("preact_resnet18")), shapes(meta_model("preact_resnet18_w16"))
    assert full.keys() == narrow.keys()
    assert narrow["conv1.weight"] == (16, 3, 3, 3) and narrow["linear.weight"] == (10, 128)
    assert narrow["layer4.0.shortcut.0.weight"] == (128, 64, 1, 1)


def test_plain_cnn_has_no_batch_norm_and_keras_tutorial_layers() -> None:
    model = create_model("plain_cnn")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    got = shapes(model)
    assert [k for k in got if k.endswith("weight")] == ["features.0.weight", "features.2.weight", "features.6.weight",
                                                        "features.8.weight", "classifier.1.weight", "classifier.4.weight"]
    assert got["classifier.1.weight"] == (256, 64 * 6 * 6)
    assert create_model("plain_cnn", num_classes=43, channels=1)(torch.rand(2, 1, 28, 28)).shape == (2, 43)


def test_vgg_cifar_bn_is_conv_bn_relu_with_one_linear_head() -> None:
    model = create_model("vgg_cifar_bn")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.features) == 5
    assert shapes(model)["classifier.weight"] == (10, 256)
