"""The markdown tables of docs/benchmarks.md, "SmoothInv w/ diffusion", from the result files the
other diffusion_* scripts and `smoothinv bench detect` wrote (nothing is recomputed):

    python benchmarks/diffusion_report.py
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
PAPER_TABLE5 = {  # ../shared/paper-numbers.md, Table 5: (clean accuracy, backdoor ASR) per σ 0, .12, .25, .5, 1
    "TrojAI": (("100%", "100%", "80%", "20%", "0%"), ("100%", "100%", "100%", "100%", "100%"),
               ("100%", "100%", "40%", "40%", "20%"), ("100%", "100%", "100%", "60%", "40%")),
    "HTBA": (("95%", "2%", "0%", "0%", "0%"), ("95%", "90%", "92%", "98%", "96%"),
             ("54%", "70%", "100%", "100%", "100%"), ("54%", "64%", "58%", "64%", "48%")),
    "Blind-P": (("69.26%", "33.40%", "2.80%", "0.00%", "0.00%"), ("69.26%", "66.10%", "63.10%", "57.70%", "47.10%"),
                ("99.29%", "99.80%", "94.90%", "40.10%", "4.70%"), ("99.29%", "99.40%", "87.70%", "1.70%", "0.10%")),
    "Blind-S": (("68.06%", "29.90%", "2.30%", "0.10%", "0.10%"), ("68.06%", "65.60%", "62.30%", "56.70%", "47.80%"),
                ("79.73%", "89.60%", "88.40%", "81.70%", "97.00%"), ("79.73%", "59.20%", "21.50%", "4.00%", "0.00%")),
}


def load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def psnr() -> None:
    print("| denoiser | σ | t* | noisy input | noisy, clipped | denoised | gain over clipped |")
    print("|---|---|---|---|---|---|---|")
    for dataset in ("cifar10", "fashion-mnist"):
        data = load(f"denoiser-psnr-{dataset}.json")
        if data is None:
            continue
        for r in data["rows"]:
            print(f"| {data['denoiser']['name']} | {r['sigma']:g} | {r['timestep']} | {r['psnr_noisy']:.1f} dB | "
                  f"{r['psnr_clipped']:.1f} dB | {r['psnr_denoised']:.1f} dB | +{r['psnr_denoised'] - r['psnr_clipped']:.1f} dB |")
    print()


def table5() -> None:
    for dataset in ("fashion-mnist", "cifar10"):
        data = load(f"table5-diffusion-{dataset}.json")
        if data is None:
            continue
        s = data["settings"]
        print(f"**{dataset}** ({s['images']} test images, N = {s['noise_samples']}; each cell w/o → w/):\n")
        sigmas = [f"{v:g}" for v in s["sigmas"]]
        print("| model | attack | " + " | ".join(f"acc σ={v}" for v in sigmas) + " | " +
              " | ".join(f"ASR σ={v}" for v in sigmas[1:]) + " |")
        print("|---|---|" + "---|" * (2 * len(sigmas) - 1))
        for row in data["rows"]:
            acc = [f"{pct(a['clean_accuracy'])} → {pct(b['clean_accuracy'])}" if a["sigma"] > 0 else pct(a["clean_accuracy"])
                   for a, b in zip(row["without"], row["with"])]
            asr = [f"{pct(a['trigger_asr'])} → {pct(b['trigger_asr'])}" for a, b in zip(row["without"], row["with"])
                   if a["sigma"] > 0]
            print(f"| {row['model']} | {row['attack'] or 'clean'} | " + " | ".join(acc) + " | " + " | ".join(asr) + " |")
        means = []
        for key in ("without", "with"):
            means.append([sum(r[key][i]["clean_accuracy"] for r in data["rows"]) / len(data["rows"])
                          for i in range(len(sigmas))])
        print("| **mean** | | " + " | ".join(f"{pct(a)} → {pct(b)}" if i else pct(a)
                                          for i, (a, b) in enumerate(zip(*means))) + " |" + " |" * (len(sigmas) - 1))
        print()
    print("The paper's Table 5 (ImageNet-scale models; σ = 0, 0.12, 0.25, 0.5, 1; w/o → w/):\n")
    print("| model | clean accuracy | backdoor ASR |")
    print("|---|---|---|")
    for model, (acc_wo, acc_w, asr_wo, asr_w) in PAPER_TABLE5.items():
        acc = ", ".join(f"{a} → {b}" for a, b in zip(acc_wo[1:], acc_w[1:]))
        asr = ", ".join(f"{a} → {b}" for a, b in zip(asr_wo[1:], asr_w[1:]))
        print(f"| {model} | {acc_wo[0]}; {acc} | {asr_wo[0]}; {asr} |")
    print()


def table2() -> None:
    rows = []
    for name in ("table2-diffusion-fmnist.json", "table2-diffusion-cifar10-a.json", "table2-diffusion-cifar10-b.json"):
        data = load(name)
        if data is not None:
            rows += data["rows"]
            settings = data["settings"]
    if not rows:
        return
    print(f"(N = {settings['noise_samples']}, {settings['steps']} steps, {settings['clean_images']} held-out clean "
          "images; the same images and settings for both columns)\n")
    print("| model | attack | images | w/o diffusion | w/ diffusion | best σ w/o → w/ | s/config w/o | s/config w/ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sig = lambda v: ",".join(f"{b['sigma']:g}" for b in r[v]["per_image"])  # noqa: E731
        print(f"| {r['model']} | {r['attack']} | {len(r['images'])} | {r['without']['asr']:.1%} | {r['with']['asr']:.1%} | "
              f"{sig('without')} → {sig('with')} | {r['without']['seconds_per_config']:.1f} | "
              f"{r['with']['seconds_per_config']:.1f} |")
    mean = lambda v: sum(r[v]["asr"] for r in rows) / len(rows)  # noqa: E731
    print(f"| **mean** | | | **{mean('without'):.1%}** | **{mean('with'):.1%}** | | | |")
    print()


def detection() -> None:
    print("| models | T | verdicts right | AUROC | targets found | false alarms | s/model |")
    print("|---|---|---|---|---|---|---|")
    for label, stem in (("Fashion-MNIST (7)", "fmnist"), ("CIFAR-10 subset", "cifar10")):
        for variant, name in (("none", f"detect-{stem}-reduced.json"), ("denoiser", f"detect-{stem}-diffusion.json")):
            data = load(name)
            if data is None:
                continue
            s = data["summary"]
            correct = round(s["verdict_accuracy"] * s["models"])
            print(f"| {label} | {variant} | {correct}/{s['models']} | {s['auroc']:.3f} | "
                  f"{s['target_identification']:.0%} | {s['false_alarms']} | {s['seconds_per_model']:.0f} |")
    print()
    for stem in ("fmnist", "cifar10"):
        pair = [load(f"detect-{stem}-reduced.json"), load(f"detect-{stem}-diffusion.json")]
        if None in pair:
            continue
        print("| model | truth | w/o: verdict (flagged) score | w/: verdict (flagged) score |")
        print("|---|---|---|---|")
        with_rows = {r["model"]: r for r in pair[1]["rows"]}
        for r in pair[0]["rows"]:
            w = with_rows.get(r["model"])
            truth = f"target {r['true_target']}" if r["backdoored"] else "clean"
            cell = lambda x: f"{x['verdict']} {x['flagged']} {x['score']:.2f}"  # noqa: E731
            print(f"| {r['model']} | {truth} | {cell(r)} | {cell(w) if w else '–'} |")
        print()


if __name__ == "__main__":
    print("### PSNR\n")
    psnr()
    print("### Table 5\n")
    table5()
    print("### Table 2\n")
    table2()
    print("### Detection\n")
    detection()
