"""Hostile model files: code that runs on load, sizes that exhaust memory, misnamed files.

Findings covered: a TorchScript archive wrote files from ``__setstate__`` during
``torch.jit.load`` (``torch.from_file(..., shared=True)``); a 421 KB safetensors whose metadata
said input_size=2500,2500 grew to 7.5 GB; a zip renamed .safetensors was refused as "header too
large"; ONNX graphs with custom ops, loops or external data outside the model's folder.
"""

from __future__ import annotations

import shutil
import warnings
import zipfile
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper
from safetensors.torch import load_file, save_file
from torch import nn

from smoothinv.errors import SmoothInvError
from smoothinv.models import load_model
from smoothinv.models.loading import MAX_IMAGE_SIDE, MAX_NUM_CLASSES

from .conftest import FAST_SCAN, Sandbox, assert_refused, run_cli


# ----------------------------------------------------------------------------- TorchScript writes files


class _WritesFiles(nn.Module):
    """A 10-class linear model on [B, 1, 28, 28] that creates ``<target>.setstate`` while it is
    loaded (``__setstate__`` runs inside torch.jit.load) and ``<target>.forward`` when it runs."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.w = torch.randn(28 * 28, 10)
        self.loot = torch.zeros(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target + ".forward", shared=True, size=1)
        return x.flatten(1) @ self.w + written.sum() * 0

    @torch.jit.export
    def __getstate__(self) -> tuple[str, torch.Tensor, bool]:
        return (self.target, self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, torch.Tensor, bool]) -> None:
        self.target = state[0]
        self.w = state[1]
        self.training = state[2]
        self.loot = torch.from_file(self.target + ".setstate", shared=True, size=1)


@pytest.fixture
def file_writer(tmp_path: Path) -> tuple[Path, Path]:
    """(TorchScript archive, marker prefix): the archive writes ``marker.*`` when loaded or run."""
    marker = tmp_path / "victim" / "marker"
    marker.parent.mkdir()
    path = tmp_path / "model" / "evil.pt"
    path.parent.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(_WritesFiles(str(marker))).save(str(path))
    return path, marker


def _markers(marker: Path) -> list[str]:
    return sorted(p.name for p in marker.parent.iterdir())


def test_torchscript_is_refused_before_it_can_write_files(file_writer: tuple[Path, Path]) -> None:
    path, marker = file_writer
    with pytest.raises(SmoothInvError, match="TorchScript archive.*`trust_code`=True.*safetensors.*ONNX") as err:
        load_model(path)
    assert "\n" not in str(err.value)
    assert _markers(marker) == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_payload_is_real_when_trusted(file_writer: tuple[Path, Path]) -> None:
    """The opt-in does run the file's code: proof that the refusal above is what protects."""
    path, marker = file_writer
    loaded = load_model(path, trust_code=True)
    assert _markers(marker) == ["marker.setstate"]
    loaded.module(torch.rand(1, 1, 28, 28))
    assert _markers(marker) == ["marker.forward", "marker.setstate"]


@pytest.mark.parametrize("command", ["scan", "invert"])
def test_cli_refuses_torchscript_without_trust_code(monkeypatch, capsys, tmp_path, inputs, file_writer,
                                                    command: str) -> None:
    path, marker = file_writer
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    out = tmp_path / "out"
    extra = ["--target", "3", "--clean", inputs["clean_npz"]] if command == "invert" else ["--clean", inputs["clean_npz"]]
    run = run_cli(monkeypatch, capsys, command, "--model", path, "--image", inputs["image"], *extra, "--out", out,
                  *FAST_SCAN[:8])
    message = assert_refused(run, "TorchScript", "--trust-code", "ONNX", out=out, sandbox=sandbox, before=before)
    assert "evil.pt" in message
    assert _markers(marker) == []


def test_help_shows_trust_code_not_the_old_flag(monkeypatch, capsys) -> None:
    run = run_cli(monkeypatch, capsys, "scan", "--help")
    assert run.code == 0 and "--trust-code" in run.stdout and "RUNS CODE FROM THE FILE" in run.stdout
    assert "--unsafe-pickle" not in run.stdout


