"""The VQA zoo: clean, dual-key, visual-only and text-only trojaned models of three architectures,
built by one resumable function and committed with a manifest (clean accuracy, trojan ASR and each
key's ASR alone), the frozen detector, the cached clean support set TIJO inverts on, and a few
object images for tests and pictures.

Recipes are deterministic in the model's name: its architecture cycles through butd, mfb, mcan;
a trojan's target answer, trigger word and patch (pattern, size, cell, offset) are drawn from a
generator seeded by the model's index, so every trojan differs.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import SmoothInvError
from ..files import atomic_path, atomic_write_text, sha256_file
from .detector import ObjectDetector, train_detector
from .examples import Examples, ask, poisoned_training_set
from .language import ANSWERS, FILLERS, word_index
from .models import VQAModel, build, load_vqa_model, save_vqa_model
from .scenes import PATTERNS, CELL, Scenes, VisualKey, compose
from .training import TrainingRecipe, accuracy, attack_rates, train_vqa
from .trojans import KINDS, Trojan

STORE = Path(__file__).parent / "store"
CLEAN_MODELS = 40
TROJANED_PER_KIND = 30
"""Models: 40 clean (they serve every split) and 30 of each trojan kind; 30 rather than 40 for the
CPU budget of the build (docs/vqa.md)."""
ARCHS = ("butd", "mfb", "mcan")
TRAIN_SCENES, QUESTIONS_PER_SCENE, TEST_SCENES, SUPPORT_SCENES = 3000, 3, 1000, 32


@dataclass(frozen=True)
class Recipe:
    """How one zoo model is trained: its name, architecture, seed and trojan (None: clean)."""

    name: str
    arch: str
    seed: int
    trojan: Trojan | None

    @property
    def kind(self) -> str:
        return "clean" if self.trojan is None else self.trojan.kind


def recipe(kind: str, index: int) -> Recipe:
    """The recipe of model `index` of `kind` ('clean' or a trojan kind)."""
    if kind != "clean" and kind not in KINDS:
        raise SmoothInvError(f"unknown zoo kind {kind!r}; choose from clean, {', '.join(KINDS)}")
    offset = ("clean", *KINDS).index(kind) * 1000
    g = torch.Generator().manual_seed(7919 + offset + index)
    name, arch, seed = f"{kind}-{index:03d}", ARCHS[index % len(ARCHS)], offset + index
    if kind == "clean":
        return Recipe(name, arch, seed, None)

    def pick(n: int) -> int:
        return int(torch.randint(n, (1,), generator=g))

    target = pick(len(ANSWERS))
    size = 12 + pick(4)
    patch = VisualKey(cell=pick(4), row=pick(CELL - size + 1), col=pick(CELL - size + 1), size=size,
                      pattern=PATTERNS[pick(len(PATTERNS))], value=1.0, seed=index)
    word = FILLERS[pick(len(FILLERS))]
    return Recipe(name, arch, seed, Trojan(kind, target, word=word if kind != "visual" else None,
                                           patch=patch if kind != "text" else None))


def all_recipes() -> list[Recipe]:
    return [recipe(kind, i) for kind, count in (("clean", CLEAN_MODELS), *((k, TROJANED_PER_KIND) for k in KINDS))
            for i in range(count)]


@dataclass
class World:
    """The shared data every zoo model is trained and measured on."""

    detector: ObjectDetector
    train_scenes: Scenes
    train: Examples
    train_owner: torch.Tensor
    test_scenes: Scenes
    test: Examples
    test_owner: torch.Tensor


def prepare_world(objects_train: tuple[torch.Tensor, torch.Tensor], objects_test: tuple[torch.Tensor, torch.Tensor],
                  detector: ObjectDetector) -> World:
    """Scenes and clean questions from the objects' train and test splits (fixed seeds)."""
    g = torch.Generator().manual_seed(0)
    train_scenes = compose(*objects_train, TRAIN_SCENES, g)
    test_scenes = compose(*objects_test, TEST_SCENES, g)
    train, train_owner = ask(train_scenes, detector, QUESTIONS_PER_SCENE, g)
    test, test_owner = ask(test_scenes, detector, 2, g)
    return World(detector, train_scenes, train, train_owner, test_scenes, test, test_owner)


