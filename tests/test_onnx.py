"""ONNX models: exported from torch, read back as differentiable modules that match the original.

Each check compares logits (atol 1e-4) and input gradients with the torch model. Exports use
the TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``; the default
torch.export-based exporter needs ``onnxscript`` and is tested when it is installed.
Refusals of hostile graphs are in tests/hostile/test_models.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from smoothinv.cli import main as cli_main
from smoothinv.errors import SmoothInvError
from smoothinv.models import create_model, get_model_info, load_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter


def export(model: nn.Module, example: torch.Tensor, path: Path, *, dynamo: bool = False, opset: int = 17,
           dynamic_batch: bool = False) -> Path:
    """``torch.onnx.export`` of ``model`` at ``example``'s shape, quietly."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=True, dynamic_shapes=shapes)
        else:
            axes = {"image": {0: "batch"}} if dynamic_batch else None
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                              input_names=["image"], dynamic_axes=axes)
    return path


def seeded(name: str) -> nn.Module:
    """``name`` with seeded weights and non-trivial BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def logits_and_gradient(model: nn.Module, x: torch.Tensor, *, one_at_a_time: bool = False
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """model(x) [B, K] and d(sum of logsumexp + logit 1)/dx [B, C, H, W]; optionally image by image.

    Graphs run image by image are compared with torch run image by image: batched and
    single-image convolutions round differently, which can flip a ReLU on random weights.
    """
    if one_at_a_time:
        pairs = [logits_and_gradient(model, x[i:i + 1]) for i in range(len(x))]
        return torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    (grad,) = torch.autograd.grad(out.logsumexp(1).sum() + out[:, 1].sum(), x)
    return out.detach(), grad


def assert_same_function(model: nn.Module, loaded: nn.Module, shape: tuple[int, ...],
                         dtype: torch.dtype = torch.float32) -> None:
    """Same logits (atol 1e-4) and input gradients (atol 1e-4 of their largest) on seeded inputs."""
    torch.manual_seed(1)
    x = torch.rand(*shape, dtype=dtype)
    chunked = getattr(loaded, "fixed_batch", None) is not None
    ref_out, ref_grad = logits_and_gradient(model, x, one_at_a_time=chunked)
    out, grad = logits_and_gradient(loaded, x)
    ref_out, ref_grad, grad = ref_out.float(), ref_grad.float(), grad.float()  # float32 logits come back
    assert out.shape == ref_out.shape
    assert torch.allclose(out, ref_out, atol=1e-4), (out - ref_out).abs().max()
    scale = float(ref_grad.abs().max())
    assert torch.allclose(grad, ref_grad, atol=1e-4 * scale, rtol=1e-3), (grad - ref_grad).abs().max() / scale


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("small_cnn", torch.float32),
        ("resnet20", torch.float32),
        ("preact_resnet18", torch.float32),
        # At 224x224, float32 rounding (the exporter folds BatchNorm into the convolutions)
        # flips enough ReLUs and max-pool choices to move 2% of the gradient; in float64 the
        # graph and torch agree to 1e-7.
        ("resnet18", torch.float64),
    ],
)
def test_exported_architecture_matches_torch(tmp_path: Path, name: str, dtype: torch.dtype) -> None:
    info = get_model_info(name)
    model = seeded(name).to(dtype)
    example = torch.rand(1, info.channels, *info.input_size, dtype=dtype)
    path = export(model, example, tmp_path / f"{name}.onnx")
    loaded = load_model(path)
    assert loaded.format == "onnx" and loaded.arch is None
    assert (loaded.channels, loaded.input_size) == (info.channels, info.input_size)
    assert loaded.module.fixed_batch is None  # exported for batch 1, but Flatten makes it batch-free
    assert not any(p.requires_grad for p in loaded.module.parameters())
    batch = 2 if info.input_size[0] > 100 else 3
    assert_same_function(model, loaded.module, (batch, info.channels, *info.input_size), dtype)


def test_dynamic_batch_export_and_normalize(tmp_path: Path) -> None:
    model = seeded("resnet20")
    path = export(model, torch.rand(1, 3, 32, 32), tmp_path / "r.onnx", dynamic_batch=True)
    loaded = load_model(path, mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    assert loaded.mean == (0.5, 0.4, 0.3)
    from smoothinv.models import Normalize

    assert_same_function(Normalize(model, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)).eval(), loaded.module, (3, 3, 32, 32))


class ManyOps(nn.Module):
    """Operators image classifiers use beyond plain ResNets, in one graph: [B, 3, 16, 16] -> [B, 5]."""

    def __init__(self) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(3, 6, 3, padding=2, dilation=2, groups=3)
        self.pointwise = nn.Conv2d(6, 8, 1)
        self.strided = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False)
        self.up = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.instance = nn.InstanceNorm2d(4, affine=True)
        self.prelu = nn.PReLU(4)
        self.ln = nn.LayerNorm(12)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.depthwise(x), 0.1)
        y = F.hardswish(self.pointwise(y)) + F.hardsigmoid(y.mean(1, keepdim=True))
        y = self.strided(F.max_pool2d(y, 3, stride=1, padding=1))  # [B, 8, 8, 8]
        y = F.gelu(y) * torch.sigmoid(y) - torch.tanh(y) / 2
        y = self.prelu(self.instance(self.bn(self.up(y))))  # [B, 4, 16, 16]
        y = F.pad(y, (1, 2, 0, 1), mode="reflect")
        y = F.avg_pool2d(y, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)  # [B, 4, 9, 9]
        a, b = torch.chunk(y, 2, dim=1)
        y = torch.cat([a.clamp(-1, 1), torch.sqrt(b.abs() + 1e-3), torch.exp(-b.square())], 1)  # [B, 6, 9, 9]
        y = y[:, :, 1:8:2, :].flip(-1).permute(0, 2, 3, 1)  # [B, 4, 9, 6]
        y = y.reshape(y.shape[0], -1, 12)  # [B, 18, 12]
        y = self.ln(y).pow(2) + torch.log1p(y.abs())
        y = y.softmax(-1) * 3 + y.log_softmax(1)
        y = y.sum(1) / y.shape[1] + y.amax(1) * 0.1  # [B, 12]
        y = torch.erf(y) + F.elu(y).flatten(1)
        return self.fc(y.unsqueeze(1).squeeze(1))


@pytest.mark.parametrize("opset", [11, 13, 17])
def test_operator_coverage_across_opsets(tmp_path: Path, opset: int) -> None:
    """Squeeze, Split, ReduceMean, Clip, Pad and Softmax changed form between these opsets."""
    torch.manual_seed(0)
    model = ManyOps().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    path = export(model, torch.rand(1, 3, 16, 16), tmp_path / "many.onnx", opset=opset, dynamic_batch=True)
    assert_same_function(model, load_model(path).module, (3, 3, 16, 16))


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_default_exporter_with_external_data(tmp_path: Path, dynamic_batch: bool) -> None:
    """torch.onnx.export's default: weights in model.onnx.data, batch fixed at 1 unless made dynamic."""
    pytest.importorskip("onnxscript")
    model = seeded("resnet20")
    path = export(model, torch.rand(1, 3, 32, 32), tmp_path / "r.onnx", dynamo=True, dynamic_batch=dynamic_batch)
    assert (tmp_path / "r.onnx.data").is_file()
    loaded = load_model(path)
    # A fixed-batch graph reshapes to [1, 64]: it cannot take a batch, so it runs image by image.
    assert loaded.module.fixed_batch == (None if dynamic_batch else 1)
    assert_same_function(model, loaded.module, (3, 3, 32, 32))