@pytest.mark.parametrize("flag", [None, "--trust-code", "--unsafe-pickle"])
def test_pickled_model_needs_trust_code_or_its_old_alias(monkeypatch, capsys, tmp_path, inputs, flag) -> None:
    torch.manual_seed(0)
    path = tmp_path / "whole.pt"
    torch.save(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), path)
    out = tmp_path / "out"
    args = ["scan", "--model", path, "--image", inputs["image"], "--clean", inputs["clean_npz"], "--out", out,
            "--classes", "3", "--clean-limit", "20", *FAST_SCAN]
    run = run_cli(monkeypatch, capsys, *args, *([flag] if flag else []))
    if flag is None:
        assert_refused(run, "pickled Python object", "--trust-code", out=out)
    else:
        assert run.code == 0, run.stderr
        assert ("deprecated" in run.stderr) == (flag == "--unsafe-pickle")


# ----------------------------------------------------------------------------- sizes from the file


def _with_metadata(source: Path, target: Path, **metadata: str) -> Path:
    """A copy of the safetensors model ``source`` with some metadata replaced."""
    from safetensors import safe_open

    with safe_open(str(source), framework="pt") as f:
        stored = dict(f.metadata() or {})
    save_file(load_file(str(source)), str(target), metadata={**stored, **metadata})
    return target


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("input_size", "2500,2500", "4096 pixels per side and 4194304 pixels in all"),
        ("input_size", "100000", "100000x100000 is too large"),
        ("input_size", "28,0", "positive integer"),
        ("num_classes", "1000000000", f"at most {MAX_NUM_CLASSES} classes"),
        ("num_classes", "1e9", "whole number"),
        ("channels", "4", "1 (gray) or 3 (RGB)"),
        ("channels", "100000", "1 (gray) or 3 (RGB)"),
        ("mean", ",".join(["0.5"] * 1000), "at most 3"),
    ],
)
def test_metadata_sizes_are_bounded_before_anything_is_allocated(tmp_path, inputs, key, value, says) -> None:
    path = _with_metadata(inputs["model"], tmp_path / "bomb.safetensors", **{key: value})
    if key == "mean":
        path = _with_metadata(path, path, std=value)
    with pytest.raises(SmoothInvError, match=f"invalid metadata {key}=") as err:
        load_model(path)
    message = str(err.value)
    assert says in message and f"pass `{key}`" in message and "\n" not in message and len(message) < 400


def test_metadata_bomb_via_cli_names_field_and_bound(monkeypatch, capsys, tmp_path, inputs) -> None:
    """The finding: 421 KB of safetensors asked for 2500x2500 inputs and grew to 7.5 GB."""
    path = _with_metadata(inputs["model"], tmp_path / "bomb.safetensors", input_size="2500,2500")
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "scan", "--model", path, "--image", inputs["image"], "--clean",
                  inputs["clean_npz"], "--out", out, *FAST_SCAN)
    assert_refused(run, "input_size='2500,2500'", str(MAX_IMAGE_SIDE), "--input-size", out=out)


def test_huge_architecture_name_is_not_echoed_whole(tmp_path, inputs) -> None:
    path = _with_metadata(inputs["model"], tmp_path / "m.safetensors", arch="x" * 1_000_000)
    with pytest.raises(SmoothInvError, match="unknown architecture") as err:
        load_model(path)
    assert len(str(err.value)) < 300


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--input-size", "100000"], "--input-size 100000x100000 is too large"),
        (["--input-size", "4097,8"], "--input-size 4097x8 is too large"),
        (["--num-classes", "1000000000"], f"--num-classes is 1000000000; at most {MAX_NUM_CLASSES}"),
        (["--mean", ",".join(["0.1"] * 50), "--std", ",".join(["0.1"] * 50)], "at most 3"),
    ],
)
def test_model_flags_are_bounded(monkeypatch, capsys, tmp_path, inputs, flags, says) -> None:
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "scan", "--model", inputs["model"], *flags, "--image", inputs["image"],
                  "--clean", inputs["clean_npz"], "--out", out, *FAST_SCAN)
    assert_refused(run, says, out=out)


