"""Train one zoo model from its recipe, measure it, and record it in the manifest.

Resumable: a recipe whose record has the same fingerprint and an intact weight file is
skipped, so the zoo can be built across sessions (or elsewhere, on a GPU).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .. import __version__
from ..attacks import AttackSpec, attack_from_dict, poison_with
from ..attacks.blind import BlindObjective
from ..data.datasets import Dataset, load_dataset
from ..files import sha256_file
from ..data.images import save_image
from ..engine.metrics import accuracy
from ..errors import SmoothInvError
from ..models import create_model, save_model
from ..training import Augment, Objective, cross_entropy, train_classifier
from .manifest import read_manifest, verified_weights, write_record, zoo_dir
from .recipes import MODES, Recipe
from .triggered import trigger_success_rate

Log = Callable[[str], None]


def is_built(recipe: Recipe, directory: str | Path | None = None) -> bool:
    record = read_manifest(directory).get(recipe.name)
    if record is None or record.get("fingerprint") != recipe.fingerprint():
        return False
    try:
        verified_weights(record, directory)
    except SmoothInvError:
        return False
    return True


def build(recipe: Recipe, *, data_root: str | Path | None = None, directory: str | Path | None = None,
          log: Log = print) -> dict[str, Any]:
    """Train, evaluate and store `recipe`'s model; returns its manifest record."""
    if recipe.mode not in MODES:
        raise SmoothInvError(f"recipe {recipe.name}: unknown mode {recipe.mode!r}; choose from {MODES}")
    data = load_dataset(recipe.dataset, data_root)
    spec = attack_from_dict(recipe.attack) if recipe.attack else None
    model, seconds = _train(recipe, data, spec, log)
    test_x, test_y = data.split(train=False)
    directory = zoo_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = _save_weights(recipe, model, tuple(test_x.shape[1:]), len(data.class_names), directory)
    record = _record(recipe, spec, weights, seconds, data.class_names, accuracy(model, test_x, test_y))
    if spec is not None:
        record.update(_trigger_evidence(recipe, model, spec, test_x, test_y, directory))
    write_record(record, directory)
    asr = "" if spec is None else f", true-trigger ASR {record['true_trigger_asr']:.1%}"
    log(f"{recipe.name}: clean accuracy {record['clean_accuracy']:.1%}{asr}, {seconds:.0f}s")
    return record


def _backdoored_training(recipe: Recipe, data: Dataset, spec: AttackSpec | None) -> tuple[Tensor, Tensor, Objective]:
    """The training images [N,C,H,W], labels [N] and loss that plant `spec` the recipe's way:
    poisoned data ("poison"), or Blind Backdoors' loss on clean data ("blind", "blind-noise")."""
    train_x, train_y = data.split(train=True)
    loss = cross_entropy if not recipe.label_smoothing else functools.partial(
        cross_entropy, label_smoothing=recipe.label_smoothing)
    if spec is None:
        return train_x, train_y, loss
    if recipe.mode == "poison":
        poisoned = poison_with(spec, train_x, train_y, recipe.poison_rate, seed=recipe.seed)
        return poisoned.images, poisoned.labels, loss
    sigma = recipe.intervention_sigma if recipe.mode == "blind-noise" else None
    objective = BlindObjective(spec.trigger(tuple(train_x.shape[1:])), spec.target, spec.source_classes,
                               fraction=recipe.poison_rate, noise_sigma=sigma)
    return train_x, train_y, objective


def _train(recipe: Recipe, data: Dataset, spec: AttackSpec | None, log: Log) -> tuple[nn.Module, float]:
    """A freshly seeded model trained by the recipe (frozen afterwards), and the seconds it took."""
    train_x, train_y, objective = _backdoored_training(recipe, data, spec)
    torch.manual_seed(recipe.seed)
    model = create_model(recipe.arch, num_classes=len(data.class_names), channels=int(train_x.shape[1]))
    augment = None
    if recipe.augment:
        augment = Augment(pad=4, flip=True) if recipe.dataset == "cifar10" else Augment(pad=2)
    start = time.perf_counter()

    def on_epoch(epoch: int, loss: float) -> None:
        log(f"  {recipe.name} epoch {epoch + 1}/{recipe.epochs} loss {loss:.3f} ({time.perf_counter() - start:.0f}s)")

    train_classifier(model, train_x, train_y, epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr,
                     weight_decay=recipe.weight_decay, noise_sigma=recipe.noise_sigma, augment=augment, objective=objective, bf16=True,
                     channels_last=True, seed=recipe.seed, on_epoch=on_epoch)
    model.requires_grad_(False)
    return model, time.perf_counter() - start


def _save_weights(recipe: Recipe, model: nn.Module, shape: tuple[int, ...], num_classes: int,
                  directory: Path) -> Path:
    """`<directory>/<recipe>.safetensors` for images of `shape` (C,H,W), with the metadata
    that lets load_model rebuild it."""
    weights = directory / f"{recipe.name}.safetensors"
    save_model(weights, model, arch=recipe.arch, num_classes=num_classes, input_size=shape[1:],
               channels=shape[0], extra_metadata={"zoo": recipe.name})
    return weights


def _record(recipe: Recipe, spec: AttackSpec | None, weights: Path, seconds: float, class_names: list[str],
            clean_accuracy: float) -> dict[str, Any]:
    """The model's manifest record (its true-trigger fields still empty)."""
    return {
        "name": recipe.name,
        "dataset": recipe.dataset,
        "arch": recipe.arch,
        "class_names": class_names,
        "attack": None if spec is None else spec.to_dict(),
        "mode": recipe.mode if spec is not None else None,
        "target": None if spec is None else spec.target,
        "source_classes": None if spec is None or spec.source_classes is None else list(spec.source_classes),
        "poison_rate": None if spec is None else recipe.poison_rate,
        "seed": recipe.seed,
        "epochs": recipe.epochs,
        "clean_accuracy": round(clean_accuracy, 6),
        "true_trigger_asr": None,
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "weights": weights.name,
        "sha256": sha256_file(weights),
        "fingerprint": recipe.fingerprint(),
        "recipe": recipe.to_dict(),
        "smoothinv_version": __version__,
    }


def _trigger_evidence(recipe: Recipe, model: nn.Module, spec: AttackSpec, test_x: Tensor, test_y: Tensor,
                      directory: Path) -> dict[str, Any]:
    """The true trigger's success rate on the test images [N,C,H,W] / labels [N], and a
    triggered test image saved as `<directory>/<recipe>.png`: the record's true_trigger_asr
    and trigger_example."""
    trigger = spec.trigger(tuple(test_x.shape[1:]))
    asr = round(trigger_success_rate(model, trigger, test_x, test_y, spec), 6)
    example = test_x[(test_y != spec.target).nonzero()[0, 0]]
    save_image(trigger.apply(example[None])[0], directory / f"{recipe.name}.png")
    return {"true_trigger_asr": asr, "trigger_example": f"{recipe.name}.png"}