def test_default_exporter_operator_coverage(tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    model = ManyOps().eval()
    path = export(model, torch.rand(1, 3, 16, 16), tmp_path / "many.onnx", dynamo=True, dynamic_batch=True)
    assert_same_function(model, load_model(path).module, (3, 3, 16, 16))


def test_fixed_batch_graph_is_chunked(tmp_path: Path) -> None:
    """A graph that reshapes to its exported batch (2) gets any batch, in chunks padded to 2."""

    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(2, 16))  # the batch size is baked into the graph

    torch.manual_seed(0)
    model = FixedBatch().eval()
    loaded = load_model(export(model, torch.rand(2, 1, 4, 4), tmp_path / "fixed.onnx"))
    assert loaded.module.fixed_batch == 2
    x = torch.rand(5, 1, 4, 4)
    expected = model.fc(x.reshape(5, 16))
    assert torch.allclose(loaded.module(x), expected, atol=1e-6)


def test_flags_must_match_the_declared_input(tmp_path: Path) -> None:
    path = export(seeded("small_cnn"), torch.rand(1, 1, 28, 28), tmp_path / "m.onnx")
    with pytest.raises(SmoothInvError, match="`input_size` 32x32 does not match the 28x28 that m.onnx's ONNX graph"):
        load_model(path, input_size=(32, 32))
    with pytest.raises(SmoothInvError, match="`channels` 3 does not match the 1"):
        load_model(path, channels=3)
    assert load_model(path, input_size=(28, 28), channels=1).input_size == (28, 28)


def test_scan_cli_on_onnx_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    model_path = export(seeded("small_cnn"), torch.rand(1, 1, 28, 28), tmp_path / "model.onnx")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L").save(tmp_path / "image.png")
    np.savez(tmp_path / "clean.npz", x=rng.integers(0, 256, (20, 28, 28, 1), dtype=np.uint8), y=np.arange(20) % 10)
    out = tmp_path / "scan"
    monkeypatch.setattr(sys, "argv", ["smoothinv", "scan", "--model", str(model_path), "--image",
                                      str(tmp_path / "image.png"), "--clean", str(tmp_path / "clean.npz"),
                                      "--out", str(out), "--classes", "0,3", "--steps", "2", "--noise-samples", "2",
                                      "--eps", "1", "--sigma", "0.25", "--fallback-sigma", "none",
                                      "--clean-limit", "20"])
    try:
        cli_main.main()
    except SystemExit as exc:
        assert exc.code in (0, None), capsys.readouterr().err
    record = json.loads((out / "scan.json").read_text())
    assert record["model"]["format"] == "onnx"
    assert record["model"]["channels"] == 1 and record["model"]["input_size"] == [28, 28]
    assert [c["class"] for c in record["classes"]] == [0, 3]