def test_library_bounds(tmp_path, inputs) -> None:
    with pytest.raises(SmoothInvError, match="`input_size` 2500x2500 is too large"):
        load_model(inputs["model"], input_size=(2500, 2500))
    with pytest.raises(SmoothInvError, match="`channels` must be 1 .gray. or 3"):
        load_model(inputs["model"], channels=4)
    with pytest.raises(SmoothInvError, match="`num_classes` is 100001"):
        load_model(inputs["model"], num_classes=MAX_NUM_CLASSES + 1)


# ----------------------------------------------------------------------------- misnamed files


@pytest.mark.parametrize("command", ["scan", "invert", "sanity"])
def test_zip_renamed_safetensors_says_what_it_is(monkeypatch, capsys, tmp_path, inputs, command) -> None:
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(inputs["model"], "model.safetensors")
    out = tmp_path / "out"
    tail = {"scan": ["--image", inputs["image"], "--out", out, *FAST_SCAN],
            "invert": ["--image", inputs["image"], "--target", "3", "--out", out],
            "sanity": ["--attack", '{"attack": "badnets", "target": 0}']}[command]
    run = run_cli(monkeypatch, capsys, command, "--model", path, "--clean", inputs["clean_npz"], *tail)
    message = assert_refused(run, "zip archive holding model.safetensors", "despite its .safetensors extension",
                             out=out if command != "sanity" else None)
    assert "header too large" not in message


def test_torch_checkpoint_renamed_safetensors_is_read_by_content(monkeypatch, capsys, tmp_path, inputs) -> None:
    path = tmp_path / "model.safetensors"
    torch.save(load_file(str(inputs["model"])), path)
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "scan", "--model", path, "--arch", "small_cnn", "--image", inputs["image"],
                  "--clean", inputs["clean_npz"], "--out", out, "--classes", "3", "--clean-limit", "20", *FAST_SCAN)
    assert run.code == 0, run.stderr


# ----------------------------------------------------------------------------- hostile ONNX


def _onnx_model(path: Path, nodes: list, *, initializers: list | None = None, opset: int = 17,
                inputs: list | None = None, outputs: list | None = None) -> Path:
    """Write a graph of ``nodes`` from image input "x" [N, 1, 28, 28] to output "y"."""
    graph = helper.make_graph(
        nodes, "hostile",
        inputs if inputs is not None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 28, 28])],
        outputs if outputs is not None else [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers or [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    path.write_bytes(model.SerializeToString())
    return path


def _loop_node() -> onnx.NodeProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["v_in"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None)],
    )
    return helper.make_node("Loop", ["", "", "x"], ["y"], body=body)  # no trip count: runs while cond


