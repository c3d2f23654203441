"""Time one default scan of fmnist-badnets: one seeded test image, 500 clean test images, one thread.

Used to compare two versions of the code side by side (docs/benchmarks.md, "The method contract:
what moved"): run it under each version's PYTHONPATH with farm-bench --vs. Prints the flagged
classes and the scan's seconds on stderr.

Usage: OMP_NUM_THREADS=1 python benchmarks/scan_speed.py [STEPS]   (data: SMOOTHINV_DATA or ../shared/data)
"""

import sys
import time

import torch

from smoothinv.bench.detect import scan_image
from smoothinv.data.datasets import load_dataset
from smoothinv.detection import ScanSettings, scan
from smoothinv.zoo import load_zoo_model

torch.set_num_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
model = load_zoo_model("fmnist-badnets").module
x, y = load_dataset("fashion-mnist").split(train=False)
pick = scan_image(y, 0, 0)
keep = torch.ones(len(y), dtype=torch.bool)
keep[pick] = False
try:
    from smoothinv.methods import method_spec

    settings = ScanSettings(method_spec("smoothinv", steps=steps, noise_samples=8))
except ImportError:  # the code before the typed method configuration (commit a1be677)
    settings = ScanSettings(steps=steps)  # type: ignore[call-arg]
start = time.perf_counter()
result = scan(model, [x[pick]], x[keep][:500], y[keep][:500], 10, settings)
print(result.targets, round(time.perf_counter() - start, 1), file=sys.stderr)
