"""Where does a zoo model's smoothed classifier collapse? Prints, per σ, the accuracy of
argmax G and the most common predicted class with its share (N = 8 noise samples, 300 random
CIFAR-10 test images, seed 0). Used in docs/benchmarks.md, "Noise levels".

    OMP_NUM_THREADS=1 python benchmarks/noise_probe.py cifar10-clean-s0 cifar10-badnets
"""

from __future__ import annotations

import sys

import torch

from smoothinv.data.datasets import load_dataset
from smoothinv.zoo import load_zoo_model

SIGMAS = (0.0, 0.03, 0.06, 0.12, 0.25)
NOISE_SAMPLES = 8


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    x, y = load_dataset("cifar10").split(train=False)
    pick = torch.randperm(len(y))[:300]
    x, y = x[pick], y[pick]
    print("| model | σ | accuracy | most common class | share |")
    print("|---|---|---|---|---|")
    for name in names:
        model = load_zoo_model(name).module
        for sigma in SIGMAS:
            with torch.no_grad():
                probs = sum(torch.softmax(model(x + sigma * torch.randn_like(x)), 1) for _ in range(NOISE_SAMPLES))
            pred = probs.argmax(1)
            counts = torch.bincount(pred, minlength=probs.shape[1])
            print(f"| {name} | {sigma:g} | {(pred == y).float().mean():.0%} | {int(counts.argmax())} | "
                  f"{float(counts.max()) / len(pred):.0%} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["cifar10-clean-s0", "cifar10-badnets"])
