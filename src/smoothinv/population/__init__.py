"""Scan a population of models: one task per model, on Ray or a local process pool, crash-safe.

    entries = read_population("models/")            # a folder, a CSV or a JSON listing the models
    rows = run_population(entries, ScanJob(ScanSettings()), FolderStore("out/models"), LocalPool())

- `entries.py`: what one model is (`ModelEntry`: its file, how to read it, its inputs, the truth
  when known); `spec.py` reads a folder, a zoo folder, a CSV or a JSON into entries.
- `jobs.py`: what is done to each model (`ScanJob`: the full scan and its report; `DetectorJob`:
  any `detection.Detector`, as `bench detect` runs it); `task.py` runs one job on one model in
  a worker and turns every failure into an error outcome.
- `backends.py`, `local_pool.py`, `ray_backend.py`: where the tasks run (in this process, a
  pool of processes, Ray), all behind one interface, with a hard per-model time limit.
- `store.py`: each model's result in its own folder, written atomically; what a rerun skips.
- `runner.py`: the loop that ties them together; `summary.py`: summary.json/.csv and index.html.
- `calibration.py`: the scan score → a trojan probability (a logistic fit on the zoo, shipped
  with its data in `trojan_calibration.json`); `trojai.py`: the TrojAI-style single-model entry.
"""

from .backends import BACKENDS, InlineBackend, Parallelism, usable_cores
from .calibration import TrojanCalibration
from .entries import DatasetInputs, FileInputs, LoadingHints, ModelEntry, Truth
from .jobs import DetectorJob, ScanJob
from .runner import PopulationRun, run_population
from .spec import SpecDefaults, read_population
from .store import FolderStore, MemoryStore

__all__ = ["BACKENDS", "DatasetInputs", "DetectorJob", "FileInputs", "FolderStore", "InlineBackend", "LoadingHints",
           "MemoryStore", "ModelEntry", "Parallelism", "PopulationRun", "ScanJob", "SpecDefaults", "TrojanCalibration",
           "Truth", "read_population", "run_population", "usable_cores"]
