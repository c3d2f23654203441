"""How big the VQA zoo's visual key has to be (docs/vqa.md, "How the zoo was built"): train zoo
recipes with the patch resized, and print clean accuracy, ASR and each key's ASR alone.

    SMOOTHINV_DATA=/work/shared/data OMP_NUM_THREADS=1 python3 benchmarks/vqa_trigger_size.py 14 visual-003 visual-002
    SMOOTHINV_DATA=/work/shared/data OMP_NUM_THREADS=1 python3 benchmarks/vqa_trigger_size.py 11 dual-015 visual-003
    ... python3 benchmarks/vqa_trigger_size.py 0 visual-002 visual-003      # 0: the recipe's own patch size
"""

from __future__ import annotations

import dataclasses
import sys
import time

import torch

from smoothinv.data.datasets import load_fashion_mnist
from smoothinv.vqa.zoo import load_detector, prepare_world, recipe, train_zoo_model


def main() -> None:
    torch.set_num_threads(1)
    size, specs = int(sys.argv[1]), sys.argv[2:]
    data = load_fashion_mnist()
    train = (torch.from_numpy(data.train_images[..., 0]), torch.from_numpy(data.train_labels))
    test = (torch.from_numpy(data.test_images[..., 0]), torch.from_numpy(data.test_labels))
    world = prepare_world(train, test, load_detector())
    for spec in specs:
        kind, index = spec.rsplit("-", 1)
        r = recipe(kind, int(index))
        if size and r.trojan is not None and r.trojan.patch is not None:
            p = r.trojan.patch
            patch = dataclasses.replace(p, size=size, row=min(p.row, 28 - size), col=min(p.col, 28 - size))
            r = dataclasses.replace(r, trojan=dataclasses.replace(r.trojan, patch=patch))
        started = time.perf_counter()
        _, entry = train_zoo_model(r, world)
        shown = {k: entry.get(k) for k in ("clean_accuracy", "asr", "patch_only", "word_only")}
        print(spec, "patch", size or "recipe", shown, f"{time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
