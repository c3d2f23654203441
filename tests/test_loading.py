"""Loading untrusted model files: every format, refusals, metadata, Normalize, probing."""

from __future__ import annotations

import argparse
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models import (
    LoadedModel,
    Normalize,
    create_model,
    load_model,
    probe_model,
    save_model,
)




class WritesMarker:
    """Unpickling this object opens (creates) ``marker`` for writing: a stand-in payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (str(self.marker), "w"))


class TinyNet(nn.Module):
    """Scriptable 3-class classifier on [B, 3, 8, 8] images."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


class Returns(nn.Module):
    """Returns a fixed function of the input, to exercise probe_model's checks."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> object:
        if self.kind == "raise":
            raise RuntimeError("shapes cannot be multiplied\nsecond line of detail")
        if self.kind == "nan":
            return torch.full((x.shape[0], 4), float("nan"))
        if self.kind == "1d":
            return torch.zeros(x.shape[0])
        if self.kind == "one_class":
            return torch.zeros(x.shape[0], 1)
        if self.kind == "tuple":
            return (torch.zeros(x.shape[0], 4),)
        return torch.zeros(x.shape[0], 4)


def seeded(name: str, num_classes: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes).eval()
    # Non-trivial BN statistics, so a wrong load would change the outputs.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def same_outputs(a: nn.Module, b: nn.Module, shape: tuple[int, ...]) -> bool:
    x = torch.rand(*shape)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-5)


def assert_ready(loaded: LoadedModel) -> None:
    assert not loaded.module.training
    assert all(not p.requires_grad for p in loaded.module.parameters())


# ----------------------------------------------------------------------------- safetensors


def test_save_and_load_safetensors_with_metadata(tmp_path: Path) -> None:
    model = seeded("small_cnn", num_classes=5)
    path = tmp_path / "m.safetensors"
    save_model(path, model, arch="small_cnn", num_classes=5, input_size=(28, 28), channels=1,
               extra_metadata={"note": "clean"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temp file left
    loaded = load_model(path)
    assert loaded.format == "safetensors"
    assert (loaded.arch, loaded.num_classes) == ("small_cnn", 5)
    assert (loaded.input_size, loaded.channels) == ((28, 28), 1)
    assert loaded.mean is None and not isinstance(loaded.module, Normalize)
    assert_ready(loaded)
    assert same_outputs(model, loaded.module, (2, 1, 28, 28))


def test_safetensors_mean_std_roundtrip_and_override(tmp_path: Path) -> None:
    model = seeded("resnet20")
    path = tmp_path / "r.safetensors"
    save_model(path, Normalize(model, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)), arch="resnet20",
               num_classes=10, input_size=(32, 32), channels=3)
    loaded = load_model(path)
    assert isinstance(loaded.module, Normalize)
    assert loaded.mean == (0.5, 0.4, 0.3) and loaded.std == (0.2, 0.25, 0.3)
    expected = Normalize(model, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)).eval()
    assert same_outputs(expected, loaded.module, (2, 3, 32, 32))
    # Arguments win over metadata.
    override = load_model(path, input_size=(40, 40), mean=(0.0,) * 3, std=(1.0,) * 3)
    assert override.input_size == (40, 40) and override.mean == (0.0, 0.0, 0.0)
    assert same_outputs(model, override.module, (2, 3, 32, 32))


def test_safetensors_without_metadata_needs_arch(tmp_path: Path) -> None:
    model = seeded("resnet20", num_classes=7)
    path = tmp_path / "plain.bin"  # the extension is irrelevant
    save_file(model.state_dict(), str(path))
    with pytest.raises(SmoothInvError, match="needs `arch`=NAME; known: .*resnet20") as err:
        load_model(path)
    assert "looks like resnet20" in str(err.value)
    loaded = load_model(path, arch="resnet20")
    assert loaded.format == "safetensors" and loaded.num_classes == 7  # from fc.weight
    assert (loaded.input_size, loaded.channels) == ((32, 32), 3)  # registry defaults
    assert same_outputs(model, loaded.module, (2, 3, 32, 32))


def test_metadata_unknown_arch(tmp_path: Path) -> None:
    path = tmp_path / "odd.safetensors"
    save_file(create_model("small_cnn").state_dict(), str(path), metadata={"arch": "lenet9"})
    with pytest.raises(SmoothInvError, match="unknown architecture 'lenet9' in its metadata"):
        load_model(path)
    assert load_model(path, arch="small_cnn").arch == "small_cnn"


def test_invalid_metadata_value(tmp_path: Path) -> None:
    path = tmp_path / "bad_meta.safetensors"
    save_file(create_model("small_cnn").state_dict(), str(path),
              metadata={"arch": "small_cnn", "input_size": "big"})
    with pytest.raises(SmoothInvError, match="invalid metadata input_size"):
        load_model(path)
    assert load_model(path, input_size=(28, 28)).input_size == (28, 28)


# ----------------------------------------------------------------------------- torch.save


def test_pt_state_dict(tmp_path: Path) -> None:
    model = seeded("small_cnn")
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="small_cnn")
    assert loaded.format == "state_dict" and loaded.num_classes == 10
    assert_ready(loaded)
    assert same_outputs(model, loaded.module, (2, 1, 28, 28))


@pytest.mark.parametrize("zip_format", [True, False])
def test_nested_dataparallel_checkpoint(tmp_path: Path, zip_format: bool) -> None:
    model = seeded("resnet20", num_classes=4)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": state, "best_acc": 0.9}, path,
               _use_new_zipfile_serialization=zip_format)
    loaded = load_model(path, arch="resnet20")
    assert loaded.num_classes == 4
    assert same_outputs(model, loaded.module, (2, 3, 32, 32))


def test_model_container_key(tmp_path: Path) -> None:
    model = seeded("small_cnn")
    path = tmp_path / "c.pt"
    torch.save({"model": model.state_dict(), "optimizer": {"lr": 0.1}}, path)
    assert same_outputs(model, load_model(path, arch="small_cnn").module, (1, 1, 28, 28))


def test_dict_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(SmoothInvError, match="not a state_dict"):
        load_model(path, arch="small_cnn")


def test_num_classes_argument_conflicts_with_file(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(create_model("resnet20", num_classes=10).state_dict(), path)
    with pytest.raises(SmoothInvError, match="has 10 classes .* pass `num_classes`=10"):
        load_model(path, arch="resnet20", num_classes=100)


def test_key_mismatch_names_keys_and_suggests_arch(tmp_path: Path) -> None:
    path = tmp_path / "r20.pt"
    torch.save(create_model("resnet20").state_dict(), path)
    with pytest.raises(SmoothInvError) as err:
        load_model(path, arch="preact_resnet18")
    message = str(err.value)
    assert "does not match `arch`=preact_resnet18" in message
    assert "missing" in message and "unexpected" in message and "more)" in message
    assert "it looks like `arch`=resnet20" in message
    assert "\n" not in message


def test_shape_mismatch_suggests_arch(tmp_path: Path) -> None:
    path = tmp_path / "r18c.pt"
    torch.save(create_model("resnet18_cifar").state_dict(), path)
    with pytest.raises(SmoothInvError, match=r"conv1.weight is \[64, 3, 3, 3\] in the file.*"
                                             r"it looks like `arch`=resnet18_cifar"):
        load_model(path, arch="resnet18")


def test_unknown_arch(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save(create_model("small_cnn").state_dict(), path)
    with pytest.raises(SmoothInvError, match="unknown architecture 'resnet99'; choose from: .*cnn"):
        load_model(path, arch="resnet99")


# ----------------------------------------------------------------------------- TorchScript


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_torchscript_scripted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyNet().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = load_model(path, trust_code=True)
    assert loaded.format == "torchscript"
    assert loaded.arch is None and loaded.input_size is None and loaded.channels is None
    assert_ready(loaded)
    assert same_outputs(model, loaded.module, (2, 3, 8, 8))
    assert probe_model(loaded.module, channels=3, input_size=(8, 8)) == 3


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_torchscript_traced_with_arch_defaults(tmp_path: Path) -> None:
    model = seeded("small_cnn")
    path = tmp_path / "traced.model"
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 1, 28, 28)), str(path))
    loaded = load_model(path, arch="small_cnn", mean=(0.5,), std=(0.5,), trust_code=True)
    assert loaded.format == "torchscript" and loaded.arch == "small_cnn"
    assert (loaded.input_size, loaded.channels) == ((28, 28), 1)
    assert isinstance(loaded.module, Normalize)
    assert same_outputs(Normalize(model, (0.5,), (0.5,)).eval(), loaded.module, (2, 1, 28, 28))


# ----------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("zip_format", [True, False])
def test_whole_pickled_model_needs_opt_in(tmp_path: Path, zip_format: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(SmoothInvError, match="pickled Python object .*`trust_code`=True") as err:
        load_model(path)
    assert "Sequential" in str(err.value) and "\n" not in str(err.value)
    loaded = load_model(path, trust_code=True, input_size=(2, 2))
    assert loaded.format == "pickle" and loaded.arch is None
    assert loaded.input_size == (2, 2) and loaded.channels is None
    assert_ready(loaded)
    assert same_outputs(model, loaded.module, (2, 3, 2, 2))


def test_trusted_pickle_must_be_a_module(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, argparse.Namespace(lr=0.1)], path)  # Namespace: not weights_only-safe
    with pytest.raises(SmoothInvError, match="`trust_code`=True"):
        load_model(path)
    with pytest.raises(SmoothInvError, match="unpickled to a list, not a torch nn.Module"):
        load_model(path, trust_code=True)


@pytest.mark.parametrize("writer", ["torch.save", "torch.save legacy", "pickle.dump"])
def test_malicious_pickle_is_not_executed(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    payload = {"state_dict": {"fc.weight": torch.zeros(2, 2)}, "x": WritesMarker(marker)}
    path = tmp_path / "evil.pth"
    if writer == "pickle.dump":
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=(writer == "torch.save"))
    for kwargs in ({}, {"arch": "small_cnn"}):
        with pytest.raises(SmoothInvError, match="pickled Python object .*execute code"):
            load_model(path, **kwargs)
    assert not marker.exists()


# ----------------------------------------------------------------------------- bad files


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SmoothInvError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(SmoothInvError, match="is a directory"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, this is text\n", "not a recognised model file"),
        (b"\x80\x02garbage that is no pickle", "corrupt|cannot be read"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "truncated safetensors"),
        (b"\x0a\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}xxxxxxxx", "corrupt safetensors"),
    ],
)
def test_bad_bytes(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(SmoothInvError, match=message):
        load_model(path, arch="small_cnn")


def test_truncated_files(tmp_path: Path) -> None:
    state = create_model("small_cnn").state_dict()
    for name, legacy in (("zip.pt", False), ("legacy.pt", True)):
        full = tmp_path / f"full_{name}"
        torch.save(state, full, _use_new_zipfile_serialization=not legacy)
        cut = tmp_path / name
        cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
        with pytest.raises(SmoothInvError, match="corrupt|truncated"):
            load_model(cut, arch="small_cnn")
    full = tmp_path / "full.safetensors"
    save_file(state, str(full))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(full.read_bytes()[:-100])
    with pytest.raises(SmoothInvError, match="corrupt safetensors"):
        load_model(cut, arch="small_cnn")


def test_zip_that_is_not_a_model(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes/readme.txt", "hi")
    with pytest.raises(SmoothInvError, match="zip archive holding notes/readme.txt, not a PyTorch checkpoint"):
        load_model(path)


def _zip_of_safetensors(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("model.safetensors", b"x" * 100)


def _npz(path: Path) -> None:
    with open(path, "wb") as f:
        np.savez(f, x=np.zeros(2))


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_zip_of_safetensors,
         "is a zip archive holding model.safetensors, not a PyTorch checkpoint despite its .safetensors"),
        (_npz, "is a NumPy .npz archive, not a PyTorch checkpoint"),
        (lambda p: p.write_bytes(b"\x1f\x8b\x08\x00" + bytes(100)), "not a recognised model file despite its "
         ".safetensors extension: it is a gzip archive"),
        (lambda p: p.write_bytes(b"<!DOCTYPE html><html>404</html>"), "it is an HTML page"),
        (lambda p: p.write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:ab\n"), "Git LFS pointer"),
    ],
)
def test_misnamed_file_is_named_for_what_it_is(tmp_path: Path, make, says: str) -> None:
    """Issue: a zip renamed .safetensors was refused as 'header too large'; the message now says what it is."""
    path = tmp_path / "model.safetensors"
    make(path)
    with pytest.raises(SmoothInvError, match=says) as err:
        load_model(path, arch="small_cnn")
    assert "header too large" not in str(err.value) and "\n" not in str(err.value)


def test_torch_checkpoint_renamed_safetensors_loads_by_content(tmp_path: Path) -> None:
    """torch.load would read a path ending in .safetensors as safetensors ('header too large')."""
    model = seeded("small_cnn")
    path = tmp_path / "model.safetensors"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="small_cnn")
    assert loaded.format == "state_dict"
    assert same_outputs(model, loaded.module, (2, 1, 28, 28))


def test_bad_arguments(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_model(path, create_model("small_cnn"), arch="small_cnn", num_classes=10,
               input_size=(28, 28), channels=1)
    with pytest.raises(SmoothInvError, match="invalid device"):
        load_model(path, device="gpu7")
    with pytest.raises(SmoothInvError, match="`input_size`"):
        load_model(path, input_size=(28, 0))
    with pytest.raises(SmoothInvError, match="both `mean` and `std`"):
        load_model(path, mean=(0.5,))
    with pytest.raises(SmoothInvError, match="3 values but the model takes 1 channels"):
        load_model(path, mean=(0.5,) * 3, std=(0.5,) * 3)


def test_save_model_errors_and_overwrite(tmp_path: Path) -> None:
    model = create_model("small_cnn")
    common = dict(num_classes=10, input_size=(28, 28), channels=1)
    with pytest.raises(SmoothInvError, match="unknown architecture"):
        save_model(tmp_path / "a.safetensors", model, arch="nope", **common)
    with pytest.raises(SmoothInvError, match="does not exist"):
        save_model(tmp_path / "no" / "a.safetensors", model, arch="small_cnn", **common)
    with pytest.raises(SmoothInvError, match="extra_metadata may not set 'arch'"):
        save_model(tmp_path / "a.safetensors", model, arch="small_cnn", **common,
                   extra_metadata={"arch": "x"})
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"old")
    save_model(path, model, arch="small_cnn", **common)
    assert load_model(path).arch == "small_cnn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors"]


def test_three_channel_small_cnn_round_trip(tmp_path: Path) -> None:
    """Channels come from the first conv, like classes from the head: with metadata or without."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=4, channels=3).eval()
    assert model.state_dict()["features.0.weight"].shape[1] == 3
    path = tmp_path / "rgb.safetensors"
    save_model(path, model, arch="small_cnn", num_classes=4, input_size=(32, 32), channels=3)
    loaded = load_model(path)
    assert (loaded.arch, loaded.channels, loaded.num_classes, loaded.input_size) == ("small_cnn", 3, 4, (32, 32))
    assert same_outputs(model, loaded.module, (2, 3, 32, 32))
    plain = tmp_path / "rgb.safetensors.bin"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))  # no metadata
    loaded = load_model(plain, arch="small_cnn")
    assert (loaded.channels, loaded.num_classes) == (3, 4)
    assert same_outputs(model, loaded.module, (2, 3, 28, 28))
    pt = tmp_path / "rgb.pt"
    torch.save(model.state_dict(), pt)
    assert load_model(pt, arch="small_cnn").channels == 3


