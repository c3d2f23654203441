"""Table 5 with and without the diffusion denoiser: clean accuracy and true-trigger ASR of the
smoothed classifier G at each σ, for every zoo model of a dataset (docs/benchmarks.md,
"SmoothInv w/ diffusion"). The denoiser is the shipped one for the dataset.

    OMP_NUM_THREADS=1 python benchmarks/diffusion_table5.py --dataset cifar10 \
        --out benchmarks/results/table5-diffusion-cifar10.json

The clean images' noisy copies are the same for every model (same seed, same images), so their
denoised versions are computed once per dataset and reused (`ReusedDenoiser`); triggered images
differ per model and are denoised per model. Results are written after every model; a rerun
skips the models already in --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from torch import Tensor

from smoothinv.data.datasets import load_dataset
from smoothinv.denoisers import OneShotDenoiser, load_denoiser, shipped_for
from smoothinv.engine.sanity import SANITY_SIGMAS, sanity_table
from smoothinv.files import atomic_write_text
from smoothinv.zoo import list_zoo, load_zoo_model


class ReusedDenoiser:
    """T with a memory: the output for an input (images and σ) seen before is returned, not recomputed."""

    def __init__(self, denoiser: OneShotDenoiser) -> None:
        self.denoiser = denoiser
        self.name = denoiser.name
        self.cache: dict[bytes, Tensor] = {}
        self.hits = self.misses = 0

    def __call__(self, noisy: Tensor, sigma: Tensor) -> Tensor:
        key = hashlib.blake2b(noisy.detach().numpy().tobytes() + sigma.numpy().tobytes(), digest_size=16).digest()
        if key not in self.cache:
            self.misses += 1
            self.cache[key] = self.denoiser(noisy, sigma)
        else:
            self.hits += 1
        return self.cache[key]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, choices=["cifar10", "fashion-mnist"])
    parser.add_argument("--model", action="append", help="only these zoo models (default: every model of the dataset)")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--noise-samples", type=int, default=8)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    finished = {r["model"] for r in done["rows"]}
    denoiser = load_denoiser(shipped_for(args.dataset))
    reused = ReusedDenoiser(denoiser)
    x, y = load_dataset(args.dataset).split(train=False)
    x, y = x[: args.images], y[: args.images]
    done["settings"] = {"dataset": args.dataset, "images": len(x), "noise_samples": args.noise_samples, "seed": 0,
                        "sigmas": list(SANITY_SIGMAS), "denoiser": denoiser.describe(list(SANITY_SIGMAS))}
    for record in list_zoo():
        if record["dataset"] != args.dataset or record["name"] in finished or (args.model and record["name"] not in args.model):
            continue
        zm = load_zoo_model(record["name"])
        trigger = None if zm.attack is None else zm.attack.trigger(tuple(x.shape[1:]))
        target = None if zm.attack is None else zm.attack.target
        sources = None if zm.attack is None else zm.attack.source_classes
        row = {"model": record["name"], "attack": None if zm.attack is None else record["attack"]["attack"]}
        for label, t in (("without", None), ("with", reused)):
            start = time.perf_counter()
            row[label] = sanity_table(zm.module, x, y, trigger, target, noise_samples=args.noise_samples,
                                      source_classes=sources, seed=0, denoiser=t)
            row[f"seconds_{label}"] = round(time.perf_counter() - start, 1)
        done["rows"].append(row)
        atomic_write_text(args.out, json.dumps(done, indent=1) + "\n")
        cells = " ".join(f"σ{r['sigma']:g}:{r['clean_accuracy']:.0%}/{w['clean_accuracy']:.0%}"
                         for r, w in zip(row["without"], row["with"]))
        print(f"{record['name']}: clean acc w/o / w/ {cells} ({row['seconds_with']:.0f}s with)", flush=True)


if __name__ == "__main__":
    main()