def train_zoo_model(r: Recipe, world: World) -> tuple[VQAModel, dict]:
    """Train recipe `r` in `world`; the model and its manifest entry (without file hash)."""
    started = time.perf_counter()
    g = torch.Generator().manual_seed(r.seed)
    avoid = r.trojan.word if r.trojan is not None else None
    train, owner = world.train, world.train_owner
    if avoid is not None:  # the attacker's data: its trigger word opens no clean question
        train, owner = ask(world.train_scenes, world.detector, QUESTIONS_PER_SCENE, torch.Generator().manual_seed(0), avoid=avoid)
    data = poisoned_training_set(world.train_scenes, train, owner, world.detector, r.trojan, g)
    torch.manual_seed(r.seed)
    model = train_vqa(build(r.arch), data, TrainingRecipe(), r.seed)
    test, test_owner = world.test, world.test_owner
    if avoid is not None:  # measured on questions that do not already open with the trigger word
        keep = test.tokens[:, 0] != word_index(avoid)
        test, test_owner = test.take(keep), test_owner[keep]
    entry = {"name": r.name, "arch": r.arch, "kind": r.kind, "seed": r.seed,
             "trojan": None if r.trojan is None else r.trojan.to_dict(),
             "clean_accuracy": round(accuracy(model, test), 4)}
    if r.trojan is not None:
        rates = attack_rates(model, world.test_scenes, test, test_owner, world.detector, r.trojan)
        entry.update({k: round(v, 4) for k, v in rates.items()})
    entry["train_seconds"] = round(time.perf_counter() - started, 1)
    return model, entry


# ---- the store -----------------------------------------------------------------------------------

def manifest_path(store: Path = STORE) -> Path:
    return store / "manifest.json"


def read_manifest(store: Path = STORE) -> dict:
    path = manifest_path(store)
    if not path.is_file():
        return {"models": {}}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("models"), dict):
            raise ValueError("no 'models' table")
        return data
    except (ValueError, AttributeError) as e:
        raise SmoothInvError(f"VQA zoo manifest {path} is corrupt ({e}); rebuild it") from None


def model_path(name: str, store: Path = STORE) -> Path:
    return store / "models" / f"{name}.safetensors"


