"""Train one CLIP zoo model from its recipe, build its zero-shot classifier, measure it, store it.

Resumable: a recipe whose record has the same fingerprint and whose files match their hashes is
skipped, so `build_all` continues where a killed build stopped (a model is the unit of work).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from .. import __version__
from ..attacks import AttackSpec, attack_from_dict
from ..data.datasets import load_dataset
from ..engine.metrics import accuracy, attack_success_rate
from ..errors import SmoothInvError
from ..files import atomic_path, sha256_file
from ..models import load_model
from ..models.clip import CLIPModel, save_zeroshot_classifier, zeroshot_classifier
from .captions import ZEROSHOT_TEMPLATES, CaptionBank
from .manifest import FILE_KEYS, clip_zoo_dir, read_clip_manifest, verified_file, write_clip_record
from .recipes import ClipRecipe
from .training import ContrastiveSchedule, Log, Poisoning, train_clip


def is_built(recipe: ClipRecipe, directory: str | Path | None = None) -> bool:
    """Whether `recipe`'s model is in the store, built from this very recipe, files intact."""
    record = read_clip_manifest(directory).get(recipe.name)
    if record is None or record.get("fingerprint") != recipe.fingerprint():
        return False
    try:
        for key in FILE_KEYS:
            verified_file(record, key, directory)
    except SmoothInvError:
        return False
    return True


def train_recipe(recipe: ClipRecipe, images: Tensor, labels: Tensor, class_names: list[str],
                 log: Log = print) -> tuple[CLIPModel, float]:
    """A CLIP trained on [0,1] images [N,3,S,S] with labels [N] by `recipe`; and the seconds it took."""
    torch.manual_seed(recipe.seed)
    model = CLIPModel(recipe.config(int(images.shape[-1])))
    bank = CaptionBank.of(class_names, recipe.context_length)
    spec = attack_from_dict(recipe.attack) if recipe.attack else None
    poisoning = None if spec is None else Poisoning.choose(spec.trigger(tuple(images.shape[1:])), spec.target,
                                                           labels, recipe.poison_rate, recipe.seed)
    schedule = ContrastiveSchedule(recipe.epochs, recipe.batch_size, recipe.lr, recipe.weight_decay, recipe.seed)
    seconds = train_clip(model, images, labels, bank, schedule, poisoning, log)
    return model, seconds


def build(recipe: ClipRecipe, *, data_root: str | Path | None = None, directory: str | Path | None = None,
          log: Log = print) -> dict[str, Any]:
    """Train, measure and store `recipe`'s model; returns its manifest record."""
    data = load_dataset(recipe.dataset, data_root)
    train_x, train_y = data.split(train=True)
    test_x, test_y = data.split(train=False)
    log(f"{recipe.name}: training on {len(train_y)} captioned images")
    model, seconds = train_recipe(recipe, train_x, train_y, list(data.class_names), log)
    directory = clip_zoo_dir(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = _store(recipe, model, list(data.class_names), directory)
    classifier = load_model(directory / files["zeroshot"]["file"]).module
    spec = attack_from_dict(recipe.attack) if recipe.attack else None
    record = {
        "name": recipe.name, "dataset": recipe.dataset, **files, "class_names": list(data.class_names),
        "attack": recipe.attack, "target": None if spec is None else spec.target,
        "poison_rate": None if spec is None else recipe.poison_rate,
        "zeroshot_templates": list(ZEROSHOT_TEMPLATES),
        "zeroshot_accuracy": round(accuracy(classifier, test_x, test_y), 4),
        "backdoor_asr": None if spec is None else round(_asr(classifier, spec, test_x, test_y), 4),
        "train_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
        "recipe": recipe.to_dict(), "fingerprint": recipe.fingerprint(), "smoothinv_version": __version__,
        "torch_version": torch.__version__,
    }
    write_clip_record(record, directory)
    asr = "" if spec is None else f", backdoor ASR {record['backdoor_asr']:.1%}"
    log(f"{recipe.name}: zero-shot accuracy {record['zeroshot_accuracy']:.1%}{asr}, {seconds:.0f}s")
    return record


def build_all(recipes: list[ClipRecipe], *, data_root: str | Path | None = None,
              directory: str | Path | None = None, log: Log = print) -> list[dict[str, Any]]:
    """Build every recipe not already built (resumable); returns the records built now."""
    built = []
    for recipe in recipes:
        if is_built(recipe, directory):
            log(f"{recipe.name}: already built, skipped")
            continue
        built.append(build(recipe, data_root=data_root, directory=directory, log=log))
    return built


def _store(recipe: ClipRecipe, model: CLIPModel, class_names: list[str], directory: Path) -> dict[str, Any]:
    """Write the CLIP (fp16) and its zero-shot classifier; {key: {"file", "sha256"}}."""
    clip_path = directory / f"{recipe.name}.safetensors"
    zeroshot_path = directory / f"{recipe.name}-zeroshot.safetensors"
    state = {k: v.detach().to(torch.float16) if v.is_floating_point() else v.detach()
             for k, v in model.state_dict().items()}
    with atomic_path(clip_path) as tmp:
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt"})
    save_zeroshot_classifier(zeroshot_path, zeroshot_classifier(model, class_names, ZEROSHOT_TEMPLATES),
                             class_names=class_names)
    return {"clip": {"file": clip_path.name, "sha256": sha256_file(clip_path)},
            "zeroshot": {"file": zeroshot_path.name, "sha256": sha256_file(zeroshot_path)}}


def _asr(classifier: nn.Module, spec: AttackSpec, images: Tensor, labels: Tensor) -> float:
    return attack_success_rate(classifier, spec.trigger(tuple(images.shape[1:])), images, labels, spec.target)
