"""`invert`'s paper protocol, raced (the default), against a plain loop written from the paper's Algorithm 1.

Same image, same 8 configs (the paper's eps 5, 10 scaled to the input x sigma 0.12, 0.25, 0.5, 1),
same N and steps, same clean images for ASR (float32), one process, the torch threads the machine
has. The plain loop runs each config alone, as Algorithm 1 reads: sample N noises, average the
softmax, take the normalised gradient of -log G_y, step alpha = 0.05 eps, clip to [0,1], project.

Usage (data: SMOOTHINV_DATA or ../shared/data):
    python3 benchmarks/invert_speed.py [--model cifar10-badnets] [--steps 100] [--noise-samples 40] [--exhaustive]
    --exhaustive also times the protocol with racing off (every config to its last step, in order).
Prints one table and writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from smoothinv.bench.detect import scan_image
from smoothinv.data.datasets import load_dataset
from smoothinv.engine.metrics import attack_success_rate
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.sweep import Grid, Racing, run_sweep
from smoothinv.triggers import AdditiveTrigger
from smoothinv.zoo import load_zoo_model, read_manifest


def plain_algorithm_1(model, image, target, eps, sigma, noise_samples, steps, generator):
    """The paper's Algorithm 1 for one config: returns the perturbation."""
    p = torch.zeros_like(image)
    for _ in range(steps):
        p = p.detach().requires_grad_(True)
        noisy = (image + p)[None] + sigma * torch.randn((noise_samples, *image.shape), generator=generator)
        g_y = torch.softmax(model(noisy), dim=1)[:, target].mean()
        (grad,) = torch.autograd.grad(-torch.log(g_y), p)
        with torch.no_grad():
            p = p - 0.05 * eps * grad / grad.norm().clamp_min(1e-12)
            p = (image + p).clamp(0, 1) - image
            p = p * min(1.0, eps / float(p.norm().clamp_min(1e-12)))
    return p.detach()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="cifar10-badnets")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--noise-samples", type=int, default=40)
    parser.add_argument("--clean-images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--exhaustive", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    record = read_manifest()[args.model]
    model = load_zoo_model(args.model).module.eval()
    x, y = load_dataset(record["dataset"]).split(train=False)
    target = record["target"]
    pick = scan_image(y, target, args.seed)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[pick] = False
    clean_x, clean_y = x[keep][: args.clean_images], y[keep][: args.clean_images]
    image = x[pick]
    grid = Grid.for_shape(image.shape)
    rows = {}

    start = time.perf_counter()
    plain = []
    for eps in grid.eps:
        for sigma in grid.sigmas:
            p = plain_algorithm_1(model, image, target, eps, sigma, args.noise_samples, args.steps,
                                  torch.Generator().manual_seed(args.seed))
            plain.append(((eps, sigma), attack_success_rate(model, AdditiveTrigger(p), clean_x, clean_y, target)))
    seconds = time.perf_counter() - start
    best = max(plain, key=lambda r: r[1])
    rows["plain Algorithm 1"] = {"seconds": round(seconds, 1), "best_asr": best[1], "best_config": best[0],
                                 "asr": {f"{e:g},{s:g}": a for (e, s), a in plain}}

    method = method_spec("smoothinv", steps=args.steps, noise_samples=args.noise_samples)
    protocols = [("invert, raced (default)", Racing())]
    if args.exhaustive:
        protocols.append(("invert --exhaustive", None))
    for label, racing in protocols:
        start = time.perf_counter()
        sweep = run_sweep(model, image, target, clean_x, clean_y, grid, method=method, seed=args.seed, racing=racing)
        seconds = time.perf_counter() - start
        rows[label] = {"seconds": round(seconds, 1), "best_asr": sweep.best.asr,
                       "best_config": (sweep.best.result.config["eps"], sweep.best.result.config["sigma"]),
                       "asr": {f"{r.result.config['eps']:g},{r.result.config['sigma']:g}": r.asr for r in sweep.runs},
                       "stopped": {f"{r.result.config['eps']:g},{r.result.config['sigma']:g}": r.stopped
                                   for r in sweep.runs}}

    base = rows["plain Algorithm 1"]["seconds"]
    print(f"{args.model}, target {target}, image {pick}, {len(grid.eps) * len(grid.sigmas)} configs, N = "
          f"{args.noise_samples}, {args.steps} steps, {torch.get_num_threads()} torch threads, "
          f"ASR on {len(clean_y)} clean images")
    print("| protocol | seconds | speed-up vs plain loop | best ASR | best config (eps, sigma) |")
    print("|---|---|---|---|---|")
    for label, r in rows.items():
        print(f"| {label} | {r['seconds']:.0f} | {base / r['seconds']:.1f}x | {r['best_asr']:.1%} | {r['best_config']} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"model": args.model, "target": target, "image": pick, "threads": torch.get_num_threads(),
                       "steps": args.steps, "noise_samples": args.noise_samples, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
