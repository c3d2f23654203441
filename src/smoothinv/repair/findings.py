"""A scan's result as what a repair knows: the flagged targets and their recovered triggers."""

from __future__ import annotations

from ..detection.scan import ClassResult, Evidence, ScanResult
from ..triggers import AdditiveTrigger, MaskedTrigger
from .methods import Findings
from .recovered import RecoveredTrigger


def class_triggers(result: ClassResult) -> list[RecoveredTrigger]:
    """A flagged class's kept runs (its evidence first, then the best run at each other ε)."""
    assert result.evidence is not None
    return [_recovered(result.label, e, i == 0) for i, e in enumerate([result.evidence, *result.alternatives])]


def scan_result_findings(result: ScanResult) -> Findings:
    """The flagged classes of `result` and every trigger the scan kept for them."""
    flagged = [cr for cr in result.classes if cr.flagged]
    return Findings(tuple(cr.label for cr in flagged), tuple(t for cr in flagged for t in class_triggers(cr)))


def _recovered(label: int, evidence: Evidence, is_evidence: bool) -> RecoveredTrigger:
    run = evidence.result
    eps, sigma = run.config.get("eps"), run.config.get("sigma")
    where = " ".join(f"{k}={v:g}" for k, v in (("eps", eps), ("sigma", sigma)) if isinstance(v, (int, float)))
    trigger = run.trigger if isinstance(run.trigger, MaskedTrigger) else AdditiveTrigger(run.perturbation.detach())
    return RecoveredTrigger(trigger, label, f"scan, class {label} {where}".strip(),
                            {"eps": eps, "sigma": sigma, "asr": round(float(evidence.asr), 6), "method": run.method,
                             "evidence": is_evidence})
