"""Resumable scans: a killed scan's work is saved, and rerunning the same scan continues it.

A scan of a 1000-class model takes hours on a CPU; a crash, Ctrl-C or `kill -9` must not
lose them. The scan saves, as it goes:

- `key.json`: what the work belongs to, a sha256 over the model (its file hash and loading
  options, or its state_dict), the scan images, the clean set, every scan setting that shapes
  a result (seed, ε, σ, steps, N, max batch, classes, method, fallback, rule) and the
  smoothinv and torch versions. Work made under another key is discarded, never reused.
- `probe-<run>.json`: the noise-sink probe.
- `chunk-<run>-<i>.safetensors`: chunk i's evaluated classes (runs, ASRs, evidence tensors).
- `descent-<run>-<i>.safetensors`: chunk i's descent in flight, saved every `every_s`
  seconds of compute and after its last step: step, p, velocity, loss and probability
  history, the noise generator's state and the RowStopper's (engine.pgd.DescentState).

<run> is "grid", or "fallback" for the σ-fallback rerun. Restoring all of that makes the rest
of the scan compute exactly what an uninterrupted scan computes, so the result is the same
bit for bit. The time budget is not part of the key: only work finished before a deadline
is saved, and such work does not depend on the budget.

Files are written under a temporary name and renamed (a kill leaves the old file or the new
one), hold tensors as safetensors (never pickle), and carry a sha256 of their content: a
damaged file is reported, deleted and its part recomputed; it never stops the scan.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

try:  # POSIX; elsewhere two scans of one output are not kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .. import __version__
from ..engine.pgd import DescentState
from ..errors import SmoothInvError, param
from ..files import atomic_path, atomic_write_text
from ..methods.base import Found, inversion_result
from ..triggers import AdditiveTrigger, MaskedTrigger, Trigger
from .noise_sink import NoiseSink
from .scan import ClassResult, Evidence, RunRecord, ScanSettings

FORMAT = 1
EVERY_S = 30.0
"""Seconds of descent between two saves of its state."""
EVERY_ENV = "SMOOTHINV_CHECKPOINT_EVERY_S"
"""Environment variable that overrides EVERY_S for the command line (tests use 0: every step)."""
KEY_FILE = "key.json"
TEMP_PREFIX = ".tmp-"

Log = Callable[[str], None]


class ScanCheckpoint:
    """A scan's saved work in `directory` (see the module docstring).

    model_id: what identifies the model (the command line passes its file's sha256 and
    loading options); None = a hash of the model's state_dict. every_s: seconds between two
    saves of a descent. log: where one-line notes go (resuming, discarding).
    Pass it to `scan(..., checkpoint=...)`; call `discard()` once the result is stored.
    """

    def __init__(self, directory: str | Path, *, model_id: str | None = None, every_s: float = EVERY_S,
                 log: Log | None = None) -> None:
        if not (math.isfinite(every_s) and every_s >= 0):
            raise SmoothInvError(f"the checkpoint interval must be a finite number of seconds >= 0 (got {every_s})")
        self.directory = Path(directory)
        self.model_id = model_id
        self.every_s = float(every_s)
        self.log: Log = log or (lambda message: None)
        self.unwritable = False

    @classmethod
    def beside(cls, out: str | Path, **options: Any) -> ScanCheckpoint:
        """The checkpoint of a scan writing `out`: the hidden folder `.<out name>.checkpoint` next to it."""
        out = Path(out).absolute()
        return cls(out.parent / f".{out.name}.checkpoint", **options)

    def begin(self, model: nn.Module, images: Sequence[Tensor], clean_images: Tensor, clean_labels: Tensor,
              num_classes: int, settings: ScanSettings, classes: Sequence[int] | None) -> None:
        """Make the folder hold this scan's work: keep what the same scan saved, discard anything else."""
        model_id = self.model_id if self.model_id is not None else model_fingerprint(model)
        key = scan_key(model_id, images, clean_images, clean_labels, num_classes, settings, classes)
        why = self._stale(key)
        if why is not None:
            self.log(f"{why}; starting over")
            self.discard()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            for leftover in self.directory.glob(TEMP_PREFIX + "*"):  # a write cut short by a kill
                leftover.unlink(missing_ok=True)
            if not (self.directory / KEY_FILE).is_file():
                atomic_write_text(self.directory / KEY_FILE, json.dumps({"format": FORMAT, "key": key}),
                                  prefix=TEMP_PREFIX, suffix="", permissions=None)
        except OSError as e:
            self._give_up_writing(e)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold the checkpoint for this process while the block runs, so that a second scan writing
        the same output at the same time is refused instead of sharing (and deleting) this one's work.
        Uses an advisory lock on ``<directory>.lock``; the kernel releases it if the process dies."""
        lock_path = self.directory.with_name(self.directory.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SmoothInvError(f"another scan is writing to the same output right now (its work is in "
                                 f"{self.directory}); wait for it to finish or choose another {param('out')}") from None
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)
            os.close(fd)

    def run(self, name: str) -> RunCheckpoint:
        """The part of the checkpoint for one pass of the scan ("grid" or "fallback")."""
        return RunCheckpoint(self, name)

    def discard(self) -> None:
        """Delete the saved work (done once the scan's output is written)."""
        if self.directory.is_symlink() or self.directory.is_file():
            self.directory.unlink()
        elif self.directory.exists():
            shutil.rmtree(self.directory, ignore_errors=True)

    def _stale(self, key: str) -> str | None:
        """Why the folder's content cannot be reused for `key`; None if it can or is empty."""
        if not (self.directory.exists() or self.directory.is_symlink()):
            return None
        path = self.directory / KEY_FILE
        try:
            saved = json.loads(path.read_text())
            found = saved["key"], saved["format"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"checkpoint {self.directory} is unreadable ({_reason(e)})"
        if found != (key, FORMAT):
            return f"checkpoint {self.directory} was made with a different model or settings"
        return None

    def read(self, path: Path) -> tuple[dict[str, Tensor], Any] | None:
        """(tensors, JSON body) of a part file; None if absent or damaged (then deleted, with a note)."""
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            if meta.get("sha256") != _digest(tensors, meta["body"]):
                raise ValueError("its checksum does not match its content")
            return tensors, json.loads(meta["body"])
        except Exception as e:  # noqa: BLE001 - a damaged file fails in many ways (safetensors, json, torch)
            self.forget(path, e)
            return None

    def write(self, path: Path, tensors: dict[str, Tensor], body: Any) -> None:
        """Write a part file atomically: tensors (moved to the CPU) and a JSON body, with a checksum.

        A checkpoint is a convenience: when it cannot be written (a full disk, a vanished folder)
        the scan goes on without it, after one note."""
        if self.unwritable:
            return
        cpu = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
        text = json.dumps(body)
        try:
            with atomic_path(path, prefix=TEMP_PREFIX, suffix="", permissions=None) as tmp:
                save_file(cpu, str(tmp), metadata={"body": text, "sha256": _digest(cpu, text)})
        except Exception as e:  # noqa: BLE001 - OSError, or safetensors' own error on a short write
            self._give_up_writing(e)

    def _give_up_writing(self, error: BaseException) -> None:
        """Stop writing (the temporary file is already gone) and say once what that costs."""
        self.unwritable = True
        self.log(f"cannot save the checkpoint in {self.directory} ({_reason(error)}); the scan goes on, "
                 "but an interruption from now on loses its work")

    def forget(self, path: Path, error: BaseException | str) -> None:
        """Delete a damaged or unfitting part file, saying so; its part is recomputed."""
        self.log(f"checkpoint file {path.name} is unusable ({_reason(error)}); recomputing its part")
        path.unlink(missing_ok=True)



class RunCheckpoint:
    """One pass of a scan (its first grid, or the σ-fallback rerun) within a ScanCheckpoint:
    its noise probe, its finished chunks and the descent of the chunk in flight."""

    def __init__(self, store: ScanCheckpoint, name: str) -> None:
        self.store = store
        self.name = name
        self.announced = False
        self.restored = False
        """Whether some of this pass's work was loaded (probe or chunks)."""

    def announce(self, message: str) -> None:
        """Say once per pass from where it resumes ("resuming: chunk 2/5 at step 120/200")."""
        if not self.announced:
            self.announced = True
            prefix = "resuming the fallback rerun" if self.name == "fallback" else "resuming"
            self.store.log(f"{prefix}: {message}")

    def probe(self) -> NoiseSink | None:
        loaded = self.store.read(self._path("probe"))
        if loaded is None:
            return None
        try:
            body = loaded[1]
            sink = NoiseSink(float(body["base_share"]), float(body["limit"]), [dict(p) for p in body["probes"]])
        except (KeyError, TypeError, ValueError) as e:
            self.store.forget(self._path("probe"), e)
            return None
        self.restored = True
        return sink

    def save_probe(self, sink: NoiseSink) -> None:
        self.store.write(self._path("probe"), {}, {"base_share": sink.base_share, "limit": sink.limit,
                                                   "probes": sink.probes})

    def chunk(self, index: int, labels: list[int], images: Tensor) -> list[ClassResult] | None:
        """Chunk `index`'s evaluated classes (those in `labels`, in order), if saved; the scan
        images [n,C,H,W] rebuild each evidence's image and synthesised image."""
        path = self._path("chunk", index)
        loaded = self.store.read(path)
        if loaded is None:
            return None
        try:
            results = _chunk_results(*loaded, images)
            if [cr.label for cr in results] != labels:
                raise ValueError(f"it holds classes {[cr.label for cr in results]}, not {labels}")
        except (KeyError, TypeError, ValueError, IndexError) as e:
            self.store.forget(path, e)
            return None
        self.restored = True
        return results

    def save_chunk(self, index: int, results: list[ClassResult]) -> None:
        """Keep chunk `index`'s evaluated classes; its descent file is no longer needed."""
        try:
            tensors, body = _chunk_parts(results)
        except _Unsupported:
            return  # a trigger type we cannot store: the chunk is recomputed on resume
        self.store.write(self._path("chunk", index), tensors, body)
        self._path("descent", index).unlink(missing_ok=True)

    def has_descent(self, index: int) -> bool:
        return self._path("descent", index).is_file()

    def descent(self, index: int, halted: Callable[[], bool], on_resume: Callable[[int], None]) -> DescentFile:
        """The checkpoint of chunk `index`'s descent (see DescentFile)."""
        return DescentFile(self.store, self._path("descent", index), halted, on_resume)

    def _path(self, kind: str, index: int | None = None) -> Path:
        suffix = "json" if kind == "probe" else "safetensors"
        return self.store.directory / (f"{kind}-{self.name}" + ("" if index is None else f"-{index}") + f".{suffix}")


class DescentFile:
    """A descent's state in one file (an engine.pgd.DescentCheckpoint): saved every `every_s`
    seconds of compute and after the last step, never once `halted()` (a deadline cut the
    descent: what follows differs from an uninterrupted descent). `on_resume(step)` hears
    of a restored state."""

    def __init__(self, store: ScanCheckpoint, path: Path, halted: Callable[[], bool],
                 on_resume: Callable[[int], None]) -> None:
        self.store = store
        self.path = path
        self.halted = halted
        self.on_resume = on_resume
        self._last = time.perf_counter()

    def restore(self, fresh: DescentState, steps: int) -> DescentState | None:
        loaded = self.store.read(self.path)
        if loaded is None:
            return None
        try:
            state = _descent_state(*loaded)
        except (KeyError, TypeError, ValueError) as e:
            self.store.forget(self.path, e)
            return None
        why = fresh.mismatch(state, steps)
        if why is not None:
            self.store.forget(self.path, f"it does not fit this descent: {why}")
            return None
        self.on_resume(state.step)
        return state

    def due(self, step: int, steps: int) -> bool:
        return not self.halted() and (step == steps or time.perf_counter() - self._last >= self.store.every_s)

    def save(self, state: DescentState) -> None:
        self.store.write(self.path, {**state.tensors(), "loss": state.loss, "prob": state.prob}, {"step": state.step})
        self._last = time.perf_counter()


def checkpoint_interval() -> float:
    """EVERY_S, or the seconds set in the SMOOTHINV_CHECKPOINT_EVERY_S environment variable."""
    text = os.environ.get(EVERY_ENV)
    if text is None or not text.strip():
        return EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise SmoothInvError(f"{EVERY_ENV} must be a number of seconds >= 0 (got {text!r})")
    return value


def scan_key(model_id: str, images: Sequence[Tensor], clean_images: Tensor, clean_labels: Tensor, num_classes: int,
             settings: ScanSettings, classes: Sequence[int] | None) -> str:
    """sha256 over everything a scan's saved work depends on (all but the time budget)."""
    digest = hashlib.sha256()
    shaping = asdict(replace(settings, time_budget=None))
    for label, text in (("format", str(FORMAT)), ("smoothinv", __version__), ("torch", torch.__version__),
                        ("model", model_id), ("settings", json.dumps(shaping, sort_keys=True)),
                        ("classes", json.dumps(None if classes is None else sorted(set(int(c) for c in classes)))),
                        ("num_classes", str(num_classes)), ("images", str(len(images)))):
        _add(digest, label, text.encode())
    for i, image in enumerate(images):
        _add_tensor(digest, f"image {i}", image)
    _add_tensor(digest, "clean images", clean_images)
    _add_tensor(digest, "clean labels", clean_labels)
    return digest.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """A model's identity for the key when no file hash is given: its class and state_dict."""
    digest = hashlib.sha256()
    _add(digest, "class", f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in model.state_dict().items():
        _add_tensor(digest, name, t)
    return digest.hexdigest()


class _Unsupported(Exception):
    """A trigger type that a checkpoint cannot store."""


def _chunk_parts(results: list[ClassResult]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A chunk's classes as tensors (evidence curves and triggers) and a JSON body (the rest)."""
    tensors: dict[str, Tensor] = {}
    classes = []
    for cr in results:
        candidates = []
        for j, (eps, evidence) in enumerate(cr.candidates.items()):
            r = evidence.result
            kind, parts = _trigger_parts(r.trigger)
            prefix = f"{cr.label}.{j}."
            tensors.update({prefix + name: t for name, t in parts.items()})
            tensors[prefix + "loss"], tensors[prefix + "target_prob"] = r.loss, r.target_prob
            candidates.append({
                "eps": eps, "asr": evidence.asr, "asr_by_source": [[k, v] for k, v in evidence.asr_by_source.items()],
                "method": r.method, "target": r.target, "config": r.config, "seconds": r.seconds, "trigger": kind,
                "extras": {k: v for k, v in r.extras.items() if v is None or isinstance(v, (bool, int, float, str))},
            })
        classes.append({"label": cr.label, "image_index": cr.image_index, "runs": [asdict(run) for run in cr.runs],
                        "candidates": candidates})
    return tensors, {"classes": classes}


def _chunk_results(tensors: dict[str, Tensor], body: dict[str, Any], images: Tensor) -> list[ClassResult]:
    """Inverse of _chunk_parts; images [n,C,H,W] are the scan images."""
    results = []
    for entry in body["classes"]:
        label, index = int(entry["label"]), int(entry["image_index"])
        candidates: dict[float | None, Evidence] = {}
        for j, cand in enumerate(entry["candidates"]):
            prefix = f"{label}.{j}."
            trigger = _trigger(cand["trigger"], tensors, prefix)
            found = Found(trigger, tensors[prefix + "loss"], tensors[prefix + "target_prob"], dict(cand["config"]),
                          dict(cand["extras"]))
            result = inversion_result(str(cand["method"]), images[index], int(cand["target"]), found,
                                      float(cand["seconds"]))
            eps = None if cand["eps"] is None else float(cand["eps"])
            candidates[eps] = Evidence(result, float(cand["asr"]), {int(k): float(v) for k, v in cand["asr_by_source"]})
        results.append(ClassResult(label, index, [_run_record(run) for run in entry["runs"]], candidates))
    return results


def _run_record(run: dict[str, Any]) -> RunRecord:
    return RunRecord(dict(run["config"]), float(run["asr"]), float(run["initial_target_prob"]),
                     float(run["final_target_prob"]), int(run["steps_run"]), float(run.get("concentration", 0.0)))


def _trigger_parts(trigger: Trigger) -> tuple[str, dict[str, Tensor]]:
    if type(trigger) is AdditiveTrigger:
        return "additive", {"perturbation": trigger.perturbation}
    if type(trigger) is MaskedTrigger:
        return "masked", {"mask": trigger.mask, "pattern": trigger.pattern}
    raise _Unsupported(type(trigger).__name__)


def _trigger(kind: str, tensors: dict[str, Tensor], prefix: str) -> Trigger:
    if kind == "additive":
        return AdditiveTrigger(tensors[prefix + "perturbation"])
    if kind == "masked":
        return MaskedTrigger(tensors[prefix + "mask"], tensors[prefix + "pattern"])
    raise ValueError(f"unknown trigger kind {kind!r}")


def _descent_state(tensors: dict[str, Tensor], body: dict[str, Any]) -> DescentState:
    """Inverse of DescentFile.save."""
    parts: dict[str, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        if name.startswith("part."):
            part, key = name[len("part."):].split(".", 1)
            parts.setdefault(part, {})[key] = t
    return DescentState(int(body["step"]), tensors["p"], tensors.get("velocity"), tensors["loss"], tensors["prob"],
                        parts)


def _add(digest: Any, label: str, data: bytes | memoryview) -> None:
    """Feed a labelled, length-prefixed field to a hash (so fields cannot run into each other)."""
    digest.update(label.encode() + b"\0" + len(data).to_bytes(8, "little"))
    digest.update(data)


def _add_tensor(digest: Any, label: str, t: Tensor) -> None:
    _add(digest, label, f"{t.dtype} {list(t.shape)}".encode())
    _add(digest, label, _bytes(t))


def _bytes(t: Tensor) -> memoryview:
    """A tensor's raw bytes (any dtype), without copying a contiguous CPU tensor."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def _digest(tensors: dict[str, Tensor], body: str) -> str:
    """sha256 of a part file's content: its JSON body and every tensor's name, dtype, shape and bytes."""
    digest = hashlib.sha256()
    _add(digest, "body", body.encode())
    for name in sorted(tensors):
        _add_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def _reason(error: BaseException | str) -> str:
    """A one-line reason for a note."""
    text = error if isinstance(error, str) else (str(error) or type(error).__name__)
    return " ".join(text.split())[:200]
