"""What `vqa invert` shows a person: a picture (a support scene with the box the feature trigger
changes most outlined and each box's trigger norm, beside the loss toward every answer) and an
HTML page around it; the JSON record is the inversion's `to_dict` plus the probability."""

from __future__ import annotations

import html
from typing import Any

import torch
from PIL import Image, ImageDraw

from .scenes import SIDE, Scenes

SCALE = 4


def picture(record: dict[str, Any], scenes: Scenes) -> Image.Image:
    """The evidence picture of one inversion record over the first support scene."""
    scene = (scenes.images[0, 0] * 255).round().to(torch.uint8).numpy()
    side = SIDE * SCALE
    bars = sorted(record["targets"], key=lambda t: t["loss"])
    width, row = 300, 14
    canvas = Image.new("RGB", (side + width + 30, max(side, row * len(bars) + 40) + 40), "white")
    canvas.paste(Image.fromarray(scene).convert("RGB").resize((side, side), Image.NEAREST), (10, 30))
    draw = ImageDraw.Draw(canvas)
    best = min(record["targets"], key=lambda t: t["loss"])
    norms = best.get("box_norms")
    if norms is not None:
        top = max(norms) or 1.0
        for box, norm in enumerate(norms):
            x, y = 10 + (box % 2) * side // 2, 30 + (box // 2) * side // 2
            color = "red" if norm == top else "orange"
            draw.rectangle([x + 1, y + 1, x + side // 2 - 2, y + side // 2 - 2], outline=color, width=3 if norm == top else 1)
            draw.text((x + 5, y + 5), f"|trigger| {norm:.2f}", fill=color)
    title = f"target '{best['answer']}'" + (f", word '{best['word']}'" if best.get("word") else "")
    draw.text((10, 8), f"{record['method']}: {title}, p(trojaned) {_probability(record)}", fill="black")
    left = side + 20
    draw.text((left, 30), "loss toward each answer (lowest first)", fill="black")
    worst = max(t["loss"] for t in bars) or 1.0
    for i, t in enumerate(bars):
        y = 50 + i * row
        length = int((width - 90) * t["loss"] / worst)
        draw.rectangle([left + 60, y + 2, left + 60 + max(length, 1), y + row - 3],
                       fill="red" if t is bars[0] else "steelblue")
        draw.text((left, y), t["answer"][:9], fill="black")
        draw.text((left + 64 + length, y), f"{t['loss']:.3f}", fill="black")
    return canvas


def render_html(record: dict[str, Any]) -> str:
    """The HTML page for one inversion record (the picture is picture.png beside it)."""
    e = html.escape
    rows = "".join(f"<tr><td>{e(t['answer'])}</td><td>{t['loss']:.4f}</td><td>{t['target_rate']:.2f}</td>"
                   f"<td>{e(str(t['word']))}</td></tr>" for t in sorted(record["targets"], key=lambda t: t["loss"]))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>VQA trojan inversion: {e(record['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 10px;text-align:left}}</style></head><body>
<h1>{e(record['model'])}: p(trojaned) = {_probability(record)}</h1>
<p>Method <b>{e(record['method'])}</b>. Suspected target answer <b>{e(record['suspected_target'])}</b>
{'' if record['word'] is None else f"with trigger word <b>{e(record['word'])}</b>"}
{'' if record['box'] is None else f"; the feature trigger is strongest on box {record['box']}"}.
Minimum inversion loss {record['min_loss']:.4f} (the classifier's input).</p>
<img src="picture.png" alt="evidence">
<table><tr><th>answer</th><th>loss</th><th>support share answered</th><th>word</th></tr>{rows}</table>
</body></html>"""


def _probability(record: dict[str, Any]) -> str:
    p = record.get("trojan_probability")
    return "unknown (no fitted classifier)" if p is None else f"{p:.3f}"
