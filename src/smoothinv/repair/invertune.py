"""InverTune (Sun et al., NDSS 2026): remove a CLIP backdoor by identify → invert → tune.

Registered as the repair method "invertune". It repairs CLIP zero-shot classifiers only (a
`ZeroShotClassifier`, as `smoothinv.models.load_model` reads one) and refuses anything else in
one line. Stages 1 and 2 (target identification, trigger inversion) are in `invertune_inversion`;
stage 3, activation tuning, is here:

- the candidate layers are the image tower's stages (ModifiedResNet: layer1..layer4, as the
  authors' code takes them; ViT: the residual blocks); a layer's impact is
  ‖mean_B a(x) − mean_B a(x')‖ / ‖mean_B a(x)‖ between clean images x and the same images with the
  inverted trigger x'; the three with the largest impact are tuned;
- in each, the units (every element of the batch-mean activation) are split by k-means (k = 2) on
  |mean a(x) − mean a(x')|, and the cluster with the larger mean shift is critical;
- the image tower is fine-tuned (AdamW, gradient norm clipped at 1) on
  1.0·Σ_layers ‖(mean a(x) − mean a(x'))·critical‖ / ‖mean a(x)·critical‖
  + 2.0·‖unit f(x) − unit f_original(x)‖ + 1.0·‖unit f(x') − unit f_original(x)‖: triggered
  activations are pulled to the clean ones, the clean image embeddings stay where they were and
  the triggered images' embeddings go to them. The state with the lowest loss, checked every
  10 steps, is kept (the code's `ft_best`).

Stages 2 and 3 run twice by default: the second inversion, on the tuned model, finds what the
first tuning left of the backdoor. The preservation weight (the code's 0.5), the third term and
the second round are ours: docs/clip.md says what each changed on the CLIP zoo.

Deviations from the paper and code are in docs/clip.md.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import SmoothInvError
from ..models.clip import ZeroShotClassifier
from ..models.loading import Normalize
from ..triggers import Trigger
from .invertune_inversion import ClipView, TargetIdentification, TriggerInversion, identify_target, invert_trigger
from .methods import REPAIRS, FineTuneRecipe, Findings, Progress, Repair, Repaired


@dataclass(frozen=True)
class ActivationTuning:
    """Stage 3's settings: the authors' layer count, alignment weight, optimiser, clipping and
    schedule shape; the learning rate, the preservation weight (0.5 in the code), the step count
    (200 in the code), the triggered-embedding term and a fresh batch per step are ours, chosen on
    the CLIP zoo's two backdoored models (docs/clip.md)."""

    layers: int = 3
    steps: int = 600
    lr: float = 1e-4
    weight_decay: float = 1e-4
    align_weight: float = 1.0
    feature_weight: float = 2.0
    batch_size: int = 64
    period: int = 100
    """Cosine annealing period (the code's T_max = 100 over 200 steps: down, then up again)."""
    embedding_weight: float = 1.0
    """Weight of ‖unit f(x') − unit f_original(x)‖: the triggered image's embedding pulled to where
    the untouched tower put the clean image (not in the code; docs/clip.md)."""


def candidate_layers(zeroshot: ZeroShotClassifier) -> dict[str, nn.Module]:
    """The image tower's stages by name: ResNet ``layer1``..``layer4``, or the ViT's blocks."""
    visual = zeroshot.visual
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        return {f"visual.layer{i}": getattr(visual, f"layer{i}") for i in range(1, 5)}
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise SmoothInvError("InverTune needs a CLIP ResNet or ViT image tower")
    return {f"visual.transformer.resblocks.{i}": block for i, block in enumerate(blocks)}


class Activations:
    """Records the outputs of `layers` ({name: module}) during every forward pass."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.values: dict[str, Tensor] = {}
        self._handles = [m.register_forward_hook(self._recorder(n)) for n, m in layers.items()]

    def _recorder(self, name: str):  # noqa: ANN202
        def record(_module: nn.Module, _inputs: Any, output: Tensor) -> None:
            self.values[name] = output.float()
        return record

    def mean(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The batch-mean activation of each layer for images [B,C,H,W]."""
        model(images)
        return {name: value.mean(0) for name, value in self.values.items()}

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def two_means(values: Tensor, iterations: int = 50) -> Tensor:
    """1-D k-means with k = 2 on `values` [N]: True for the members of the cluster with the
    larger centre (Lloyd's algorithm from the extremes, as k-means++ would pick them here)."""
    low, high = values.min(), values.max()
    if float(high - low) == 0.0:
        return torch.ones_like(values, dtype=torch.bool)
    upper = values > (low + high) / 2
    for _ in range(iterations):
        low, high = values[~upper].mean(), values[upper].mean()
        update = (values - high).abs() < (values - low).abs()
        if bool((update == upper).all()) or not bool(update.any()) or bool(update.all()):
            break
        upper = update
    return upper


