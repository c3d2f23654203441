"""One repair, measured: split the clean set, measure the model, repair it, measure again.

The clean set is split once, seeded: the repair fine-tunes on one part and every number is
measured on the other, so clean accuracy is not judged on images the repair trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from ..engine.metrics import accuracy, attack_success_rate
from ..errors import SmoothInvError
from ..labels import eligible
from ..triggers import Trigger
from .methods import REPAIRS, FineTuneRecipe, Findings, Progress, Repaired, build_repair

HOLDOUT = 0.2
"""Share of the user's clean set kept out of fine-tuning to measure the repair on."""


@dataclass(frozen=True)
class Probe:
    """A trigger whose ASR toward `target` is measured before and after the repair."""

    name: str
    trigger: Trigger
    target: int
    sources: tuple[int, ...] | None = None
    """For a label-specific backdoor: the only classes the trigger should flip (None: all)."""


@dataclass(frozen=True)
class Split:
    """Which clean images fine-tuned the model and which measured it (indices into the clean set)."""

    tune: Tensor
    evaluate: Tensor
    seed: int

    @classmethod
    def of(cls, count: int, holdout: float, seed: int) -> Split:
        if count < 2:
            raise SmoothInvError(f"the clean set has {count} image(s); a repair needs at least 2 (some to "
                                 "fine-tune on, some to measure on)")
        if not 0.0 < holdout < 1.0:
            raise SmoothInvError(f"the held-out share must lie strictly between 0 and 1 (got {holdout})")
        order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
        held = min(count - 1, max(1, round(holdout * count)))
        return cls(order[held:].sort().values, order[:held].sort().values, seed)

    def record(self) -> dict[str, Any]:
        return {"seed": self.seed, "tune": len(self.tune), "evaluate": len(self.evaluate),
                "evaluate_indices": self.evaluate.tolist()}


@dataclass
class Measurement:
    """Clean accuracy and each probe's ASR on the held-out images."""

    clean_accuracy: float
    asr: dict[str, float] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return {"clean_accuracy": round(self.clean_accuracy, 6), "asr": {k: round(v, 6) for k, v in self.asr.items()}}


def measure(model: nn.Module, images: Tensor, labels: Tensor, probes: Sequence[Probe]) -> Measurement:
    """Clean accuracy on images [N,C,H,W] and every probe's ASR (images not of its target)."""
    asr = {}
    for probe in probes:
        keep = eligible(labels, probe.target, probe.sources)
        if bool(keep.any()):
            asr[probe.name] = attack_success_rate(model, probe.trigger, images[keep], labels[keep], probe.target)
    return Measurement(accuracy(model, images, labels), asr)


@dataclass
class RepairResult:
    """The repaired model, the split, and the measurements before and after."""

    repaired: Repaired
    split: Split
    before: Measurement
    after: Measurement
    findings: Findings

    def record(self) -> dict[str, Any]:
        return {
            "method": self.repaired.method,
            "targets": list(self.findings.targets),
            "split": self.split.record(),
            "before": self.before.record(),
            "after": self.after.record(),
            "details": self.repaired.details,
            "seconds": round(self.repaired.seconds, 3),
        }


def recovered_probes(findings: Findings) -> list[Probe]:
    """One probe per recovered trigger, named for where it came from."""
    return [Probe(f"recovered {i}: {r.source}", r.trigger, r.target) for i, r in enumerate(findings.recovered)]


def repair_model(model: nn.Module, images: Tensor, labels: Tensor, findings: Findings, *, method: str = "unlearn",
                 recipe: FineTuneRecipe | None = None, holdout: float = HOLDOUT, seed: int = 0,
                 probes: Sequence[Probe] = (), progress: Progress | None = None) -> RepairResult:
    """Repair `model` with `method` (methods.REPAIRS) on part of the clean images [N,C,H,W] in [0,1]
    (labels [N]) and measure it on the rest, before and after: clean accuracy, the recovered
    triggers' ASR, and any extra `probes` (a zoo model's true trigger)."""
    if not findings.targets and not REPAIRS.get(method).finds_own_target:
        raise SmoothInvError("no target class to repair: the scan flagged none (the model was judged clean)")
    repair = build_repair(method, findings, recipe)
    split = Split.of(len(labels), holdout, seed)
    tune_x, tune_y = images[split.tune], labels[split.tune]
    eval_x, eval_y = images[split.evaluate], labels[split.evaluate]
    every_probe = [*recovered_probes(findings), *probes]
    say = progress or (lambda _: None)
    say(f"measuring the model on {len(eval_y)} held-out images")
    before = measure(model, eval_x, eval_y, every_probe)
    repaired = repair(model, tune_x, tune_y, seed=seed, progress=say)
    say("measuring the repaired model")
    after = measure(repaired.model, eval_x, eval_y, every_probe)
    return RepairResult(repaired, split, before, after, findings)
