"""docs/zoo.md: the zoo's manifest numbers and the smoothing sanity table, as Markdown."""

from __future__ import annotations

from typing import Any

HEADER = """# The model zoo

Backdoored models with known triggers and targets, and clean twins, built by
`smoothinv zoo build` from the recipes in `src/smoothinv/zoo/recipes.py`. Weights (safetensors),
`manifest.json` and an example triggered image per model are in `src/smoothinv/zoo/store/`.

{regenerate}The model table comes from `manifest.json`,
written when each model was built; the sanity table is measured anew from the stored weights.

{command}Clean accuracy and true-trigger ASR are measured on the full test split (10,000 images).
ASR counts non-target test images (for label-specific backdoors, only the source classes)
that the triggered image sends to the target. Training time is wall-clock on the
machine that built the model (`threads` CPU threads, bf16 autocast, channels_last).

For reference, the true-trigger ASR of the paper's own ImageNet models, as listed in the README
of github.com/locuslab/smoothinv: Blind-P 99.29%, Blind-S 79.73%, Blind-G 100%, TrojAI 100%,
HTBA 54.00%.

## Kinds of model

A kind is a (data set, architecture) pair. The scan's decision rule was first calibrated on two
kinds: the CIFAR-10 ResNet-20s (one recipe: 25 epochs, augmentation, weight decay 5e-4) and the
Fashion-MNIST small CNN. The other CIFAR-10 kinds test detection on models it was not tuned on,
built the way published small models differ: `plain_cnn` (the Keras tutorial's CNN, no
BatchNorm, dropout), `vgg_cifar_bn` (a narrow VGG with BatchNorm) and `preact_resnet18_w16`
(PreAct-ResNet-18 at a quarter width). Each has three clean models (other seeds, with and without
augmentation, label smoothing, stronger weight decay, longer or shorter training) and three
backdoors: `patch` triggers of several sizes, colours, positions and patterns (BadNets-style),
HTBA and Blend, with 5% or 10% poisoning. They are trained for 3–10 epochs, so their clean
accuracy (50–81%) is in the range of the published models users bring, not the ResNet-20s' 86%.
The recipe column gives epochs, peak learning rate, augmentation (aug: random crop and flip),
weight decay (wd) and label smoothing (ls).
"""


def _recipe(recipe: dict[str, Any]) -> str:
    parts = [f"{recipe['epochs']} ep", f"lr {recipe['lr']:g}", "aug" if recipe.get("augment", True) else "no aug",
             f"wd {recipe.get('weight_decay', 5e-4):g}"]
    if recipe.get("label_smoothing"):
        parts.append(f"ls {recipe['label_smoothing']:g}")
    return ", ".join(parts)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def zoo_markdown(records: list[dict[str, Any]], sanity: dict[str, list[dict[str, float]]],
                 missing: list[str], sanity_images: int, noise_samples: int, notes: dict[str, str] | None = None,
                 command: str | None = None) -> str:
    """The page; `command`, if given, is shown as the way to regenerate it."""
    header = HEADER.format(regenerate="Regenerate this page with the command below. " if command else "",
                           command=f"    {command}\n\n" if command else "")
    lines = [header, "## Models", "",
             "| model | data | arch | recipe | attack | planted by | target | sources | poison rate | clean acc | true-trigger ASR | train time | sha256 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        attack = "clean" if r["attack"] is None else r["attack"]["attack"]
        lines.append(
            f"| {r['name']} | {r['dataset']} | {r['arch']} | {_recipe(r['recipe'])} | {attack} | {r['mode'] or '–'} | "
            f"{'–' if r['target'] is None else r['target']} | {','.join(map(str, r['source_classes'] or [])) or '–'} | "
            f"{'–' if r['poison_rate'] is None else r['poison_rate']} | {_pct(r['clean_accuracy'])} | "
            f"{_pct(r['true_trigger_asr'])} | {r['train_seconds'] / 60:.1f} min ({r['threads']} thr) | `{r['sha256'][:12]}` |"
        )
    if notes:
        lines += ["", "Notes:", ""] + [f"- {name}: {text}" for name, text in notes.items()]
    if missing:
        lines += ["", f"Not built yet: {', '.join(missing)}. `smoothinv zoo build` resumes where it stopped."]
    lines += ["", "## Sanity table (paper Table 5)", "",
              f"Clean accuracy / true-trigger ASR of the smoothed classifier argmax G(x), G with N = {noise_samples} "
              f"noise samples, on the first {sanity_images} test images (CIFAR-10's test split comes in a fixed mixed "
              "order, so these cover every class). σ = 0 is the base model.", ""]
    if sanity:
        sigmas = [row["sigma"] for row in next(iter(sanity.values()))]
        lines.append("| model | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |")
        lines.append("|---|" + "---|" * len(sigmas))
        for name, rows in sanity.items():
            lines.append(f"| {name} | " + " | ".join(f"{_pct(x['clean_accuracy'])} / {_pct(x['trigger_asr'])}" for x in rows) + " |")
    return "\n".join(lines) + "\n"
