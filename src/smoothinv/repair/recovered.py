"""Recovered triggers on disk: what a scan found for each flagged class, read back by a repair.

A scan writes, for each flagged class K, `class-K/triggers.safetensors`: every perturbation the
full grid kept for K (the best run over σ at each ε; the evidence first), as tensors
`trigger.<i>.perturbation` [C,H,W] (additive) or `trigger.<i>.mask` / `trigger.<i>.pattern`
(masked), with a JSON list in the metadata describing each (target, ε, σ, transfer ASR).
safetensors holds tensors and strings only, so reading one runs no code from the file.

A user may also hand over a perturbation as a NumPy `.npy` file (what `smoothinv invert` writes),
read with pickles refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ..errors import SmoothInvError
from ..files import atomic_path
from ..models.formats import read_safetensors
from ..triggers import AdditiveTrigger, MaskedTrigger, Trigger

TRIGGERS_FILE = "triggers.safetensors"
MAX_TRIGGERS = 256
"""More recovered triggers than this in one file is not something a scan writes."""


@dataclass(frozen=True)
class RecoveredTrigger:
    """One recovered trigger toward `target`; `source` says where it came from, for reports."""

    trigger: Trigger
    target: int
    source: str
    info: dict[str, Any] = field(default_factory=dict)


def save_recovered(path: str | Path, items: Sequence[RecoveredTrigger]) -> None:
    """Write `items` (additive or masked triggers) to one safetensors file, atomically."""
    tensors: dict[str, Tensor] = {}
    described = []
    for i, item in enumerate(items):
        if isinstance(item.trigger, AdditiveTrigger):
            tensors[f"trigger.{i}.perturbation"] = item.trigger.perturbation.detach().float().cpu().contiguous()
        elif isinstance(item.trigger, MaskedTrigger):
            tensors[f"trigger.{i}.mask"] = item.trigger.mask.detach().float().cpu().contiguous()
            tensors[f"trigger.{i}.pattern"] = item.trigger.pattern.detach().float().cpu().contiguous()
        else:
            raise TypeError(f"cannot save a {type(item.trigger).__name__}")
        described.append({"target": item.target, "source": item.source, **item.info})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"triggers": json.dumps(described)})


def load_recovered(path: str | Path, shape: Sequence[int]) -> list[RecoveredTrigger]:
    """The triggers in `path`, each checked against the model's input `shape` (C,H,W)."""
    path = Path(path)
    if not path.is_file():
        raise SmoothInvError(f"recovered triggers {path} do not exist; rerun the scan that should have written them")
    tensors, metadata = read_safetensors(path)
    try:
        described = json.loads(metadata.get("triggers", "null"))
    except json.JSONDecodeError:
        described = None
    if not isinstance(described, list) or not 0 < len(described) <= MAX_TRIGGERS:
        raise SmoothInvError(f"{path} lists no recovered triggers; rerun the scan that wrote it")
    items = []
    for i, entry in enumerate(described):
        if not isinstance(entry, dict) or not isinstance(entry.get("target"), int):
            raise SmoothInvError(f"{path}: entry {i} has no target class; rerun the scan that wrote it")
        info = {k: v for k, v in entry.items() if k not in ("target", "source")}
        source = str(entry.get("source", f"{path.name} #{i}"))[:200]
        if f"trigger.{i}.perturbation" in tensors:
            p = _checked(tensors[f"trigger.{i}.perturbation"], shape, path, -1.0, 1.0)
            items.append(RecoveredTrigger(AdditiveTrigger(p), entry["target"], source, info))
        elif f"trigger.{i}.mask" in tensors and f"trigger.{i}.pattern" in tensors:
            mask = tensors[f"trigger.{i}.mask"]
            mask = _checked(mask, (1, *shape[1:]) if mask.shape[0] == 1 else shape, path, 0.0, 1.0)
            pattern = _checked(tensors[f"trigger.{i}.pattern"], shape, path, 0.0, 1.0)
            items.append(RecoveredTrigger(MaskedTrigger(mask, pattern), entry["target"], source, info))
        else:
            raise SmoothInvError(f"{path}: trigger {i} has no tensors; rerun the scan that wrote it")
    return items


