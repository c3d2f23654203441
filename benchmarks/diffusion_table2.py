"""Table 2 "SmoothInv w/ diffusion" beside "w/o", at a reduced protocol that fits two CPU cores,
with one side-by-side picture per model (docs/benchmarks.md, "SmoothInv w/ diffusion").

    OMP_NUM_THREADS=1 python benchmarks/diffusion_table2.py --model cifar10-trojai --model cifar10-htba \
        --out benchmarks/results/table2-diffusion-a.json --pictures docs/pictures/diffusion

For each backdoored zoo model: the same `--images` test images as `smoothinv bench table2`
(bench.table2.pick_images, seed 0) and the same held-out clean images (held_out); SmoothInv on the paper's
ε × σ grid scaled to the input, once without T and once with the shipped denoiser of the model's
dataset, at the same steps and N; the best config's ASR per image (the paper's protocol). The
picture shows, for the first image: the image, then w/o: perturbation and synthesised image,
then w/: perturbation and synthesised image. Results are written after every model; a rerun
skips the models already in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from smoothinv.bench.table2 import held_out, pick_images
from smoothinv.data.datasets import load_dataset
from smoothinv.data.images import save_image
from smoothinv.denoisers import resolve_denoiser, shipped_for
from smoothinv.files import atomic_write_text
from smoothinv.methods.registry import method_spec
from smoothinv.protocols.sweep import Grid, run_sweep
from smoothinv.reporting.pictures import amplify_perturbation, overview_row
from smoothinv.zoo import list_zoo, load_zoo_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="only these zoo models (default: every backdoored one)")
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--noise-samples", type=int, default=4)
    parser.add_argument("--clean-images", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--pictures", type=Path)
    args = parser.parse_args()
    done = json.loads(args.out.read_text()) if args.out.is_file() else {"rows": []}
    done["settings"] = {"images": args.images, "steps": args.steps, "noise_samples": args.noise_samples,
                        "clean_images": args.clean_images, "seed": 0}
    finished = {r["model"] for r in done["rows"]}
    for record in list_zoo():
        name = record["name"]
        if record["attack"] is None or name in finished or (args.model and name not in args.model):
            continue
        zm = load_zoo_model(name)
        x, y = load_dataset(record["dataset"]).split(train=False)
        target, sources = record["target"], record["source_classes"]
        picks = pick_images(y, target, sources, args.images, 0)
        x_clean, y_clean = held_out(x, y, picks, target, sources, args.clean_images)
        grid = Grid.for_shape(x.shape[1:])
        ref = resolve_denoiser(shipped_for(record["dataset"]))
        row = {"model": name, "attack": record["attack"]["attack"], "denoiser": ref.name, "images": picks}
        panels = [x[picks[0]]]
        for label, extra in (("without", {}), ("with", {"denoiser": ref})):
            spec = method_spec("smoothinv", steps=args.steps, noise_samples=args.noise_samples, **extra)
            start = time.perf_counter()
            best = []
            for n, i in enumerate(picks):
                sweep = run_sweep(zm.module, x[i], target, x_clean, y_clean, grid, method=spec, seed=0)
                best.append({"asr": round(sweep.best.asr, 4), "eps": sweep.best.result.config["eps"],
                             "sigma": sweep.best.result.config["sigma"],
                             "asr_by_config": [round(r.asr, 4) for r in sweep.runs]})
                if n == 0:
                    panels += [amplify_perturbation(sweep.best.result.perturbation), sweep.best.result.synthesized]
            seconds = time.perf_counter() - start
            row[label] = {"asr": round(sum(b["asr"] for b in best) / len(best), 4), "per_image": best,
                          "seconds_per_image": round(seconds / len(picks), 1),
                          "seconds_per_config": round(seconds / len(picks) / len(grid.eps) / len(grid.sigmas), 2)}
            print(f"{name} {label} diffusion: mean ASR {row[label]['asr']:.1%} "
                  f"({row[label]['seconds_per_image']:.0f}s/image)", flush=True)
        if args.pictures is not None:
            args.pictures.mkdir(parents=True, exist_ok=True)
            save_image(overview_row([p.detach().cpu().float() for p in panels]), args.pictures / f"{name}.png")
        done["rows"].append(row)
        atomic_write_text(args.out, json.dumps(done, indent=1) + "\n")


if __name__ == "__main__":
    main()
