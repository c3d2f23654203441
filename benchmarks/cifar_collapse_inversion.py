"""SmoothInv at σ where a CIFAR-10 ResNet-20's smoothed classifier has collapsed to "frog":
does the backdoor still come out? One clean test image (the 4th non-frog test image),
N = 8, 200 steps, ASR on test images 1000-1499. Used in docs/benchmarks.md, "Noise sink".

    OMP_NUM_THREADS=1 python benchmarks/cifar_collapse_inversion.py
"""

from __future__ import annotations

from smoothinv.data.datasets import load_dataset
from smoothinv.engine.metrics import attack_success_rate
from smoothinv.methods import get_method
from smoothinv.zoo import load_zoo_model

RUNS = {"cifar10-badnets": (0.12, 0.25, 0.5), "cifar10-clean-s0": (0.25, 0.5)}


def main() -> None:
    x, y = load_dataset("cifar10").split(train=False)
    image = x[(y != 6).nonzero()[3, 0]]
    clean_x, clean_y = x[1000:1500], y[1000:1500]
    print("| model | toward | σ | ε = 2.86 | ε = 5.71 |")
    print("|---|---|---|---|---|")
    for name, sigmas in RUNS.items():
        model = load_zoo_model(name).module
        for target in (6, 8):
            for sigma in sigmas:
                asrs = []
                for eps in (2.86, 5.71):
                    method = get_method("smoothinv", eps=eps, sigma=sigma, noise_samples=8, steps=200)
                    result = method.invert(model, image, target, seed=0)
                    asrs.append(attack_success_rate(model, result.trigger, clean_x, clean_y, target))
                print(f"| {name} | {target} | {sigma:g} | {asrs[0]:.1%} | {asrs[1]:.1%} |", flush=True)


if __name__ == "__main__":
    main()