def load_perturbation(path: str | Path, shape: Sequence[int], target: int) -> RecoveredTrigger:
    """An additive perturbation [C,H,W] (or [H,W,C]) from a `.npy` file, as `smoothinv invert` writes."""
    path = Path(path)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SmoothInvError(f"trigger file {path} does not exist") from None
    except (OSError, ValueError, EOFError) as exc:
        raise SmoothInvError(f"cannot read {path} as a NumPy .npy array ({str(exc).splitlines()[0][:100]}); "
                             "pass the perturbation.npy that `invert` writes") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise SmoothInvError(f"{path} does not hold a numeric array; pass the perturbation.npy that `invert` writes")
    p = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if p.dim() == 3 and tuple(p.shape) != tuple(shape) and tuple(p.shape) == (shape[1], shape[2], shape[0]):
        p = p.permute(2, 0, 1).contiguous()
    return RecoveredTrigger(AdditiveTrigger(_checked(p, shape, path, -1.0, 1.0)), target, f"file {path.name}")


def _checked(t: Tensor, shape: Sequence[int], path: Path, low: float, high: float) -> Tensor:
    """`t` as float32 if it has `shape` and finite values in [low, high]; else a one-line error."""
    if tuple(t.shape) != tuple(shape):
        raise SmoothInvError(f"{path}: a trigger of shape {tuple(t.shape)} does not fit the model's input "
                             f"{tuple(shape)}; use triggers recovered for this model")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise SmoothInvError(f"{path}: the trigger holds NaN or infinite values")
    if float(t.min()) < low - 1e-6 or float(t.max()) > high + 1e-6:
        raise SmoothInvError(f"{path}: trigger values {float(t.min()):.3g}..{float(t.max()):.3g} lie outside "
                             f"[{low:g}, {high:g}] for images in [0, 1]")
    return t


def scan_findings(scan_dir: str | Path, model_sha256: str, shape: Sequence[int]) -> tuple[list[int], list[RecoveredTrigger]]:
    """The flagged targets of the scan in `scan_dir` and the triggers it recovered for them,
    after checking that the scan was of the model with `model_sha256` and input `shape`."""
    scan_dir = Path(scan_dir)
    record_path = scan_dir / "scan.json"
    if not record_path.is_file():
        raise SmoothInvError(f"{scan_dir} holds no scan.json; pass the output directory of `smoothinv scan`")
    try:
        record = json.loads(record_path.read_text())
        scanned = record["model"]["sha256"]
        targets = [int(t) for t in record["targets"]]
        files = dict(record.get("files", {}).get("triggers", {}))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SmoothInvError(f"{record_path} is not a scan record smoothinv wrote; rerun the scan") from None
    if scanned != model_sha256:
        raise SmoothInvError(f"the scan in {scan_dir} is of another model (sha256 {str(scanned)[:12]}…, this model "
                             f"{model_sha256[:12]}…); scan this model, or pass its scan")
    if not targets:
        raise SmoothInvError(f"the scan in {scan_dir} flagged no class (verdict clean): there is no backdoor to repair")
    recovered = []
    for target in targets:
        name = files.get(str(target))
        if not isinstance(name, str):
            raise SmoothInvError(f"the scan in {scan_dir} kept no triggers for class {target} (written by an older "
                                 "smoothinv?); rerun the scan")
        path = (scan_dir / name).resolve()
        if scan_dir.resolve() not in path.parents:
            raise SmoothInvError(f"{record_path} points outside its folder ({name}); rerun the scan")
        found = load_recovered(path, shape)
        if any(r.target != target for r in found):
            raise SmoothInvError(f"{path} holds triggers for another class than {target}; rerun the scan")
        recovered.extend(found)
    return targets, recovered
