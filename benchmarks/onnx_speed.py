"""ONNX models run through smoothinv's own converter: how close and how fast, next to torch.

Exports resnet20 (random weights, seeded) with torch's older exporter (no onnxscript needed),
loads it back with `load_model`, and times a forward + input-gradient pass on a batch of 64
32x32 images, one thread, best of 5, for the torch module and the converted one. Prints the
largest logit difference. Usage: OMP_NUM_THREADS=1 python benchmarks/onnx_speed.py
"""

import tempfile
import time
import warnings
from pathlib import Path

import torch

from smoothinv.models import create_model, load_model

torch.set_num_threads(1)
torch.manual_seed(0)
reference = create_model("resnet20", 10).eval()
with tempfile.TemporaryDirectory() as folder:
    path = Path(folder) / "resnet20.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(reference, (torch.rand(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                          input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    converted = load_model(path).module

x = torch.rand(64, 3, 32, 32)


def seconds(module: torch.nn.Module) -> float:
    best = float("inf")
    for _ in range(5):
        inputs = x.clone().requires_grad_(True)
        start = time.perf_counter()
        (grad,) = torch.autograd.grad(module(inputs).logsumexp(1).sum(), inputs)
        best = min(best, time.perf_counter() - start)
    return best


with torch.no_grad():
    gap = float((converted(x) - reference(x)).abs().max())
print(f"largest |logit difference| {gap:.2e}")
print(f"forward + input gradient, batch 64: torch {seconds(reference):.3f} s, ONNX {seconds(converted):.3f} s")
