"""What `smoothinv scan` writes: scan.json, pictures of the flagged classes, report.html.

report.html needs no network: CSS and the bar chart (SVG) are inline, and its images are
files in the same output directory.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import Tensor

from ..data.images import save_image
from ..detection.decision import DecisionRule
from ..detection.scan import ScanResult
from ..errors import param
from ..repair.findings import class_triggers
from ..repair.recovered import TRIGGERS_FILE, save_recovered
from .outputs import write_json
from .pictures import save_inversion_pictures


def scan_record(result: ScanResult, context: dict[str, Any], class_names: Sequence[str] | None) -> dict[str, Any]:
    """The JSON document: verdict, targets, per-class ASR per config and score, settings, timings."""
    rule: DecisionRule = result.settings.rule

    def name(c: int) -> str | None:
        return class_names[c] if class_names and c < len(class_names) else None

    classes = []
    for cr in result.classes:
        evidence = cr.evidence
        classes.append({
            "class": cr.label,
            "name": name(cr.label),
            "image_index": cr.image_index,
            "score": cr.score,
            "flagged": cr.flagged,
            "asr_by_eps": cr.asr_by_eps,
            "z_by_eps": cr.z_by_eps,
            "max_asr": round(max(r.asr for r in cr.runs), 6),
            "evidence": {"asr": round(evidence.asr, 6), "config": evidence.result.config,
                         "final_target_prob": round(float(evidence.result.target_prob[-1]), 6),
                         "perturbation_l2": round(float(evidence.result.perturbation.norm()), 6),
                         "asr_by_source": {str(k): round(v, 6) for k, v in evidence.asr_by_source.items()}},
            "runs": [{"config": r.config, "asr": round(r.asr, 6), "initial_target_prob": round(r.initial_target_prob, 6),
                      "final_target_prob": round(r.final_target_prob, 6), "steps_run": r.steps_run,
                      "concentration": round(r.concentration, 6)}
                     for r in cr.runs],
        })
    settings = result.settings
    denoiser = settings.method.build().denoiser_for()
    return {
        **context,
        "denoiser": None if denoiser is None else _describe_denoiser(denoiser, result),
        "verdict": result.verdict,
        "targets": result.targets,
        "target_names": [name(c) for c in result.targets],
        "rule": result.rule or rule.describe(),
        "warnings": _warnings(result, name),
        "noise_sink": None if result.noise_sink is None else result.noise_sink.to_dict(),
        "settings": {"method": settings.method.name, "method_config": {k: v for k, v in settings.method.config.to_dict().items()
                                                        if k not in settings.method.build().grid_axes},
                     "eps": list(result.eps), "sigmas": list(result.sigmas),
                     "stop_prob": settings.stop_prob, "time_budget_s": settings.time_budget, "seed": settings.seed,
                     "threshold": rule.threshold, "min_asr": rule.min_asr, "spread_floor": rule.spread_floor,
                     "class_screen": None if settings.screen is None else asdict(settings.screen),
                     "precision": settings.precision, "descent_precision": result.precision},
        "image_predictions": result.image_predictions,
        "skipped_classes": {str(c): why for c, why in result.skipped.items()},
        "timed_out": result.timed_out,
        "fallback_from": result.fallback_from,
        "screen": None if result.screen is None else result.screen.to_dict(),
        "timings": result.seconds,
        "classes": classes,
    }


def _describe_denoiser(denoiser: Any, result: ScanResult) -> Any:
    """The denoiser's record (name, weights hash, t* per σ of the scan), or its name."""
    sigmas = sorted({*result.sigmas, *(result.fallback_from or {}).get("sigmas", [])})
    describe = getattr(denoiser, "describe", None)
    return describe(sigmas) if callable(describe) else getattr(denoiser, "name", type(denoiser).__name__)


