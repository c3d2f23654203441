"""Read a population: which models to scan, and with what.

A population is given as one of (chosen by what the path is; `SPEC_READERS`):
- a folder of model files (``*.safetensors``, ``*.pt``, ``*.pth``, ``*.onnx``, ``*.ckpt``, ``*.bin``),
  each scanned with the defaults (a clean set for all is then required);
- a zoo folder (it holds ``manifest.json``, as ``smoothinv zoo`` writes it): every model with its
  dataset's test split, its known truth, and the manifest's hash checked before the scan;
- a CSV file with a header, or a JSON file (a list of objects, or ``{"models": [...]}``): one model
  per row, with its own options. Columns/keys (only ``model`` is required): ``model`` (path),
  ``name``, ``arch``, ``num_classes``, ``input_size`` (``H,W``), ``channels``, ``mean``/``std``
  (``a,b,c``), ``clean`` (ImageFolder, .npz or TrojAI-style folder), ``images`` (paths separated by
  ``;``; none: a seeded pick from the clean set), ``dataset`` (a dataset name instead of ``clean``),
  ``denoiser``, ``kind``, and the truth when known: ``backdoored`` (true/false) and ``target``.
  Relative paths are relative to the file's folder; an empty cell means "not given".

Whether code-carrying formats may be loaded is never a per-model option: only the run's own
``trust_code`` allows it. A bad listing is one error that says where (file, row, column).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from ..data.datasets import DATASETS, data_root
from ..errors import SmoothInvError, param
from ..registry import Registry
from ..zoo.manifest import MANIFEST, read_manifest, zoo_file
from .entries import LoadingHints, ModelEntry, Truth, check_name, safe_name, unique_names
from .inputs import DatasetInputs, FileInputs

MODEL_SUFFIXES = (".safetensors", ".pt", ".pth", ".onnx", ".ckpt", ".bin")
MAX_SPEC_BYTES = 64 << 20
MAX_MODELS = 1_000_000
MAX_FIELD = 64
COLUMNS = ("model", "name", "arch", "num_classes", "input_size", "channels", "mean", "std", "clean", "images",
           "dataset", "denoiser", "kind", "backdoored", "target")


@dataclass(frozen=True)
class SpecDefaults:
    """What a model gets when its listing does not say: loading hints, a clean set and images for
    all, a denoiser, and where datasets are read from."""

    hints: LoadingHints = LoadingHints()
    clean: Path | None = None
    images: tuple[Path, ...] = ()
    denoiser: str | None = None
    data_root: Path | None = None


@dataclass(frozen=True)
class ListedEntry:
    """A zoo model's expected weights hash, checked by the runner before the scan."""

    entry: ModelEntry
    sha256: str | None = None


def read_population(spec: str | Path, defaults: SpecDefaults = SpecDefaults()) -> list[ModelEntry]:
    """The models `spec` lists, in its order, each with its options (see the module docstring)."""
    return [listed.entry for listed in read_listing(spec, defaults)]


def read_listing(spec: str | Path, defaults: SpecDefaults = SpecDefaults()) -> list[ListedEntry]:
    """`read_population`, with each zoo model's expected hash."""
    spec = Path(spec)
    if not spec.exists():
        raise SmoothInvError(f"population {spec} does not exist; give a folder of models, a zoo folder, "
                             "a .csv or a .json listing")
    kind = "zoo" if (spec / MANIFEST).is_file() else "folder" if spec.is_dir() else spec.suffix.lower()
    if kind not in SPEC_READERS:
        raise SmoothInvError(f"population {spec} is neither a folder nor a .csv or .json listing")
    listed = SPEC_READERS.get(kind)(spec, defaults)
    if not listed:
        raise SmoothInvError(f"population {spec} lists no models")
    unique_names([item.entry for item in listed], f"population {spec}")
    return listed


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))


def _defaults_inputs(defaults: SpecDefaults, where: str) -> FileInputs:
    if defaults.clean is None:
        raise SmoothInvError(f"{where}: no clean set is given for its models; pass {param('clean')} (a clean set "
                             "for every model), or list the models in a CSV/JSON with a clean column")
    return FileInputs(_absolute(defaults.clean), tuple(_absolute(p) for p in defaults.images))