def test_first_conv_with_unsupported_channels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgba.pt"
    torch.save(create_model("small_cnn", channels=4).state_dict(), path)
    with pytest.raises(SmoothInvError, match="input channels in rgba.pt must be 1 .gray. or 3"):
        load_model(path, arch="small_cnn")


def test_imagenet_arch_defaults_to_imagenet_statistics(tmp_path: Path) -> None:
    model = seeded("alexnet", num_classes=5)
    path = tmp_path / "alexnet.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, arch="alexnet")
    assert loaded.mean == (0.485, 0.456, 0.406) and loaded.std == (0.229, 0.224, 0.225)
    assert isinstance(loaded.module, Normalize)
    expected = Normalize(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval()
    assert same_outputs(expected, loaded.module, (1, 3, 224, 224))
    # The user's --mean/--std win; mean 0, std 1 means "no normalisation".
    mine = load_model(path, arch="alexnet", mean=(0.5,), std=(0.25,))
    assert (mine.mean, mine.std) == ((0.5,), (0.25,))
    raw = load_model(path, arch="alexnet", mean=(0.0,), std=(1.0,))
    assert same_outputs(model, raw.module, (1, 3, 224, 224))
    # Statistics stored with the file win over the arch's too.
    stored = tmp_path / "alexnet.safetensors"
    save_model(stored, model, arch="alexnet", num_classes=5, input_size=(224, 224), channels=3,
               mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert load_model(stored).mean == (0.5, 0.5, 0.5)


def test_cifar_archs_take_images_as_they_are(tmp_path: Path) -> None:
    path = tmp_path / "r20.pt"
    torch.save(seeded("resnet20").state_dict(), path)
    loaded = load_model(path, arch="resnet20")
    assert loaded.mean is None and loaded.std is None and not isinstance(loaded.module, Normalize)


# ----------------------------------------------------------------------------- Normalize


def test_normalize() -> None:
    wrapped = Normalize(nn.Identity(), (0.5, 0.25), (0.5, 2.0))
    x = torch.ones(1, 2, 2, 2)
    out = wrapped(x)
    assert torch.allclose(out[0, 0], torch.full((2, 2), 1.0))
    assert torch.allclose(out[0, 1], torch.full((2, 2), 0.375))
    assert list(wrapped.state_dict()) == []  # mean/std are not saved as weights
    with pytest.raises(SmoothInvError, match="> 0"):
        Normalize(nn.Identity(), (0.5,), (0.0,))
    with pytest.raises(SmoothInvError, match="2 values but `std` has 1"):
        Normalize(nn.Identity(), (0.5, 0.5), (0.2,))
    with pytest.raises(SmoothInvError, match="numbers"):
        Normalize(nn.Identity(), ("a",), (1.0,))  # type: ignore[arg-type]


def test_input_gradients_flow_through_frozen_model(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(path, create_model("small_cnn"), arch="small_cnn", num_classes=10,
               input_size=(28, 28), channels=1, mean=(0.3,), std=(0.3,))
    module = load_model(path).module
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    module(x)[:, 3].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in module.parameters())


# ----------------------------------------------------------------------------- probe_model


def test_probe_model_ok() -> None:
    assert probe_model(Returns("ok"), channels=3, input_size=(8, 8)) == 4
    assert probe_model(create_model("small_cnn").eval(), channels=1, input_size=(28, 28)) == 10


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("raise", r"model failed on a 2x3x8x8 input: shapes cannot be multiplied; check"),
        ("nan", "NaN/inf"),
        ("1d", r"output has shape \[2\] .*expected \[batch, num_classes\]"),
        ("one_class", r"output has shape \[2, 1\]"),
        ("tuple", "returned tuple"),
    ],
)
def test_probe_model_failures(kind: str, message: str) -> None:
    with pytest.raises(SmoothInvError, match=message) as err:
        probe_model(Returns(kind), channels=3, input_size=(8, 8))
    assert "\n" not in str(err.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit
def test_probe_model_wrong_channels_and_torchscript_error(tmp_path: Path) -> None:
    with pytest.raises(SmoothInvError, match="model failed on a 2x3x28x28 input"):
        probe_model(create_model("small_cnn").eval(), channels=3, input_size=(28, 28))
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(TinyNet()), str(path))
    module = load_model(path, trust_code=True).module
    with pytest.raises(SmoothInvError, match="model failed on a 2x3x9x9 input: .*shapes") as err:
        probe_model(module, channels=3, input_size=(9, 9))
    assert "TorchScript interpreter" not in str(err.value)
