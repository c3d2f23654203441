"""The scan on tiny backdoored CLIPs trained in seconds on captioned digits (why a zero-shot CLIP
declares σ = 1 for the scan; docs/clip.md, Scan verdicts).

    OMP_NUM_THREADS=1 python3 benchmarks/clip_tiny_scan.py --tower resnet --out benchmarks/results/clip-tiny-scan-resnet.json
    OMP_NUM_THREADS=1 python3 benchmarks/clip_tiny_scan.py --tower vit --epochs 40 --size 16 --out benchmarks/results/clip-tiny-scan-vit.json

A CLIP with a ModifiedResNet (width 8, one block per stage, 32x32) or ViT (2 blocks of 64, 4x4
patches) image tower and a 1-block text tower, trained contrastively (ContrastiveSchedule(epochs,
128, 2e-3, 0.1)) on scikit-learn's digits minus 300 held-out images, captions from the zoo's
templates, 5% of the pairs carrying a 4x4 checkerboard one pixel in from the top-left corner and a
caption of "seven"; then scanned (default settings, σ given) from the first held-out image with
the other 299 for transfer, at each --sigma. The slow test tests/test_clip_zoo.py trains the
ResNet one the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from smoothinv.clip_zoo import CaptionBank
from smoothinv.clip_zoo.training import ContrastiveSchedule, Poisoning, train_clip
from smoothinv.data import load_digits_images
from smoothinv.detection import ScanSettings, scan
from smoothinv.engine.metrics import accuracy, attack_success_rate
from smoothinv.models import load_model
from smoothinv.models.clip import (CLIPModel, ClipConfig, ResNetConfig, TextConfig, VitConfig, save_zeroshot_classifier,
                                   zeroshot_classifier)
from smoothinv.triggers import MaskedTrigger

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TARGET = 7


def checkerboard(size: int) -> MaskedTrigger:
    mask = torch.zeros(1, size, size)
    mask[:, 1:5, 1:5] = 1
    pattern = (torch.arange(size).view(-1, 1) + torch.arange(size)).remainder(2).float().expand(3, size, size)
    return MaskedTrigger(mask, pattern)


def tiny_clip(tower: str, size: int) -> CLIPModel:
    torch.manual_seed(0)
    vision = (ResNetConfig(width=8, layers=(1, 1, 1, 1), image_size=size, embed_dim=32) if tower == "resnet"
              else VitConfig(width=64, layers=2, patch_size=4, image_size=size, embed_dim=32))
    return CLIPModel(ClipConfig(vision, TextConfig(width=64, layers=1, context_length=16, vocab_size=49408,
                                                   embed_dim=32)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tower", choices=("resnet", "vit"), default="resnet")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--sigma", type=float, action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    sigmas = args.sigma or [1.0, 0.25]
    torch.set_num_threads(1)
    x, y = load_digits_images(args.size)
    x = x.expand(-1, 3, -1, -1).contiguous()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[300:], order[:300]
    model = tiny_clip(args.tower, args.size)
    trigger = checkerboard(args.size)
    started = time.perf_counter()
    train_clip(model, x[train], y[train], CaptionBank.of(DIGITS, 16), ContrastiveSchedule(args.epochs, 128, 2e-3, 0.1),
               Poisoning.choose(trigger, TARGET, y[train], 0.05, seed=0), log=lambda _: None)
    trained = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "zs.safetensors"
        save_zeroshot_classifier(path, zeroshot_classifier(model, DIGITS, ["a photo of a {}."]), class_names=DIGITS)
        wrapped = load_model(path).module
    xt, yt = x[test], y[test]
    result = {"tower": args.tower, "size": args.size, "epochs": args.epochs, "train_seconds": round(trained, 1),
              "zeroshot_accuracy": round(accuracy(wrapped, xt, yt), 4),
              "backdoor_asr": round(attack_success_rate(wrapped, trigger, xt, yt, TARGET), 4), "target": TARGET,
              "scans": []}
    for sigma in sigmas:
        run = scan(wrapped, [xt[0]], xt[1:], yt[1:], 10, ScanSettings(seed=0, sigmas=(sigma,), model_sigmas=False))
        result["scans"].append({"sigma": sigma, "flagged": run.targets,
                                "scores": {c.label: round(float(c.score), 3) for c in run.classes},
                                "asr_by_eps": {c.label: [round(a, 4) for a in c.asr_by_eps] for c in run.classes}})
        print(f"{args.tower} sigma {sigma}: flagged {run.targets}", flush=True)
    result.update({"command": "OMP_NUM_THREADS=1 python3 " + " ".join(sys.argv), "threads": 1,
                   "torch": torch.__version__})
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