def _read_folder(spec: Path, defaults: SpecDefaults) -> list[ListedEntry]:
    files = sorted(p for p in spec.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and not p.name.startswith(".")
                   and p.is_file())
    stems = [safe_name(p.stem) for p in files]
    inputs = _defaults_inputs(defaults, f"population {spec}") if files else None
    entries = []
    for path, stem in zip(files, stems):
        name = stem if stems.count(stem) == 1 else safe_name(path.name)
        assert inputs is not None
        entries.append(ListedEntry(ModelEntry(name, _absolute(path), inputs, defaults.hints, defaults.denoiser)))
    return entries


def _read_zoo(spec: Path, defaults: SpecDefaults) -> list[ListedEntry]:
    root = None if defaults.data_root is None else _absolute(defaults.data_root)
    entries = []
    for name, record in sorted(read_manifest(spec).items()):
        truth = Truth(record.get("attack") is not None, record.get("target"))
        inputs = (_defaults_inputs(defaults, f"zoo {spec}") if defaults.clean is not None else
                  DatasetInputs(record["dataset"], _absolute(data_root(root)), record.get("target")))
        entry = ModelEntry(check_name(name, f"zoo {spec}"), _absolute(zoo_file(record, "weights", spec)), inputs,
                           defaults.hints, defaults.denoiser, record.get("dataset"), record.get("arch"), truth)
        entries.append(ListedEntry(entry, record.get("sha256")))
    return entries


def _read_csv(spec: Path, defaults: SpecDefaults) -> list[ListedEntry]:
    text = _read_text(spec)
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None:
        raise SmoothInvError(f"{spec}: empty CSV; the first line names the columns (model, clean, ...)")
    _check_columns([c.strip() for c in reader.fieldnames], str(spec))
    entries = []
    for number, row in enumerate(reader, start=2):
        if None in row:
            raise SmoothInvError(f"{spec}, line {number}: more cells than columns")
        record = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if any(record.values()):
            entries.append(_listed(record, spec.parent, defaults, f"{spec}, line {number}"))
        _check_count(entries, spec)
    return entries


def _read_json(spec: Path, defaults: SpecDefaults) -> list[ListedEntry]:
    try:
        data = json.loads(_read_text(spec))
    except ValueError as e:
        raise SmoothInvError(f"{spec}: not valid JSON ({e})") from None
    models = data.get("models") if isinstance(data, dict) else data
    if not isinstance(models, list):
        raise SmoothInvError(f"{spec}: expected a list of models, or {{\"models\": [...]}}")
    entries = []
    for number, item in enumerate(models, start=1):
        where = f"{spec}, model {number}"
        if not isinstance(item, dict):
            raise SmoothInvError(f"{where}: expected an object with at least \"model\"")
        _check_columns(list(item), where)
        entries.append(_listed(item, spec.parent, defaults, where))
        _check_count(entries, spec)
    return entries


def _read_text(spec: Path) -> str:
    try:
        if spec.stat().st_size > MAX_SPEC_BYTES:
            raise SmoothInvError(f"{spec} is larger than {MAX_SPEC_BYTES >> 20} MB; split the population")
        return spec.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise SmoothInvError(f"cannot read {spec} ({e})") from None


def _check_columns(names: list[str], where: str) -> None:
    unknown = [n for n in names if n not in COLUMNS]
    if unknown:
        raise SmoothInvError(f"{where}: unknown column(s) {', '.join(repr(n)[:40] for n in unknown[:5])}; "
                             f"known: {', '.join(COLUMNS)}")
    if "model" not in names:
        raise SmoothInvError(f"{where}: the column 'model' (the model file) is required")


def _check_count(entries: list[ListedEntry], spec: Path) -> None:
    if len(entries) > MAX_MODELS:
        raise SmoothInvError(f"{spec} lists more than {MAX_MODELS:,} models; split the population")


