"""Cost of one SmoothInv config (one image, one ε and σ, 400 steps) with and without the
denoiser, beside PlainAdv: the paper's Table 4 measured on this machine.

    python benchmarks/diffusion_cost.py --threads 2 --steps 40

Each variant runs `--steps` descent steps (after one warm-up step) and the time is scaled to 400
steps; N = 10 noise samples, as in the paper's Table 4 column N=10. Run it alone on the machine:
the figures are uncontended.
"""

from __future__ import annotations

import argparse
import time

import torch

from smoothinv.data.datasets import load_dataset
from smoothinv.denoisers import resolve_denoiser, shipped_for
from smoothinv.methods.registry import method_spec
from smoothinv.zoo import load_zoo_model

MODELS = {"cifar10": "cifar10-trojai", "fashion-mnist": "fmnist-badnets"}


def seconds_per_step(model, image, target, spec, steps: int) -> float:
    method = spec.with_options(steps=1).build()
    method.invert(model, image, target, seed=0)  # warm-up: loads and caches the denoiser
    method = spec.with_options(steps=steps).build()
    start = time.perf_counter()
    method.invert(model, image, target, seed=0)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"Seconds per 400-step config, {args.threads} threads, measured over {args.steps} steps:\n")
    print("| model | PlainAdv | SmoothInv w/o (N=10) | SmoothInv w/ (N=10) | w/ ÷ w/o |")
    print("|---|---|---|---|---|")
    for dataset, name in MODELS.items():
        model = load_zoo_model(name).module
        x, y = load_dataset(dataset).split(train=False)
        image, target = x[1], (int(y[1]) + 1) % 10
        ref = resolve_denoiser(shipped_for(dataset))
        plain = seconds_per_step(model, image, target, method_spec("plainadv", eps=1.0), args.steps)
        without = seconds_per_step(model, image, target, method_spec("smoothinv", eps=1.0, sigma=0.25,
                                                                      noise_samples=10), args.steps)
        with_t = seconds_per_step(model, image, target, method_spec("smoothinv", eps=1.0, sigma=0.25, noise_samples=10,
                                                                     denoiser=ref), args.steps)
        print(f"| {name} ({dataset}) | {400 * plain:.1f} | {400 * without:.1f} | {400 * with_t:.1f} | "
              f"{with_t / without:.0f}× |", flush=True)


if __name__ == "__main__":
    main()
