"""The cost of a default scan of a 1000-class, 224x224 ResNet-18 (issue 14's device measurement).

Random weights (a scan's cost does not depend on what the weights learnt), BatchNorm statistics
set by a few forward passes of random images so that the network is not degenerate, random
"clean" images with random labels. Prints seconds, peak GPU memory and the scan's time split
(noise probe / screen / synthesis / evaluation), as JSON.

    python3 benchmarks/gpu_scan_1000.py                      # on the GPU when there is one
    python3 benchmarks/gpu_scan_1000.py --classes 20 --size 64 --steps 5 --clean-images 40   # a CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import torch

from smoothinv.detection.scan import ScanSettings, scan
from smoothinv.models import create_model
from smoothinv.models.loading import Normalize


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--clean-images", type=int, default=500)
    parser.add_argument("--max-batch", type=int, default=256)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = create_model("resnet18", args.classes)
    net.train()
    with torch.no_grad():
        for _ in range(4):
            net(torch.rand(16, 3, args.size, args.size))
    model = Normalize(net.eval(), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).to(device)
    model.requires_grad_(False)
    clean = torch.rand(args.clean_images, 3, args.size, args.size)
    labels = torch.randint(args.classes, (args.clean_images,))
    image = torch.rand(3, args.size, args.size)
    default = ScanSettings(seed=0)
    settings = replace(default, method=default.method.with_options(steps=args.steps), max_batch=args.max_batch)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = scan(model, [image], clean, labels, args.classes, settings)
    if device == "cuda":
        torch.cuda.synchronize()
    report = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "classes": args.classes, "input": args.size, "steps": args.steps, "clean_images": args.clean_images,
        "seconds": round(time.perf_counter() - start, 1), "split_s": result.seconds,
        "classes_on_full_grid": len(result.classes), "precision": result.precision,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device == "cuda" else None,
        "verdict": result.verdict,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