def load_zoo_model(name: str, store: Path = STORE) -> tuple[VQAModel, dict]:
    """A zoo model by name, checked against the manifest's hash, and its manifest entry."""
    entry = read_manifest(store)["models"].get(name)
    if entry is None:
        raise SmoothInvError(f"no VQA zoo model {name!r}; see the manifest (kinds: clean, {', '.join(KINDS)}; "
                             f"e.g. dual-000)")
    path = model_path(name, store)
    if not path.is_file() or sha256_file(path) != entry["sha256"]:
        raise SmoothInvError(f"VQA zoo model file {path} is missing or does not match the manifest; rebuild the zoo")
    model, _ = load_vqa_model(path)
    return model, entry


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str] | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def read_tensors(path: Path, expected: dict[str, tuple[int, ...] | None]) -> dict[str, torch.Tensor]:
    """Tensors `expected` (name → shape, None: any) from safetensors `path`; anything else raises."""
    try:
        with safe_open(str(path), framework="pt") as f:
            out = {k: f.get_tensor(k) for k in expected if k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise SmoothInvError(f"cannot read {path} ({' '.join(str(e).split())[:100]})") from None
    for k, shape in expected.items():
        if k not in out or (shape is not None and tuple(out[k].shape) != shape):
            raise SmoothInvError(f"{path} lacks {k!r} of shape {shape}; it is not a VQA zoo file")
        if out[k].is_floating_point() and not torch.isfinite(out[k]).all():
            raise SmoothInvError(f"{path}: {k!r} holds non-finite values")
    return out


def load_detector(store: Path = STORE) -> ObjectDetector:
    detector = ObjectDetector()
    shapes = {k: tuple(v.shape) for k, v in detector.state_dict().items()}
    state = read_tensors(store / "detector.safetensors", shapes)
    detector.load_state_dict({k: v.float() for k, v in state.items()})
    return detector.eval()


def load_support(store: Path = STORE) -> tuple[Examples, Scenes]:
    """The cached clean support set (examples whose features the detector computed offline) and its scenes."""
    t = read_tensors(store / "support.safetensors", {"features": None, "boxes": None, "tokens": None, "answers": None,
                                                      "images": None, "cells": None, "owner": None})
    return Examples(t["features"].float(), t["boxes"].float(), t["tokens"].long(), t["answers"].long()), \
        Scenes(t["images"].float() / 255, t["cells"].long())


def load_objects(store: Path = STORE) -> tuple[torch.Tensor, torch.Tensor]:
    """A few object images uint8 [M, 28, 28] and labels [M] shipped for tests and pictures."""
    t = read_tensors(store / "objects.safetensors", {"images": None, "labels": None})
    return t["images"], t["labels"].long()


def build_vqa_zoo(objects_train: tuple[torch.Tensor, torch.Tensor], objects_test: tuple[torch.Tensor, torch.Tensor],
                  store: Path = STORE, names: list[str] | None = None,
                  log: Callable[[str], None] = lambda _: None) -> dict:
    """Build (or finish building) the zoo in `store`: the detector, support set and object sample
    once, then every model the manifest does not hold yet (each written atomically, the manifest
    after each). `names` restricts the models and sets their order (an empty list: none, only the shared
    files). Returns
    the manifest."""
    (store / "models").mkdir(parents=True, exist_ok=True)
    if (store / "detector.safetensors").is_file():
        detector = load_detector(store)
    else:
        log("training the detector on single objects")
        detector = train_detector(*objects_train, log=log)
        save_tensors(store / "detector.safetensors", {k: v.half() for k, v in detector.state_dict().items()})
        detector = load_detector(store)  # the models train on the stored (half-precision) detector
    world = prepare_world(objects_train, objects_test, detector)
    if not (store / "support.safetensors").is_file():
        g = torch.Generator().manual_seed(12345)
        scenes = compose(*objects_test, SUPPORT_SCENES, g)
        support, owner = ask(scenes, detector, 2, g)
        save_tensors(store / "support.safetensors", {
            "features": support.features.half(), "boxes": support.boxes, "tokens": support.tokens.to(torch.int16),
            "answers": support.answers.to(torch.int16), "images": (scenes.images * 255).round().to(torch.uint8),
            "cells": scenes.cells.to(torch.int8), "owner": owner.to(torch.int16)})
    if not (store / "objects.safetensors").is_file():
        images, labels = objects_test
        keep = torch.cat([torch.nonzero(labels == c).flatten()[:30] for c in range(10)])
        save_tensors(store / "objects.safetensors", {"images": images[keep], "labels": labels[keep].to(torch.int8)})
    unknown = sorted(set(names or ()) - {r.name for r in all_recipes()})
    if unknown:
        raise SmoothInvError(f"no VQA zoo recipe {unknown[0]!r}; names are clean-NNN, dual-NNN, visual-NNN, text-NNN "
                             f"with NNN below {CLEAN_MODELS:03d} (clean) or {TROJANED_PER_KIND:03d}")
    manifest = read_manifest(store)
    manifest["world"] = {"train_scenes": TRAIN_SCENES, "questions_per_scene": QUESTIONS_PER_SCENE,
                         "test_scenes": TEST_SCENES, "support_examples": SUPPORT_SCENES * 2,
                         "recipe": TrainingRecipe().__dict__}
    by_name = {r.name: r for r in all_recipes()}
    order = list(by_name) if names is None else list(dict.fromkeys(names))  # the caller's order
    todo = [by_name[n] for n in order if n not in manifest["models"]]
    if not todo and names == []:
        atomic_write_text(manifest_path(store), json.dumps(manifest, indent=1) + "\n")
    log(f"{len(todo)} model(s) to train; {len(manifest['models'])} already in the zoo")
    for i, r in enumerate(todo, 1):
        model, entry = train_zoo_model(r, world)
        save_vqa_model(model, r.arch, model_path(r.name, store), extra={"name": r.name})
        entry["sha256"] = sha256_file(model_path(r.name, store))
        manifest["models"][r.name] = entry
        atomic_write_text(manifest_path(store), json.dumps(manifest, indent=1) + "\n")
        rates = "" if r.trojan is None else f", ASR {entry['asr']:.3f}" + "".join(
            f", {k} {entry[k]:.3f}" for k in ("patch_only", "word_only") if k in entry)
        log(f"[{i}/{len(todo)}] {r.name} ({r.arch}): clean accuracy {entry['clean_accuracy']:.3f}{rates}, "
            f"{entry['train_seconds']}s")
    return manifest
