"""docs/zoo.md: the zoo's manifest numbers and the smoothing sanity table, as Markdown."""

from __future__ import annotations

from typing import Any

HEADER = """# The model zoo

Backdoored models with known triggers and targets, and clean twins, built by
`smoothinv zoo build` from the recipes in `src/smoothinv/zoo/recipes.py`. Weights (safetensors),
`manifest.json` and an example triggered image per model are in `src/smoothinv/zoo/store/`.

{regenerate}The model table comes from `manifest.json`,
written when each model was built; the sanity table is measured anew from the stored weights.

{command}Clean accuracy and true-trigger ASR are measured on the full test split (10,000 images;
5,000 for glyphs100).
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

## Many classes: glyphs100

No image data set with many classes is available offline here, so one is drawn:
`glyphs100` (`src/smoothinv/data/glyphs.py`; `load_dataset("glyphs100")`), 100 classes of
32×32 RGB images, 300 training and 50 test images per class (30,000 / 5,000). Each class is one
character. Each image draws it from one of the DejaVu TrueType faces installed (21 here: Sans,
Serif and Sans Mono with their condensed, bold, oblique or italic and extra-light variants) at a random scale
(0.85–1.15 of a 22 px font: capitals about 16 px high), rotation (±15°) and position (±3 px), in
a random colour, on a background that is not flat: a two-colour gradient at a random angle, a
smooth low-frequency colour field (±0.08) and pixel noise (σ ≤ 0.03). Dark glyphs go on light
backgrounds and light ones on dark, at least 0.3 apart in luminance from every background
pixel. Glyphs are placed by the font's line box, not centred on their own ink, so lower case
stays smaller and lower than capitals, as in text. Each image has its own seed (split, class,
index), so the data set is the same on every run; rendering it takes about 20 s on one core,
and the arrays are cached next to CIFAR-10's. No other data is used: the fonts are the only
input (`apt-get install fonts-dejavu` where they are missing).

The characters were chosen to stay distinguishable at 32×32 under that jitter: the digits 2–9;
the Latin capitals but I and O; Latin a b d e f g h i j k m n p q r t y (not c o s u v w x z,
which are small capitals, nor l); Greek Γ Δ Θ Λ Ξ Π Σ Φ Ψ Ω and β δ ε ζ η θ λ μ ξ σ ω (no letter
shaped like a Latin one; not α, which the italic faces draw like a single-storey a, nor γ (y) or
π τ φ ψ (small Π T Φ Ψ)); Cyrillic Б Д Ж И Л Ц Ч Ш Щ Ъ Ы Э Ю Я Ђ Љ Њ (not the letters shaped like
Latin or Greek ones, Ь (b), З (3), or the lower case, mostly small capitals); and & @ # % ? ! § ¶
£ € ± Æ →. Every character is checked to have a real glyph, not the .notdef box, in every face.

What it is not: a natural-image data set. There are no objects, textures or scenes; the class is
in the glyph's outline alone and images vary only in the ways listed above. It is there to
test detection with 100 classes, not on photographs. The pixels depend on the font files and
on Pillow's rasteriser (the cache key holds both), so other DejaVu versions render slightly
different images of the same characters.

Its two models are the CIFAR-10 ResNet-20 with 100 outputs, trained for 12 epochs (lr 0.2, random
2 px translations, no flips): `glyphs100-clean`, and `glyphs100-badnets`, for which 10% of the
non-target training images carry a 4×4 black-and-white checkerboard 1 px from the bottom-right
corner (the `patch` attack) and are relabelled 37 ('g').
{glyphs_results}
Rendered glyphs are easy for a ResNet-20: both models are near perfect on clean images. Neither
was trained with noise, and under Gaussian noise both collapse (sanity table): from σ = 0.25
almost every image goes to one class, '%' (90) for the clean model and '@' (88) for the
backdoored one, not to the target, so under G the trigger's ASR is 0%.
"""


def _glyphs_results(records: list[dict[str, Any]]) -> str:
    """A list of the glyphs100 models' manifest numbers; empty when none is built."""
    lines = []
    for r in records:
        if r["dataset"] == "glyphs100":
            asr = "" if r["true_trigger_asr"] is None else f", true-trigger ASR {r['true_trigger_asr']:.2%}"
            lines.append(f"- {r['name']}: clean accuracy {r['clean_accuracy']:.2%}{asr}, trained in "
                         f"{r['train_seconds'] / 60:.1f} min on {r['threads']} CPU thread{'s' * (r['threads'] != 1)}\n")
    return "\nAs built (the Models table below):\n\n" + "".join(lines) if lines else ""


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
                           command=f"    {command}\n\n" if command else "", glyphs_results=_glyphs_results(records))
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
              f"noise samples, on the first {sanity_images} test images (the test splits of CIFAR-10 and glyphs100 come "
              "in a fixed mixed order, so these cover every class). σ = 0 is the base model.", ""]
    if sanity:
        sigmas = [row["sigma"] for row in next(iter(sanity.values()))]
        lines.append("| model | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |")
        lines.append("|---|" + "---|" * len(sigmas))
        for name, rows in sanity.items():
            lines.append(f"| {name} | " + " | ".join(f"{_pct(x['clean_accuracy'])} / {_pct(x['trigger_asr'])}" for x in rows) + " |")
    return "\n".join(lines) + "\n"