def write_scan(out_dir: str | Path, result: ScanResult, record: dict[str, Any], images: Sequence[Tensor]) -> None:
    """Pictures for each flagged class (or the top-scoring one), scan.json and report.html."""
    out_dir = Path(out_dir)
    for i, image in enumerate(images):
        save_image(image, out_dir / f"image-{i}.png")
    shown = [cr for cr in result.classes if cr.flagged] or [max(result.classes, key=lambda cr: cr.score)]
    pictures = {}
    triggers = {}
    for cr in shown:
        evidence = cr.evidence.result
        folder = out_dir / f"class-{cr.label}"
        folder.mkdir()
        files = save_inversion_pictures(folder, evidence.image, evidence.synthesized)
        pictures[cr.label] = {k: f"class-{cr.label}/{v}" for k, v in files.items()}
        if cr.flagged:
            save_recovered(folder / TRIGGERS_FILE, class_triggers(cr))
            triggers[str(cr.label)] = f"class-{cr.label}/{TRIGGERS_FILE}"
    record = {**record, "pictures": {str(c): files for c, files in pictures.items()},
              "files": {"report": "report.html", "scan": "scan.json", "images": [f"image-{i}.png" for i in range(len(images))],
                        "triggers": triggers}}
    write_json(out_dir / "scan.json", record)
    (out_dir / "report.html").write_text(render_html(record, pictures))


def _bar_chart(classes: list[dict[str, Any]]) -> str:
    """Inline SVG: the transfer ASR of each class's evidence, flagged classes in red."""
    width, bar, gap, height = 40 + len(classes) * 46, 34, 12, 220
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 40}" role="img" '
             'aria-label="transfer ASR of each class evidence">',
             f'<line x1="30" y1="{height}" x2="{width}" y2="{height}" stroke="#444"/>']
    for tick in (0, 0.5, 1.0):
        y = height - tick * (height - 20)
        parts.append(f'<text x="2" y="{y + 4:.0f}" font-size="10">{tick:.0%}</text>'
                     f'<line x1="28" y1="{y:.0f}" x2="{width}" y2="{y:.0f}" stroke="#ddd"/>')
    for i, c in enumerate(classes):
        asr = c["evidence"]["asr"]
        h = asr * (height - 20)
        x = 34 + i * (bar + gap)
        color = "#c62828" if c["flagged"] else "#78909c"
        label = html.escape(str(c["name"] or c["class"]))[:8]
        parts.append(f'<rect x="{x}" y="{height - h:.1f}" width="{bar}" height="{h:.1f}" fill="{color}">'
                     f'<title>class {c["class"]}: ASR {asr:.1%}, score {c["score"]}</title></rect>'
                     f'<text x="{x + bar / 2}" y="{height - h - 4:.1f}" font-size="10" text-anchor="middle">{asr:.0%}</text>'
                     f'<text x="{x + bar / 2}" y="{height + 14}" font-size="11" text-anchor="middle">{label}</text>'
                     f'<text x="{x + bar / 2}" y="{height + 28}" font-size="9" fill="#666" text-anchor="middle">z {c["score"]:.1f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _top_sources(by_source: dict[str, float], k: int = 3) -> str:
    """'6: 98%, 7: 95%, 8: 91%': the k source classes a perturbation flips most."""
    top = sorted(by_source.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{s}: {v:.0%}" for s, v in top)


def render_html(record: dict[str, Any], pictures: dict[int, dict[str, str]]) -> str:
    verdict = record["verdict"]
    targets = ", ".join(f"{c} ({n})" if n else str(c) for c, n in zip(record["targets"], record["target_names"])) or "none"
    rows = "".join(
        f"<tr{' class=flag' if c['flagged'] else ''}><td>{c['class']}</td><td>{html.escape(str(c['name'] or ''))}</td>"
        f"<td>{c['evidence']['asr']:.1%}</td><td>{c['score']:.2f}</td>"
        f"<td>{' / '.join(f'{a:.0%}' for a in c['asr_by_eps'])}</td>"
        f"<td>eps {c['evidence']['config'].get('eps', '–')}, sigma {c['evidence']['config'].get('sigma', '–')}</td>"
        f"<td>{html.escape(_top_sources(c['evidence']['asr_by_source']))}</td></tr>"
        for c in record["classes"])
    figures = "".join(
        f"<figure><img src=\"{html.escape(files['overview'])}\" alt=\"class {c} trigger\"><figcaption>class {c}: "
        "clean | synthesised | amplified perturbation | zoom</figcaption></figure>"
        for c, files in pictures.items())
    images = "".join(f'<img class=small src="{html.escape(f)}" alt="scan image">' for f in record["files"]["images"])
    settings = html.escape(", ".join(f"{k}={v}" for k, v in record["settings"].items()))
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in record["warnings"])
    skipped = "".join(f"<li>class {c}: {html.escape(why)}</li>" for c, why in record["skipped_classes"].items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smoothinv scan: {verdict}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }}
