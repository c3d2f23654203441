"""The fine-tuning recipe's learning rate and epochs, compared on one zoo model (docs/repair.md).

Scans the model once (default settings; the recovered triggers are cached in /tmp), then repairs it
with each METHOD:key=value... given (FineTuneRecipe fields) on N seeded training images and measures
clean accuracy and true-trigger ASR on the first 2,000 test images.

    python3 benchmarks/repair_recipe.py cifar10-badnets 1000 fine-tune:lr=0.01:epochs=20 unlearn:lr=0.01:epochs=20 \
        fine-tune:lr=0.003:epochs=20 unlearn:lr=0.003:epochs=20 fine-tune:lr=0.001:epochs=20 unlearn:lr=0.001:epochs=20 \
        nc-unlearn:lr=0.001:epochs=20 fine-pruning:lr=0.001:epochs=20 unlearn:lr=0.001:epochs=10
"""

from __future__ import annotations

import os
import sys
import tempfile

from smoothinv.bench.detect import zoo_subject
from smoothinv.data.clean_sets import choose_indices
from smoothinv.data.datasets import load_dataset
from smoothinv.detection.scan import ScanSettings, scan
from smoothinv.repair import FineTuneRecipe, Findings, Probe, build_repair, load_recovered, measure, save_recovered
from smoothinv.repair.findings import scan_result_findings
from smoothinv.zoo import load_zoo_model, read_manifest


def main() -> None:
    name, count, *specs = sys.argv[1:]
    record, zm = read_manifest()[name], load_zoo_model(name)
    dataset = load_dataset(record["dataset"])
    train_x, train_y = dataset.split(train=True)
    test_x, test_y = (t[:2000] for t in dataset.split(train=False))
    shape = tuple(test_x.shape[1:])
    cache = os.path.join(tempfile.gettempdir(), f"repair-recipe-{name}.safetensors")
    if not os.path.exists(cache):
        subject = zoo_subject(record, None, 500, 0)
        result = scan(subject.model, [subject.image], subject.clean_images, subject.clean_labels, subject.num_classes,
                      ScanSettings(seed=0))
        save_recovered(cache, list(scan_result_findings(result).recovered))
    recovered = load_recovered(cache, shape)
    findings = Findings(tuple(sorted({r.target for r in recovered})), tuple(recovered))
    keep = choose_indices(len(train_y), int(count), 0)
    sources = None if zm.attack.source_classes is None else tuple(zm.attack.source_classes)
    probe = Probe("true", zm.attack.trigger(shape), record["target"], sources)
    before = measure(zm.module, test_x, test_y, [probe])
    print(f"{name}: before: clean accuracy {before.clean_accuracy:.2%}, true-trigger ASR {before.asr['true']:.2%}")
    for spec in specs:
        method, *options = spec.split(":")
        values = dict(option.split("=") for option in options)
        recipe = FineTuneRecipe(**{k: float(v) if "." in v else int(v) for k, v in values.items()})
        repaired = build_repair(method, findings, recipe)(zm.module, train_x[keep], train_y[keep], seed=0)
        after = measure(repaired.model, test_x, test_y, [probe])
        print(f"{spec}: clean accuracy {after.clean_accuracy:.2%}, true-trigger ASR {after.asr['true']:.2%}, "
              f"{repaired.seconds:.0f} s")


if __name__ == "__main__":
    main()