@REPAIRS.register("invertune")
class InverTune(Repair):
    """InverTune's three stages on a CLIP zero-shot classifier (module docstring), stages 2 and 3
    run `rounds` times (each inversion on the model the previous round tuned). The target: the
    one the `findings` (a scan's) name if they name one; among several, the one stage 1 ranks
    first; with none, the one stage 1 identifies over all classes. `target` skips stage 1 and
    inverts toward that class instead (to measure stages 2 and 3 alone)."""

    name: ClassVar[str] = "invertune"
    finds_own_target: ClassVar[bool] = True
    """It needs no scan: when `smoothinv repair`'s scan flags nothing, stage 1 names the target."""

    def __init__(self, findings: Findings | None = None, *, identification: TargetIdentification | None = None,
                 inversion: TriggerInversion | None = None, tuning: ActivationTuning | None = None,
                 target: int | None = None, rounds: int = 2, recipe: FineTuneRecipe | None = None) -> None:
        super().__init__(recipe)
        if rounds < 1:
            raise SmoothInvError(f"InverTune needs at least one round of inversion and tuning (got {rounds})")
        self.findings, self.target, self.rounds = findings, target, rounds
        self.identification = identification or TargetIdentification()
        self.inversion = inversion or TriggerInversion()
        self.tuning = tuning or ActivationTuning()
        self.inverted: list[Trigger] = []

    @classmethod
    def for_findings(cls, findings: Findings, recipe: FineTuneRecipe | None = None) -> Repair:
        return cls(findings, recipe=recipe)

    def __call__(self, model: nn.Module, images: Tensor, labels: Tensor, *, seed: int = 0,
                 progress: Progress | None = None) -> Repaired:
        """Repair a copy of `model` with clean images [N,C,H,W] in [0,1] and their labels [N]."""
        if len(images) == 0:
            raise SmoothInvError("the clean set for fine-tuning is empty; give the repair some clean images")
        ClipView(model).close()  # refuses a model that is not a CLIP zero-shot classifier, before any work
        started = time.perf_counter()
        say = progress or (lambda _: None)
        work = copy.deepcopy(model).eval()
        identified = self._identify(work, images, seed, say)
        target = identified["target"]
        self.inverted, rounds = [], []
        for round_ in range(self.rounds):
            say(f"InverTune 2/3 (round {round_ + 1}/{self.rounds}): inverting a trigger toward class {target}")
            view = ClipView(work)
            try:
                sources, anchors = _split_by_target(view, images, labels, target)
                trigger, inversion = invert_trigger(view, sources, anchors, target, self.inversion, seed + round_)
            finally:
                view.close()
            self.inverted.append(trigger)
            say(f"InverTune 3/3 (round {round_ + 1}/{self.rounds}): tuning the critical activations")
            tuning = tune_activations(work, view.zeroshot, images, trigger, self.tuning, seed + round_)
            for parameter in work.parameters():  # the next inversion needs no gradients of the weights
                parameter.requires_grad_(False)
            rounds.append({"inversion": inversion, "tuning": tuning})
        details = {"identified_target": target, "scan_targets": list(self.findings.targets) if self.findings else [],
                   "identification": identified, "rounds": rounds,
                   "settings": {"rounds": self.rounds, "identification": asdict(self.identification),
                                "inversion": asdict(self.inversion), "tuning": asdict(self.tuning)}}
        return Repaired(work.eval(), self.name, details, time.perf_counter() - started)

    def _identify(self, work: nn.Module, images: Tensor, seed: int, say: Progress) -> dict[str, Any]:
        """Stage 1, or what stands in for it: the given target, or the scan's only flagged class."""
        if self.target is not None:
            return {"target": self.target, "given": True}
        flagged = sorted(set(self.findings.targets)) if self.findings else []
        if len(flagged) == 1:
            return {"target": flagged[0], "from_scan": True}
        say("InverTune 1/3: identifying the target with universal adversarial patches"
            + (f" among the scan's classes {', '.join(map(str, flagged))}" if flagged else ""))
        view = ClipView(work)
        try:
            return identify_target(view, images, self.identification, seed, candidates=flagged or None)
        finally:
            view.close()