.verdict {{ font-size: 1.6em; padding: .4em .8em; border-radius: 6px; display: inline-block;
  background: {'#ffebee' if verdict == 'backdoored' else '#e8f5e9'}; color: {'#b71c1c' if verdict == 'backdoored' else '#1b5e20'}; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: .25em .6em; text-align: right; }}
tr.flag {{ background: #ffebee; font-weight: bold; }} img {{ image-rendering: pixelated; }}
ul.warn {{ color: #8a4b00; }} img.small {{ height: 96px; margin-right: .5em; }} figure {{ margin: 1em 0; }} code {{ background: #f4f4f4; }}
</style></head><body>
<h1>Backdoor scan</h1>
<p class=verdict>{verdict}: target class(es) {html.escape(targets)}</p>
{f'<ul class=warn>{warnings}</ul>' if warnings else ''}
<p>Model <code>{html.escape(str(record.get('model', {}).get('path', '')))}</code>, method <b>{html.escape(record['settings']['method'])}</b>,
{len(record['classes'])} classes scanned in {record['timings']['total_s']:.0f} s{' (time budget reached: partial)' if record['timed_out'] else ''}.</p>
<h2>Clean image(s)</h2><p>{images}</p>
<h2>Transfer ASR per class, at the eps each score came from</h2>{_bar_chart(record['classes'])}
<h2>Recovered triggers</h2>{figures}
<h2>Per class</h2>
<table><tr><th>class</th><th>name</th><th>ASR</th><th>score</th><th>ASR at each eps</th><th>evidence config</th><th>sources it flips most</th></tr>{rows}</table>
{f'<p>Skipped:</p><ul>{skipped}</ul>' if skipped else ''}
<h2>Decision rule</h2><p>{html.escape(record['rule'])}</p>
{_noise_sink(record['noise_sink'])}
<h2>Parameters</h2><p><code>{settings}</code></p>
<p>Machine-readable results: <a href="scan.json">scan.json</a>.</p>
</body></html>
"""


MIN_CLASSES = 3
"""Fewer evaluated classes than this make the robust z-score meaningless (decision.robust_z)."""


def _warnings(result: ScanResult, name: Callable[[int], str | None]) -> list[str]:
    """Caveats an auditor should read next to the verdict."""
    notes = []
    if len(result.classes) < MIN_CLASSES:
        notes.append(f"only {len(result.classes)} class(es) were evaluated: the verdict compares each class with the "
                     f"median of the others, so with fewer than {MIN_CLASSES} no class can stand out; scan more classes")
    if result.fallback_from:
        first = result.fallback_from
        notes.append(f"at sigma {', '.join(f'{s:g}' for s in first['sigmas'])} no class's perturbation flipped "
                     f"{result.settings.pinned_asr:.0%} of the clean images (highest {first['max_asr']:.1%}): noise pins "
                     f"the smoothed model to one class there, so this result comes from sigma "
                     f"{', '.join(f'{s:g}' for s in result.sigmas)}")
    if result.screen is not None and result.screen.left_out:
        screen = result.screen
        notes.append(f"the class screen ran the full grid on {len(screen.full)} of {len(screen.classes)} classes; the "
                     f"other {len(screen.left_out)} scored below {screen.screen.threshold:g} in its quick pass even at "
                     f"the upper bounds of their transfer; rerun with {param('exhaustive')} to run every class on the full grid")
    if result.noise_sink is None:
        return notes
    sinks = result.noise_sink.sink_classes
    return notes + [f"class {c}{f' ({name(c)})' if name(c) else ''} is also where the smoothed model sends most noisy clean "
            "images (see Noise sink); every model reaches its noise sink easily, so compare with a clean model "
            "of the same kind before concluding" for c in result.targets if c in sinks]


def _noise_sink(sink: dict[str, Any] | None) -> str:
    """The noise-sink probe as a table."""
    if not sink:
        return ""
    rows = "".join(
        f"<tr><td>{p['sigma']:g}</td><td>{p['sink_class']}</td><td>{p['share']:.0%}</td>"
        f"<td>{'collapsed' if p['collapsed'] else ''}</td></tr>" for p in sink["probes"])
    return (f"<h2>Noise sink</h2><p>Where G sends noisy clean images. {html.escape(sink['rule'])} "
            f"(limit {sink['limit']:.0%} here).</p>"
            f"<table><tr><th>sigma</th><th>most common class under G</th><th>share of clean images</th><th></th></tr>{rows}</table>")