def _listed(record: dict[str, Any], base: Path, defaults: SpecDefaults, where: str) -> ListedEntry:
    """One listed model; cells are strings (CSV) or JSON values."""
    cell = _Cells(record, base, where)
    path = cell.path("model")
    if path is None:
        raise SmoothInvError(f"{where}: the model file is missing ('model' is empty)")
    hints = LoadingHints(cell.text("arch"), cell.integer("num_classes", 2, 100_000), cell.size("input_size"),
                         cell.integer("channels", 1, 3), cell.numbers("mean"), cell.numbers("std")).over(defaults.hints)
    backdoored = cell.boolean("backdoored")
    target = cell.integer("target", 0, 1_000_000)
    truth = None if backdoored is None else Truth(backdoored, target if backdoored else None)
    clean, dataset = cell.path("clean"), cell.text("dataset")
    if dataset is not None and dataset not in DATASETS:
        raise SmoothInvError(f"{where}: unknown dataset {dataset!r}; choose from: {', '.join(DATASETS)}")
    images = cell.paths("images")
    if clean is not None:
        inputs: FileInputs | DatasetInputs = FileInputs(clean, images or tuple(_absolute(p) for p in defaults.images))
    elif dataset is not None:
        root = _absolute(data_root(None if defaults.data_root is None else defaults.data_root))
        inputs = DatasetInputs(dataset, root, target if backdoored else None)
    else:
        inputs = replace(_defaults_inputs(defaults, where), images=images) if images else _defaults_inputs(defaults, where)
    name = check_name(cell.text("name") or safe_name(path.stem), where)
    entry = ModelEntry(name, path, inputs, hints, cell.text("denoiser") or defaults.denoiser, dataset,
                       cell.text("kind") or hints.arch, truth)
    return ListedEntry(entry)


class _Cells:
    """Typed reads of one listed model's cells, each error naming the file, row and column."""

    def __init__(self, record: dict[str, Any], base: Path, where: str) -> None:
        self.record, self.base, self.where = record, base, where

    def _raw(self, key: str) -> Any:
        value = self.record.get(key)
        return None if value is None or (isinstance(value, str) and not value.strip()) else value

    def _fail(self, key: str, wants: str, value: Any) -> SmoothInvError:
        return SmoothInvError(f"{self.where}: {key} must be {wants} (got {repr(value)[:60]})")

    def text(self, key: str) -> str | None:
        value = self._raw(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "text", value)
        return None if value is None else value.strip()

    def path(self, key: str) -> Path | None:
        text = self.text(key)
        return None if text is None else _absolute(self.base / Path(text).expanduser())

    def paths(self, key: str) -> tuple[Path, ...]:
        value = self._raw(key)
        if value is None:
            return ()
        items = value if isinstance(value, list) else str(value).split(";")
        if len(items) > MAX_FIELD or not all(isinstance(i, str) for i in items):
            raise self._fail(key, f"at most {MAX_FIELD} paths separated by ';'", value)
        return tuple(_absolute(self.base / Path(i.strip()).expanduser()) for i in items if i.strip())

    def integer(self, key: str, low: int, high: int) -> int | None:
        value = self._raw(key)
        if value is None:
            return None
        try:
            number = int(str(value).strip()) if not isinstance(value, bool) else None
        except ValueError:
            number = None
        if number is None or not low <= number <= high:
            raise self._fail(key, f"a whole number from {low} to {high}", value)
        return number

    def numbers(self, key: str) -> tuple[float, ...] | None:
        value = self._raw(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else str(value).replace(";", ",").split(",")
        try:
            numbers = tuple(float(i) for i in items if str(i).strip())
        except (TypeError, ValueError):
            raise self._fail(key, "comma-separated numbers", value) from None
        if not numbers or len(numbers) > 3 or not all(math.isfinite(n) and abs(n) <= 1e6 for n in numbers):
            raise self._fail(key, "1 to 3 finite numbers (one per channel)", value)
        return numbers

    def size(self, key: str) -> tuple[int, int] | None:
        value = self._raw(key)
        if value is None:
            return None
        items = value if isinstance(value, list) else str(value).lower().replace("x", ",").split(",")
        try:
            sizes = [int(str(i).strip()) for i in items if str(i).strip()]
        except ValueError:
            sizes = []
        if len(sizes) == 1:
            sizes *= 2
        if len(sizes) != 2 or not all(1 <= s <= 100_000 for s in sizes):
            raise self._fail(key, "H,W (or one number)", value)
        return sizes[0], sizes[1]

    def boolean(self, key: str) -> bool | None:
        value = self._raw(key)
        if value is None or isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "backdoored", "trojan"):
            return True
        if text in ("0", "false", "no", "clean"):
            return False
        raise self._fail(key, "true or false", value)


SPEC_READERS: Registry[Callable[[Path, SpecDefaults], list[ListedEntry]]] = Registry("population listing")
"""How each kind of population path is read: by "zoo", "folder", or the file's suffix."""
SPEC_READERS.add("zoo", _read_zoo)
SPEC_READERS.add("folder", _read_folder)
SPEC_READERS.add(".csv", _read_csv)
SPEC_READERS.add(".json", _read_json)
