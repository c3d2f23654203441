"""What `smoothinv repair` writes beside the repaired model: repair.json and report.html.

report.html needs no network: the CSS is inline and there are no pictures, only the numbers
before and after on the held-out images.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from ..repair import REPAIRS, RepairResult
from .outputs import write_json, write_text

MODEL_FILE = "model.safetensors"


def repair_record(result: RepairResult, context: dict[str, Any]) -> dict[str, Any]:
    """repair.json: the command's context, the method and its details, the split, before and after."""
    record = {**context, **result.record(), "files": {"model": MODEL_FILE, "report": "report.html",
                                                      "record": "repair.json"}}
    record["warnings"] = _warnings(result)
    return record


def _warnings(result: RepairResult) -> list[str]:
    notes = []
    drop = result.before.clean_accuracy - result.after.clean_accuracy
    if drop > 0.02:
        notes.append(f"clean accuracy fell by {drop:.1%} on the held-out images")
    still = {k: v for k, v in result.after.asr.items() if v >= 0.1}
    if still:
        worst = max(still, key=still.__getitem__)
        notes.append(f"{len(still)} trigger(s) still flip 10% or more of the held-out images (worst: {worst}, "
                     f"{still[worst]:.1%})")
    if len(result.split.evaluate) < 200:
        notes.append(f"only {len(result.split.evaluate)} held-out images measured the repair: the numbers are "
                     "rough; give a larger clean set")
    if result.findings.recovered and REPAIRS.get(result.repaired.method).trains_on_recovered:
        notes.append("the recovered triggers were used in the repair itself, so their ASR after it is no proof the "
                     "backdoor is gone: scan the repaired model again")
    return notes


def write_repair(out_dir: str | Path, record: dict[str, Any]) -> None:
    out_dir = Path(out_dir)
    write_json(out_dir / "repair.json", record)
    write_text(out_dir / "report.html", render_html(record))


def render_html(record: dict[str, Any]) -> str:
    e = html.escape
    before, after = record["before"], record["after"]
    rows = [f"<tr><td>clean accuracy</td><td>{before['clean_accuracy']:.1%}</td><td>{after['clean_accuracy']:.1%}</td></tr>"]
    for name, value in before["asr"].items():
        later = after["asr"].get(name)
        rows.append(f"<tr><td>ASR of {e(name)}</td><td>{value:.1%}</td>"
                    f"<td>{'–' if later is None else f'{later:.1%}'}</td></tr>")
    split = record["split"]
    warnings = "".join(f"<li>{e(w)}</li>" for w in record["warnings"])
    details = e(", ".join(f"{k}: {v}" for k, v in record["details"].items() if k != "recipe"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smoothinv repair</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Repair: {e(record['method'])}</h1>
<p>Model <code>{e(str(record.get('model', {}).get('path', '')))}</code>, target class(es)
{e(', '.join(map(str, record['targets'])))}. Fine-tuned on {split['tune']} clean images, measured on
{split['evaluate']} held-out images (split seed {split['seed']}), in {record['seconds']:.0f} s.</p>
<table><tr><th></th><th>before</th><th>after</th></tr>{''.join(rows)}</table>
<h2>Notes</h2><ul>{warnings}</ul>
<p>Method details: {details}</p>
<p>The repaired model is <code>{MODEL_FILE}</code>; it loads wherever the original did.</p>
</body></html>
"""
