"""A population's summary: summary.json, summary.csv and index.html (every model, sortable, each
linking to its own report), rewritten atomically after every stored result and at the end.

index.html needs no network: its CSS and the few lines of script that sort the table are inline.
When the truth of the models is known (a zoo), the summary also scores the run: verdict
accuracy, AUROC of the score and of the probability, and the probability's cross-entropy.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from .. import __version__
from ..reporting.outputs import write_json, write_text
from .calibration import auroc, brier, cross_entropy
from .runner import ROW_FIELDS

SUMMARY_FIELDS = (*ROW_FIELDS, "status", "truth", "backdoored", "true_target", "kind", "dataset", "timed_out",
                  "fallback", "report", "threads", "sha256")
MODELS_FOLDER = "models"


def metrics(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """How well the run's verdicts, scores and probabilities match the known truth (None if unknown)."""
    known = [r for r in rows if r["status"] == "done" and r.get("backdoored") is not None]
    if not known:
        return None
    pos = [r for r in known if r["backdoored"]]
    neg = [r for r in known if not r["backdoored"]]
    out: dict[str, Any] = {
        "models": len(known), "backdoored": len(pos),
        "verdict_accuracy": round(sum((r["verdict"] == "backdoored") == r["backdoored"] for r in known) / len(known), 4),
        "auroc_score": _round(auroc([r["score"] for r in pos], [r["score"] for r in neg])),
    }
    with_p = [r for r in known if r.get("trojan_probability") is not None]
    if with_p:
        p, y = [r["trojan_probability"] for r in with_p], [r["backdoored"] for r in with_p]
        out.update(auroc_probability=_round(auroc([q for q, t in zip(p, y) if t], [q for q, t in zip(p, y) if not t])),
                   cross_entropy=round(cross_entropy(p, y), 4), brier=round(brier(p, y), 4))
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


@dataclass
class PopulationSummary:
    """What the summary files say besides the rows: the command, the population, the job's
    settings, where it ran, and the calibration."""

    population: str
    settings: dict[str, Any]
    calibration: dict[str, Any] | None = None
    command: str = ""
    run: dict[str, Any] = field(default_factory=dict)

    def document(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        counts = {"models": len(rows), "done": sum(r["status"] == "done" for r in rows),
                  "errors": sum(r["status"] != "done" for r in rows),
                  "backdoored": sum(r["verdict"] == "backdoored" for r in rows),
                  "clean": sum(r["verdict"] == "clean" for r in rows)}
        return {"smoothinv_version": __version__, "command": self.command, "population": self.population,
                "settings": self.settings, "calibration": self.calibration, "run": self.run, "counts": counts,
                "metrics": metrics(rows), "rows": [{k: r.get(k) for k in SUMMARY_FIELDS} for r in rows]}

    def write(self, folder: Path, rows: Sequence[dict[str, Any]]) -> None:
        """summary.json, summary.csv and index.html in `folder`, each replaced atomically."""
        document = self.document(rows)
        write_json(folder / "summary.json", document)
        write_text(folder / "summary.csv", summary_csv(rows))
        write_text(folder / "index.html", render_index(document))


def summary_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(ROW_FIELDS)
    for r in rows:
        writer.writerow([r["model"], r["verdict"], " ".join(map(str, r["targets"] or [])), _cell(r["score"]),
                         _cell(r["trojan_probability"]), _cell(r["seconds"]), r["error"] or ""])
    return buffer.getvalue()


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}th{cursor:pointer;background:#f3f3f3}
th.sorted::after{content:' \\25BE'}th.sorted.up::after{content:' \\25B4'}tr.backdoored td{background:#fde8e8}
tr.error td{background:#fff6d6}td.num{text-align:right;font-variant-numeric:tabular-nums}small{color:#666}"""

_SCRIPT = """function sortBy(th){const table=th.closest('table'),body=table.tBodies[0],col=th.cellIndex;
const up=th.classList.contains('sorted')&&!th.classList.contains('up');
for(const h of table.tHead.rows[0].cells){h.classList.remove('sorted','up')}th.classList.add('sorted');if(up)th.classList.add('up');
const key=td=>{const v=td.dataset.sort;return v===undefined?td.textContent:v};
const rows=[...body.rows].sort((a,b)=>{const x=key(a.cells[col]),y=key(b.cells[col]),nx=parseFloat(x),ny=parseFloat(y);
const c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);return up?c:-c});for(const r of rows)body.appendChild(r)}"""


def render_index(document: dict[str, Any]) -> str:
    """index.html: one row per model, sorted by score (click a header to sort by it)."""
    rows = sorted(document["rows"], key=lambda r: -1.0 if r["score"] is None else r["score"], reverse=True)
    header = "".join(f"<th onclick=sortBy(this){' class=sorted' if name == 'score' else ''}>{name}</th>"
                     for name in ("model", "verdict", "targets", "score", "trojan probability", "truth", "seconds",
                                  "error"))
    body = "".join(_index_row(r) for r in rows)
    counts = document["counts"]
    calibration = document.get("calibration") or {}
    scored = document.get("metrics")
    lines = [f"{counts['models']} models: {counts['backdoored']} backdoored, {counts['clean']} clean, "
             f"{counts['errors']} errors."]
    if calibration:
        lines.append(f"Trojan probability: {html.escape(calibration.get('description', ''))}")
    if scored:
        lines.append("Against the known truth: " + html.escape(", ".join(f"{k} {v}" for k, v in scored.items())))
    notes = "".join(f"<p>{line}</p>" for line in lines)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>smoothinv scan-many</title>"
            f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
            f"<h1>Population scan</h1><p><small>{html.escape(document['population'])} &middot; "
            f"{html.escape(document['command'])}</small></p>{notes}"
            f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table></body></html>\n")


def _index_row(r: dict[str, Any]) -> str:
    name = html.escape(r["model"])
    link = (f'<a href="{MODELS_FOLDER}/{name}/{html.escape(r["report"])}">{name}</a>' if r.get("report") else name)
    score = "" if r["score"] is None else f"{r['score']:.2f}"
    p = r["trojan_probability"]
    return (f"<tr class={html.escape(r['verdict'] or 'error')}><td>{link}</td><td>{html.escape(r['verdict'] or '')}</td>"
            f"<td>{html.escape(' '.join(map(str, r['targets'] or [])))}</td>"
            f"<td class=num data-sort=\"{-1 if r['score'] is None else r['score']}\">{score}</td>"
            f"<td class=num>{'' if p is None else f'{p:.3f}'}</td><td>{html.escape(r.get('truth') or '')}</td>"
            f"<td class=num>{r['seconds']:.0f}</td><td>{html.escape(r['error'] or '')}</td></tr>")
