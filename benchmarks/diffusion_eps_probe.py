"""Why "w/ diffusion" recovers less at the paper's ε: for one image of a zoo model, SmoothInv toward
the true target at σ ∈ {0.12, 0.25} and ε = the paper's ε = 5 scaled to the input × {1, 2, 4},
with and without the shipped denoiser (100 steps, N = 4). Prints G's target probability before and
after the descent and the ASR of p on 500 clean test images (docs/benchmarks.md).

    OMP_NUM_THREADS=1 python benchmarks/diffusion_eps_probe.py fmnist-blind-s cifar10-badnets
"""

from __future__ import annotations

import sys

import torch

from smoothinv.bench.table2 import pick_images
from smoothinv.data.datasets import load_dataset
from smoothinv.denoisers import resolve_denoiser, shipped_for
from smoothinv.labels import eligible
from smoothinv.methods.eps import scaled_eps
from smoothinv.methods.registry import method_spec
from smoothinv.zoo import load_zoo_model


def main(names: list[str]) -> None:
    print("| model | ε (× paper's) | σ | T | G target prob before → after | ASR |")
    print("|---|---|---|---|---|---|")
    for name in names:
        zm = load_zoo_model(name)
        record = zm.record
        x, y = load_dataset(record["dataset"]).split(train=False)
        target, sources = record["target"], record["source_classes"]
        image = x[pick_images(y, target, sources, 1, 0)[0]]
        clean = x[eligible(y, target, sources)][:500]
        ref = resolve_denoiser(shipped_for(record["dataset"]))
        for factor in (1, 2, 4):
            eps = scaled_eps(tuple(x.shape[1:])) * factor
            for sigma in (0.12, 0.25):
                for label, extra in (("none", {}), (ref.name, {"denoiser": ref})):
                    spec = method_spec("smoothinv", steps=100, noise_samples=4, sigma=sigma, eps=eps, **extra)
                    result = spec.build().invert(zm.module, image, target, seed=0)
                    with torch.no_grad():
                        asr = float((zm.module(result.trigger.apply(clean)).argmax(1) == target).float().mean())
                    print(f"| {name} | {eps:.2f} (×{factor}) | {sigma:g} | {label} | "
                          f"{float(result.target_prob[0]):.3f} → {float(result.target_prob[-1]):.3f} | {asr:.1%} |",
                          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