def _if_node() -> onnx.NodeProto:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["out"])], "branch", [],
                               [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    return helper.make_node("If", ["x"], ["y"], then_branch=branch, else_branch=branch)


def _external(tmp_path: Path, location: str) -> Path:
    """A graph y = x·w whose weight w lives in external data at ``location``."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return _onnx_model(tmp_path / "model" / "m.onnx", [helper.make_node("Mul", ["x", "w"], ["y"])], initializers=[w])


@pytest.mark.parametrize(
    ("build", "says"),
    [
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Evil", ["x"], ["y"], domain="com.evil")]),
         "custom operators (com.evil::Evil)"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Einsum", ["x"], ["y"], equation="..."),
                                              ]), "cannot run: Einsum"),
        (lambda d: _onnx_model(d / "m.onnx", [_loop_node()]), "control flow (Loop)"),
        (lambda d: _onnx_model(d / "m.onnx", [_if_node()]), "control flow (If)"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"]),
                                              helper.make_node("Relu", ["x"], ["z"])],
                               outputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in "yz"]),
         "2 graph outputs"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                               inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 28, 28])]),
         "has rank 3"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                               inputs=[helper.make_tensor_value_info("x", TensorProto.INT64, [1, 1, 28, 28])]),
         "is INT64, not a float image tensor"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"]),
                                              helper.make_node("Relu", ["nowhere"], ["w"])]),
         "reads 'nowhere' before any node computes it"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])], opset=99), "opset 99"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Add", ["x", "x2"], ["y"])],
                               inputs=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 28, 28])
                                       for n in ("x", "x2")]), "2 graph inputs"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                               inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 100000, 100000])]),
         "100000x100000 is too large"),
        (lambda d: _onnx_model(d / "m.onnx", [helper.make_node("Relu", ["x"], ["y"])],
                               inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 7, 28, 28])]),
         "channels must be 1 (gray) or 3 (RGB), got 7"),
    ],
)
def test_cli_refuses_hostile_onnx(monkeypatch, capsys, tmp_path, inputs, build, says) -> None:
    (tmp_path / "model").mkdir()
    path = build(tmp_path / "model")
    sandbox = Sandbox(tmp_path)
    before = sandbox.snapshot()
    out = tmp_path / "out"
    run = run_cli(monkeypatch, capsys, "scan", "--model", path, "--image", inputs["image"], "--clean",
                  inputs["clean_npz"], "--out", out, *FAST_SCAN)
    assert_refused(run, says, out=out, sandbox=sandbox, before=before)


@pytest.mark.parametrize(
    ("location", "says"),
    [
        ("../secret.bin", "outside the model's folder"),
        ("/etc/passwd", "outside the model's folder"),
        ("sub/../../secret.bin", "outside the model's folder"),
        ("link.bin", "links outside the model's folder"),
        ("missing.bin", "is missing"),
        ("short.bin", "needs 4 bytes at offset 0"),
    ],
)
def test_onnx_external_data_stays_in_the_model_folder(tmp_path, location, says) -> None:
    (tmp_path / "model").mkdir()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\x00\x00\x80\x3f")  # a valid float 1.0: only the location is wrong
    (tmp_path / "model" / "link.bin").symlink_to(secret)
    (tmp_path / "model" / "short.bin").write_bytes(b"\x00")
    path = _external(tmp_path, location)
    with pytest.raises(SmoothInvError, match=says) as err:
        load_model(path)
    assert "\n" not in str(err.value)


def test_onnx_external_data_inside_the_folder_loads(tmp_path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.bin").write_bytes(b"\x00\x00\x00\x40")  # 2.0
    module = load_model(_external(tmp_path, "w.bin")).module
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(module(x), 2 * x)


def test_onnx_operator_cannot_allocate_without_bound(tmp_path) -> None:
    """ConstantOfShape [100000, 100000] would be 40 GB: refused when it runs, nothing allocated."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [100_000, 100_000])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
             helper.make_node("Add", ["x", "big"], ["y"])]
    module = load_model(_onnx_model(tmp_path / "m.onnx", nodes, initializers=[shape])).module
    with pytest.raises(SmoothInvError, match="ConstantOfShape.*would create a tensor of 10000000000 elements"):
        module(torch.rand(1, 1, 28, 28))


def test_truncated_onnx_is_named_as_such(tmp_path) -> None:
    good = _onnx_model(tmp_path / "good.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(SmoothInvError, match="cut.onnx is not a valid ONNX model .*truncated"):
        load_model(cut)
    shutil.copy(good, tmp_path / "model.bin")  # ONNX is recognised by content, whatever the name
    assert load_model(tmp_path / "model.bin").format == "onnx"
    noise = tmp_path / "noise.dat"  # starts like ONNX (0x08), is not
    noise.write_bytes(b"\x08" + bytes(range(256)) * 4)
    with pytest.raises(SmoothInvError, match="noise.dat is not a recognised model file: it is an unrecognised binary"):
        load_model(noise)


def test_a_pipe_or_device_as_model_is_refused_at_once(monkeypatch, capsys, tmp_path, inputs):
    """A FIFO would block the reader forever, /dev/zero would never end."""
    import os

    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    for model in (fifo, Path("/dev/zero")):
        out = tmp_path / "out"
        run = run_cli(monkeypatch, capsys, "invert", "--model", model, "--image", inputs["image"], "--target", "3",
                      "--clean", inputs["clean_npz"], "--out", out, "--steps", "2")
        assert_refused(run, "not a regular file", out=out)