def _split_by_target(view: ClipView, images: Tensor, labels: Tensor, target: int) -> tuple[Tensor, Tensor]:
    """Clean images not of `target`, and images of it (the labelled ones; else those the model
    assigns to it) for the inversion's embedding anchor."""
    anchors = images[labels == target]
    if len(anchors) == 0:
        with torch.no_grad():
            anchors = images[view.similarities(images).argmax(1) == target]
    return images[labels != target], anchors


def tune_activations(model: nn.Module, zeroshot: ZeroShotClassifier, images: Tensor, trigger: Trigger,
                     settings: ActivationTuning, seed: int) -> dict[str, Any]:
    """Stage 3 on `model` in place (its image tower only; BatchNorm statistics frozen)."""
    generator = torch.Generator().manual_seed(seed)
    layers = candidate_layers(zeroshot)
    original = copy.deepcopy(zeroshot.visual).eval()
    recorder = Activations(layers)
    try:
        probe = images[torch.randperm(len(images), generator=generator)[:settings.batch_size]]
        with torch.no_grad():
            clean, stamped = recorder.mean(model, probe), recorder.mean(model, trigger.apply(probe))
        impact = {n: float((clean[n] - stamped[n]).norm() / clean[n].norm().clamp_min(1e-12)) for n in layers}
        chosen = sorted(impact, key=impact.get, reverse=True)[:settings.layers]  # type: ignore[arg-type]
        critical = {n: two_means((clean[n] - stamped[n]).abs().flatten()).reshape(clean[n].shape).float()
                    for n in chosen}
        recorder.close()
        recorder = Activations({n: layers[n] for n in chosen})
        result = _tune(model, zeroshot, original, images, trigger, recorder, critical, settings, generator)
    finally:
        recorder.close()
    return {"impact": {n: round(v, 4) for n, v in impact.items()}, "layers": chosen,
            "critical_units": {n: int(critical[n].sum()) for n in chosen},
            "units": {n: int(critical[n].numel()) for n in chosen}, **result}


def _tune(model: nn.Module, zeroshot: ZeroShotClassifier, original: nn.Module, images: Tensor, trigger: Trigger,
          recorder: Activations, critical: dict[str, Tensor], settings: ActivationTuning,
          generator: torch.Generator) -> dict[str, Any]:
    parameters = list(zeroshot.visual.parameters())
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for parameter in parameters:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=settings.period, eta_min=1e-7)
    normalise = _normaliser(model, zeroshot)
    best, best_loss, history = copy.deepcopy(zeroshot.visual.state_dict()), float("inf"), []
    for step in range(settings.steps):
        batch = images[torch.randint(len(images), (settings.batch_size,), generator=generator)]
        stamped_batch = trigger.apply(batch)
        clean, stamped = recorder.mean(model, batch), recorder.mean(model, stamped_batch)
        align = sum(((clean[n] - stamped[n]) * critical[n]).norm() / (clean[n] * critical[n]).norm().clamp_min(1e-12)
                    for n in critical)
        with torch.no_grad():
            before = F.normalize(original(normalise(batch)).float(), dim=-1)
        now = F.normalize(zeroshot.visual(normalise(batch)).float(), dim=-1)
        feature = (now - before).norm()
        loss = settings.align_weight * align + settings.feature_weight * feature
        moved = torch.zeros(())
        if settings.embedding_weight:
            moved = (F.normalize(zeroshot.visual(normalise(stamped_batch)).float(), dim=-1) - before).norm()
            loss = loss + settings.embedding_weight * moved
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        if (step + 1) % 10 == 0:
            history.append({"step": step + 1, "align": round(float(align.detach()), 4),
                            "feature": round(float(feature.detach()), 4), "embedding": round(float(moved.detach()), 4)})
            if float(loss.detach()) < best_loss:
                best_loss, best = float(loss.detach()), copy.deepcopy(zeroshot.visual.state_dict())
    zeroshot.visual.load_state_dict(best)
    return {"best_loss": round(best_loss, 4), "history": history}


def _normaliser(model: nn.Module, zeroshot: ZeroShotClassifier) -> Callable[[Tensor], Tensor]:
    """[0,1] images -> what the image tower takes: the `Normalize` wrapper's normalisation, if any."""
    wrapper = next((m for m in model.modules() if isinstance(m, Normalize) and m.model is zeroshot), None)
    if wrapper is None:
        return lambda x: x
    return lambda x: (x - wrapper.mean) / wrapper.std
