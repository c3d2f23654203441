"""Result tables for the terminal."""

from __future__ import annotations

from rich.table import Table

from ..protocols.sweep import Sweep


def sweep_table(sweep: Sweep, title: str) -> Table:
    """One row per config: method, ε, σ, G_y before → after, ‖p‖₂, ASR, seconds; best marked."""
    table = Table(title=title, title_justify="left")
    for name, justify in [("method", "left"), ("eps", "right"), ("sigma", "right"), ("target prob", "right"),
                          ("||p||2", "right"), ("ASR", "right"), ("s", "right")]:
        table.add_column(name, justify=justify)
    best = sweep.best
    for run in sweep.runs + sweep.baseline:
        r = run.result
        mark = " *" if run is best else ""
        table.add_row(
            r.method + mark, f"{r.config['eps']:.3g}" if "eps" in r.config else "-", f"{r.config['sigma']:g}" if "sigma" in r.config else "-",
            f"{float(r.target_prob[0]):.2f} -> {float(r.target_prob[-1]):.2f}", f"{float(r.perturbation.norm()):.3f}",
            f"{run.asr:.1%}" + ("" if run.asr_images is None else f" ({run.asr_images} img, raced out)"),
            f"{r.seconds:.1f}",
            style="bold green" if run is best else None,
        )
    return table
