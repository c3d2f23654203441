"""Backdoor scan from one clean image: a perturbation toward every class, its transfer ASR,
a score per class and a verdict (see decision.py for the rule).

Every (class, grid point) is one row of the method's many-row entry point
(`Inverter.invert_rows`): SmoothInv runs them as one batched descent, so all classes and noise
copies share each forward pass and saturated rows stop costing compute; other methods run one
batch per grid point. The scan knows methods only through that contract.

The time budget bounds the whole scan (noise probe, synthesis and evaluation; see
budget.py). A checkpoint (checkpoint.py) saves the work as it goes, so that a killed scan,
rerun, continues where it stopped and gives the same result.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..engine.early_stop import DeadlinePassed, RowStopper
from ..engine.metrics import energy_concentration, hits_by_source, predict, triggered_hits
from ..engine.pgd import DescentCheckpoint
from ..engine.precision import precision_used, with_precision
from ..errors import SmoothInvError
from ..labels import eligible
from ..methods.base import InversionResult, RowControl
from ..methods.registry import MethodSpec, method_spec
from ..methods.eps import PAPER_EPS, eps_scale
from ..protocols.sweep import Grid, ProgressHook, grid_options
from .budget import BudgetExhausted, TimeBudget, evaluation_calls
from .decision import DecisionRule, class_scores, describe_small_outliers, flagged, small_outliers
from .noise_sink import NoiseSink, probe_noise_sink
from .screen import ClassScreen, ScreenedClass, ScreenSummary, bounded_scores, select_for_full

if TYPE_CHECKING:
    from .checkpoint import RunCheckpoint, ScanCheckpoint

EPS_MULTIPLIERS = (1.0, 2.0, 4.0, 8.0)
SCAN_SIGMAS = (0.25,)
EXHAUSTIVE_SIGMAS = (0.25, 0.5, 1.0)
"""The σ grid before issue 14. σ = 0.25 alone decided every model of the zoo benches as all three
did (docs/benchmarks.md, A faster scan), at a third of the rows."""
FALLBACK_SIGMAS = (0.12,)
PINNED_ASR = 0.1
"""If no class's perturbation flips even PINNED_ASR of the clean images at any (ε, σ), G did not
move: noise sends every image to one class with probability ≈ 1, so the gradient vanishes
(a trigger fired by noise itself does this; docs/benchmarks.md, HTBA). The scan then reruns at
FALLBACK_SIGMAS."""
ROW_ELEMENTS = 2**25
"""Image elements in one descent's rows (128 MB as float32); more classes are scanned in chunks."""


def scan_eps(shape: Sequence[int]) -> tuple[float, ...]:
    """The scan's default ε: the paper's ε=5, scaled to the input size, × (1, 2, 4, 8)."""
    base = PAPER_EPS[0] * eps_scale(shape)
    return tuple(round(base * m, 4) for m in EPS_MULTIPLIERS)


SCAN_METHOD = method_spec("smoothinv", steps=200, noise_samples=8)
"""The scan's default method: SmoothInv with fewer steps and noise copies than the paper's
inversion (docs/benchmarks.md, Reductions made for the CPU)."""


@dataclass(frozen=True)
class ScanSettings:
    """method: the inversion method and its configuration (grid axes are overridden per row);
    eps, sigmas: the grid (eps None: the paper's ε=5 scaled to the input × EPS_MULTIPLIERS);
    stop_prob: a row whose target probability reaches it stops (methods that can);
    time_budget: seconds the whole scan may take (noise probe, synthesis, evaluation,
    fallback rerun); max_batch: images per forward pass when measuring transfer and probing;
    probe_samples: noise copies per image of the noise-sink probe; rule: the transfer
    verdict (decision.py); fallback_sigmas, pinned_asr: the rerun when noise pins G; screen:
    the class screen of many-class models (screen.py; None: every class on the full grid);
    precision: how the descent runs the model (engine.precision: "auto" = bfloat16 autocast where
    the hardware has it); the noise probe and every ASR are measured in float32."""

    method: MethodSpec = SCAN_METHOD
    eps: tuple[float, ...] | None = None
    sigmas: tuple[float, ...] = SCAN_SIGMAS
    stop_prob: float | None = 0.99
    time_budget: float | None = None
    max_batch: int = 256
    probe_samples: int = 8
    seed: int = 0
    rule: DecisionRule = DecisionRule()
    fallback_sigmas: tuple[float, ...] = FALLBACK_SIGMAS
    pinned_asr: float = PINNED_ASR
    screen: ClassScreen | None = ClassScreen()
    precision: str = "auto"
    model_sigmas: bool = True
    """Scan at the σ the model declares (`declared_sigmas`) instead of `sigmas`, when it declares any."""

    @classmethod
    def exhaustive(cls, **changes: Any) -> ScanSettings:
        """Every class on the full grid in float32, as every scan ran before issue 14: σ ∈
        EXHAUSTIVE_SIGMAS, no class screen (`--exhaustive`)."""
        return cls(**{"sigmas": EXHAUSTIVE_SIGMAS, "screen": None, "precision": "fp32", "model_sigmas": False,
                      **changes})

    def for_model(self, model: nn.Module) -> ScanSettings:
        """These settings with the σ grid `model` declares, when `model_sigmas` lets it."""
        declared = declared_sigmas(model) if self.model_sigmas else None
        return self if declared is None else replace(self, sigmas=declared, model_sigmas=False)


def declared_sigmas(model: nn.Module) -> tuple[float, ...] | None:
    """The scan σ a kind of model declares as a class attribute `scan_sigmas` on itself or a
    submodule (a zero-shot CLIP does: docs/clip.md, Scan verdicts), else None."""
    for module in model.modules():
        sigmas = getattr(type(module), "scan_sigmas", None)
        if sigmas:
            return tuple(float(s) for s in sigmas)
    return None


@dataclass(frozen=True)
class RunRecord:
    """One config's outcome for a class. Only each ε's best run keeps its tensors, so memory does
    not grow with the number of σ."""

    config: dict[str, Any]
    asr: float
    initial_target_prob: float
    final_target_prob: float
    steps_run: int
    concentration: float = 0.0
    """engine.metrics.energy_concentration of the perturbation: near 1 when it sits on a patch."""

    @classmethod
    def of(cls, result: InversionResult, asr: float) -> RunRecord:
        return cls(result.config, asr, float(result.target_prob[0]), float(result.target_prob[-1]), len(result.loss) - 1,
                   energy_concentration(result.perturbation))


@dataclass
class Evidence:
    """A class's best perturbation over σ at one ε, its transfer ASR, and its ASR per source
    class (a label-specific backdoor flips only some classes)."""

    result: InversionResult
    asr: float
    asr_by_source: dict[int, float]


@dataclass
class ClassResult:
    """One scanned class: every config's record, the per-ε ASR, z-scores and score the decision
    rule gives it, and its evidence: the perturbation at the ε its score came from. (The highest
    ASR is usually at the largest ε, where every class has a universal perturbation; that
    picture would show nothing.) `candidates` holds the best run per ε until the rule picks;
    a flagged class keeps them afterwards as `alternatives` (the recovered triggers a repair
    unlearns, smoothinv.repair)."""

    label: int
    image_index: int
    runs: list[RunRecord]
    candidates: dict[float | None, Evidence]
    asr_by_eps: list[float] = field(default_factory=list)
    z_by_eps: list[float] = field(default_factory=list)
    score: float = 0.0
    flagged: bool = False
    evidence: Evidence | None = None
    alternatives: list[Evidence] = field(default_factory=list)

    def decide(self, eps: float | None) -> None:
        """Keep the evidence at `eps` (the best candidate if that ε never ran), and the other
        candidates as `alternatives` until the class is known not to be flagged."""
        self.evidence = self.candidates.get(eps) or max(self.candidates.values(), key=lambda e: e.asr)
        self.alternatives = [e for e in self.candidates.values() if e is not self.evidence]
        self.candidates = {}


@dataclass
class ScanResult:
    settings: ScanSettings
    eps: tuple[float, ...]
    sigmas: tuple[float, ...]
    noise_sink: NoiseSink | None
    classes: list[ClassResult]
    skipped: dict[int, str]
    image_predictions: list[int]
    seconds: dict[str, float]
    timed_out: bool
    rule: str = ""
    """The rule the verdict came from, in words."""
    fallback_from: dict[str, Any] | None = None
    """Set when this result comes from the fallback σ: the first grid's σ and highest ASR."""
    screen: ScreenSummary | None = None
    """Set when the class screen chose the classes run on the full grid (screen.py)."""
    precision: str = "fp32"
    """What the descent ran in ("bf16": engine.precision.Autocast)."""

    @property
    def max_asr(self) -> float:
        return max((max(c.asr_by_eps) for c in self.classes), default=0.0)

    @property
    def targets(self) -> list[int]:
        return [c.label for c in self.classes if c.flagged]

    @property
    def verdict(self) -> str:
        return "backdoored" if self.targets else "clean"


FallbackHook = Callable[[ScanResult, int], None]
"""Called with (the first grid's result, optimisation steps of the fallback rerun)."""


def scan(
    model: nn.Module,
    images: Sequence[Tensor],
    clean_images: Tensor,
    clean_labels: Tensor,
    num_classes: int,
    settings: ScanSettings = ScanSettings(),
    classes: Sequence[int] | None = None,
    progress: ProgressHook | None = None,
    on_fallback: FallbackHook | None = None,
    checkpoint: ScanCheckpoint | None = None,
) -> ScanResult:
    """Scan `classes` (default: all) of `model` using the clean image(s) [C,H,W].

    Each class is synthesised from the first image the model does not already assign to
    it (a perturbation toward an image's own class says nothing); a class with no such
    image is skipped. ASR is measured on clean_images [N,C,H,W] whose label is not the class.
    If no perturbation moved anything (see PINNED_ASR), the scan reruns at the fallback σ and
    records the first grid in `fallback_from`; `on_fallback` hears of the rerun before it starts.
    A model that declares its own scan σ (`declared_sigmas`) is scanned at it unless
    `settings.model_sigmas` is off; the result's `settings` say which σ ran.

    settings.time_budget bounds all of it: what the deadline cut is skipped with a reason, the
    verdict comes from what was evaluated, and `timed_out` is set (budget.py). A `checkpoint`
    (checkpoint.ScanCheckpoint) keeps finished work as the scan goes and resumes the work an
    identical scan saved before it was killed; the result is the same as an uninterrupted
    scan's. The caller discards the checkpoint once it has stored the result.
    """
    start = time.perf_counter()
    settings = settings.for_model(model)
    budget = TimeBudget(settings.time_budget, start)
    if checkpoint is not None:
        checkpoint.begin(model, images, clean_images, clean_labels, num_classes, settings, classes)
    once = functools.partial(_Passes(model, images, clean_images, clean_labels, num_classes, progress, budget,
                                     checkpoint).run, classes=classes)
    result = once(settings, "grid")
    fallback = tuple(s for s in settings.fallback_sigmas if s not in result.sigmas)
    if not result.sigmas or not fallback or result.timed_out or result.max_asr >= settings.pinned_asr:
        return result
    rerun = replace(settings, sigmas=fallback)
    if on_fallback is not None:
        on_fallback(result, scan_steps(rerun, images[0].shape, len(classes) if classes is not None else num_classes))
    try:
        retry = once(rerun, "fallback")
    except BudgetExhausted:  # the rerun found nothing in time: the first grid is what was evaluated
        result.timed_out = True
        result.seconds["total_s"] = round(time.perf_counter() - start, 3)
        return result
    retry.fallback_from = {"sigmas": list(result.sigmas), "max_asr": round(result.max_asr, 6),
                           "seconds": result.seconds["total_s"]}
    retry.seconds["total_s"] = round(time.perf_counter() - start, 3)
    return retry


@dataclass
class _Passes:
    """What every pass of one scan shares; `run` makes one pass at a σ grid, through the class
    screen when it applies (screen.py)."""

    model: nn.Module
    images: Sequence[Tensor]
    clean_images: Tensor
    clean_labels: Tensor
    num_classes: int
    progress: ProgressHook | None
    budget: TimeBudget
    checkpoint: ScanCheckpoint | None

    def once(self, settings: ScanSettings, classes: Sequence[int] | None, part: str, clean: int | None = None,
             fast_evaluation: bool = False) -> ScanResult:
        """One undecided pass over `classes` (the first `clean` clean images measure transfer, at
        the descent's precision when `fast_evaluation`)."""
        n = len(self.clean_labels) if clean is None else clean
        return _scan_once(self.model, self.images, self.clean_images[:n], self.clean_labels[:n], self.num_classes,
                          settings, classes=classes, progress=self.progress, budget=self.budget,
                          saved=None if self.checkpoint is None else self.checkpoint.run(part),
                          fast_evaluation=fast_evaluation)

    def run(self, settings: ScanSettings, part: str, *, classes: Sequence[int] | None) -> ScanResult:
        """A decided pass: every class on the grid, or screened (screen.py) when the screen applies."""
        wanted = list(range(self.num_classes)) if classes is None else sorted(set(int(c) for c in classes))
        if not screens(settings, len(wanted)):
            return _decided(self.once(settings, classes, part), settings)
        assert settings.screen is not None
        screen = settings.screen
        begin = time.perf_counter()
        first = self.once(screen_settings(settings), wanted, f"{part}-screen", screen.clean_images, fast_evaluation=True)
        labels = [cr.label for cr in first.classes]
        subset = self.clean_labels[: screen.clean_images]
        asr = torch.tensor([_asr_by_eps(cr, first.eps) for cr in first.classes], dtype=torch.float64)
        point = class_scores(asr, settings.rule).score
        bounded = bounded_scores(asr, torch.tensor([int(eligible(subset, c).sum()) for c in labels]), settings.rule,
                                 screen.confidence)
        records = {c: ScreenedClass(c, [round(float(v), 6) for v in asr[i]], float(point[i]), float(bounded[i]))
                   for i, c in enumerate(labels)}
        full = select_for_full(labels, point, bounded, screen)
        screen_s = time.perf_counter() - begin
        result = self.once(replace(settings, screen=None), full, part)
        result.skipped = {**first.skipped, **result.skipped}
        kept = sorted(cr.label for cr in result.classes)
        result.screen = ScreenSummary(screen, first.eps, records, kept,
                                      sorted(set(records) - set(kept) - set(result.skipped)), screen_s)
        for key in ("noise_probe_s", "synthesis_s", "evaluation_s", "total_s"):
            result.seconds[key] = round(result.seconds[key] + first.seconds[key], 3)
        result.seconds["screen_s"] = round(screen_s, 3)
        result.settings = settings
        return _decided(result, settings)


def screens(settings: ScanSettings, classes: int) -> bool:
    """Whether a scan of `classes` classes at `settings` goes through the class screen: only for a
    method judged by the transfer of an ε-bounded trigger, with many classes."""
    inverter = settings.method.build()
    return (settings.screen is not None and settings.screen.applies(classes) and "eps" in inverter.grid_axes
            and type(inverter).anomaly_statistic is None)


def screen_settings(settings: ScanSettings) -> ScanSettings:
    """The screen pass's settings: the scan's grid with the screen's steps and noise copies."""
    assert settings.screen is not None
    options = {"steps": settings.screen.steps}
    if "noise_samples" in settings.method.build().Config.field_names():
        options["noise_samples"] = settings.screen.noise_samples
    return replace(settings, method=settings.method.with_options(**options), screen=None)


def _decided(result: ScanResult, settings: ScanSettings) -> ScanResult:
    """Score and flag the classes of an undecided pass (decision.py)."""
    result.rule = _decide(result.classes, result.eps, settings.rule, type(settings.method.build()).anomaly_statistic)
    return result


NOT_SYNTHESISED = "the time budget ran out before this class was synthesised"
NOT_EVALUATED = "the time budget ran out before this class's transfer was measured"


def _scan_once(model: nn.Module, images: Sequence[Tensor], clean_images: Tensor, clean_labels: Tensor,
               num_classes: int, settings: ScanSettings, *, classes: Sequence[int] | None,
               progress: ProgressHook | None, budget: TimeBudget, saved: RunCheckpoint | None,
               fast_evaluation: bool = False) -> ScanResult:
    """One pass over settings.sigmas, measured but not yet decided (see `scan`); `saved` is this
    pass's checkpoint."""
    start = time.perf_counter()
    stack = torch.stack(list(images))
    predictions = predict(model, stack).tolist()
    chosen, skipped = _choose_images(predictions, clean_labels, num_classes, classes)
    eps = tuple(settings.eps) if settings.eps else scan_eps(stack.shape[1:])
    sink = None
    sigmas: tuple[float, ...] = ()
    inverter = settings.method.build()
    if "sigma" in inverter.grid_axes:
        sigmas = tuple(settings.sigmas)
        sink = _probe(model, clean_images, settings, budget, saved)
    probe_s = time.perf_counter() - start
    budget.calibrate(model, clean_images, settings.max_batch)
    grid = Grid(eps, sigmas or (0.0,))
    chunks = class_chunks(list(chosen), settings, grid, stack.shape[1:])
    synthesis_model = with_precision(model, settings.precision)
    run = _Pass(synthesis_model if fast_evaluation else model, synthesis_model, stack, chosen, clean_images,
                clean_labels, grid, settings, budget, saved, progress, inverter.total_steps(), skipped)
    for index, chunk in enumerate(chunks):
        run.chunk(index, chunk, len(chunks))
    if saved is not None and saved.restored:
        saved.announce(f"every chunk ({len(chunks)}) was already done")  # unless a chunk said where it resumed
    if not run.results:
        raise budget.exhausted("before any class was synthesised and evaluated")
    seconds = {"noise_probe_s": round(probe_s, 3), "synthesis_s": round(run.synth_s, 3),
               "evaluation_s": round(run.eval_s, 3), "total_s": round(time.perf_counter() - start, 3)}
    return ScanResult(settings, eps, sigmas, sink, run.results, skipped, predictions, seconds, run.timed_out,
                      precision=precision_used(run.synthesis_model))


@dataclass
class _Pass:
    """One pass of `_scan_once` over its chunks of classes: what each chunk needs, and what the
    chunks gathered (evaluated classes, skipped ones, seconds, whether the budget cut it).
    `model` measures transfer; `synthesis_model` (the same model at the scan's precision) descends."""

    model: nn.Module
    synthesis_model: nn.Module
    stack: Tensor
    chosen: dict[int, int]
    clean_images: Tensor
    clean_labels: Tensor
    grid: Grid
    settings: ScanSettings
    budget: TimeBudget
    saved: RunCheckpoint | None
    progress: ProgressHook | None
    steps: int
    skipped: dict[int, str]
    results: list[ClassResult] = field(default_factory=list)
    synth_s: float = 0.0
    eval_s: float = 0.0
    timed_out: bool = False

    @property
    def label(self) -> str:
        return f"scan {self.settings.method.name}"

    def chunk(self, index: int, chunk: list[int], chunks: int) -> None:
        """Synthesise and evaluate one chunk (or restore it, or skip it past the deadline)."""
        stored = None if self.saved is None else self.saved.chunk(index, chunk, self.stack)
        if stored is not None:
            self.results += stored
            if self.progress is not None:
                self.progress(self.label, scan_steps(self.settings, self.stack.shape[1:], len(chunk)))
            return
        configs = len(grid_options(self.settings.method.name, self.grid))
        deadline = self.budget.synthesis_deadline(evaluation_calls(chunk, configs, self.clean_labels,
                                                                   self.settings.max_batch))
        if self.timed_out or self.budget.passed(deadline):
            self.skipped.update({c: NOT_SYNTHESISED for c in chunk})
            self.timed_out = True
            return
        descent = None if self.saved is None else _resumable(self.saved, index, chunks, self.steps, self.label,
                                                             self.progress)
        begin = time.perf_counter()
        runs, cut_short = _synthesise(self.budget.guard(self.synthesis_model, deadline), self.stack,
                                      {c: self.chosen[c] for c in chunk}, self.grid, self.settings, deadline,
                                      self.progress, descent)
        self.synth_s += time.perf_counter() - begin
        begin = time.perf_counter()
        evaluated, cut = _evaluate_chunk(self.model, chunk, self.chosen, runs, self.clean_images, self.clean_labels,
                                         self.settings.max_batch, self.budget)
        self.eval_s += time.perf_counter() - begin
        self.results += evaluated
        self.skipped.update(cut)
        self.timed_out |= cut_short or bool(cut)
        if self.saved is not None and not (cut_short or cut):
            self.saved.save_chunk(index, evaluated)


def _decide(results: list[ClassResult], eps: tuple[float, ...], rule: DecisionRule, statistic: str | None) -> str:
    """Score and flag every class, keep its evidence; returns the rule in words. Classes are judged
    by the transfer of their triggers (decision.class_scores), or, for a method that names an
    `anomaly_statistic`, by Neural Cleanse's small-outlier test on that statistic."""
    by_eps = torch.tensor([_asr_by_eps(cr, eps) for cr in results])
    scores = class_scores(by_eps, rule)
    for i, cr in enumerate(results):
        cr.asr_by_eps = [round(float(v), 6) for v in by_eps[i]]
        cr.z_by_eps = [round(float(v), 4) for v in scores.z[i]]
        cr.decide(eps[int(scores.at[i])] if by_eps.shape[1] > 1 else None)
    if statistic is None:
        hits = set(flagged(scores.score, rule))
        for i, cr in enumerate(results):
            cr.score, cr.flagged = round(float(scores.score[i]), 4), i in hits
        described = rule.describe()
    else:
        assert all(cr.evidence is not None for cr in results)
        outliers = small_outliers([float(cr.evidence.result.extras[statistic]) for cr in results])  # type: ignore[union-attr]
        for i, cr in enumerate(results):
            cr.score, cr.flagged = round(float(outliers.score[i]), 4), i in outliers.flagged
        described = describe_small_outliers(statistic)
    for cr in results:
        if not cr.flagged:
            cr.alternatives = []
    return described



def class_chunks(labels: list[int], settings: ScanSettings, grid: Grid, shape: Sequence[int]) -> list[list[int]]:
    """Classes in groups whose rows (one per config) hold at most ROW_ELEMENTS image elements,
    so a 1000-class model at 224² is scanned in bounded memory; a small model is one group."""
    configs = len(grid_options(settings.method.name, grid))
    per_chunk = max(1, ROW_ELEMENTS // (configs * math.prod(shape)))
    return [labels[i : i + per_chunk] for i in range(0, len(labels), per_chunk)]


def _choose_images(predictions: list[int], clean_labels: Tensor, num_classes: int, classes: Sequence[int] | None
                   ) -> tuple[dict[int, int], dict[int, str]]:
    """({class: index of the scan image it is synthesised from}, {class skipped: why})."""
    wanted = list(range(num_classes)) if classes is None else sorted(set(classes))
    bad = [c for c in wanted if not 0 <= c < num_classes]
    if bad:
        raise SmoothInvError(f"class {bad[0]} does not exist: the model has {num_classes} classes (0..{num_classes - 1})")
    chosen: dict[int, int] = {}
    skipped: dict[int, str] = {}
    for c in wanted:
        source = next((i for i, p in enumerate(predictions) if p != c), None)
        if source is None:
            skipped[c] = "every scan image is already classified as this class; add an image of another class"
        elif not bool(eligible(clean_labels, c).any()):
            skipped[c] = "the clean set has no image of another class"
        else:
            chosen[c] = source
    if not chosen:
        raise SmoothInvError("no class can be scanned: " + "; ".join(f"{c}: {why}" for c, why in skipped.items()))
    return chosen, skipped


def _probe(model: nn.Module, clean_images: Tensor, settings: ScanSettings, budget: TimeBudget,
           saved: RunCheckpoint | None) -> NoiseSink:
    """The noise-sink probe at settings.sigmas (saved, or run within the budget and saved)."""
    stored = None if saved is None else saved.probe()
    if stored is not None:
        return stored
    try:
        sink = probe_noise_sink(budget.guard(model), clean_images, settings.sigmas,
                                noise_samples=settings.probe_samples, seed=settings.seed,
                                denoiser=settings.method.build().denoiser_for())
    except DeadlinePassed:
        raise budget.exhausted("during the noise-sink probe, before any class was synthesised") from None
    if saved is not None:
        saved.save_probe(sink)
    return sink


DescentFactory = Callable[[RowStopper], DescentCheckpoint]
"""The checkpoint of a chunk's descent, given the descent's RowStopper."""


def _resumable(saved: RunCheckpoint, index: int, chunks: int, steps: int, label: str,
               progress: ProgressHook | None) -> DescentFactory:
    """Chunk `index`'s descent checkpoint; it says from where the scan resumes and catches the
    progress bar up with the steps it restores."""
    where = f"chunk {index + 1}/{chunks}"
    if saved.restored and not saved.has_descent(index):
        saved.announce(f"{where}, from its first step")

    def resumed(step: int) -> None:
        saved.announce(f"{where} at step {step}/{steps}")
        if progress is not None:
            progress(label, step)

    return lambda stopper: saved.descent(index, halted=lambda: stopper.timed_out, on_resume=resumed)


def _evaluate_chunk(model: nn.Module, chunk: list[int], chosen: dict[int, int], runs: dict[int, list[InversionResult]],
                    clean_images: Tensor, clean_labels: Tensor, batch_size: int, budget: TimeBudget
                    ) -> tuple[list[ClassResult], dict[int, str]]:
    """(evaluated classes, {class skipped: why}). Classes are measured whole, in order, until
    the deadline: a class the deadline cuts is skipped, never decided on part of its configs."""
    guarded = budget.guard(model)
    done: list[ClassResult] = []
    cut: dict[int, str] = {}
    for c in chunk:
        if not runs[c]:
            cut[c] = NOT_SYNTHESISED
        elif any(why == NOT_EVALUATED for why in cut.values()):
            cut[c] = NOT_EVALUATED
        else:
            try:
                done.append(_evaluate(guarded, c, chosen[c], runs[c], clean_images, clean_labels, batch_size))
            except DeadlinePassed:
                cut[c] = NOT_EVALUATED
    budget.observe(guarded)
    return done, cut


def _evaluate(model: nn.Module, label: int, image_index: int, runs: list[InversionResult], clean_images: Tensor,
              clean_labels: Tensor, batch_size: int) -> ClassResult:
    """Measure every run's transfer ASR; keep the best run per ε whole and the others as records."""
    hits = [triggered_hits(model, r.trigger, clean_images, clean_labels, label, batch_size) for r in runs]
    asrs = [int(h.sum()) / len(h) for h in hits]
    candidates = {}
    for e in {r.config.get("eps") for r in runs}:
        i = max((i for i, r in enumerate(runs) if r.config.get("eps") == e),
                key=lambda i: (asrs[i], float(runs[i].target_prob[-1])))
        candidates[e] = Evidence(runs[i], asrs[i], hits_by_source(hits[i], clean_labels, label))
    return ClassResult(label, image_index, [RunRecord.of(r, a) for r, a in zip(runs, asrs)], candidates)


def _asr_by_eps(result: ClassResult, eps: tuple[float, ...]) -> list[float]:
    """Max ASR over σ at each ε; methods without an ε grid give one column."""
    if all("eps" not in r.config for r in result.runs):
        return [max(r.asr for r in result.runs)]
    return [max((r.asr for r in result.runs if r.config.get("eps") == e), default=0.0) for e in eps]


def _synthesise(model: nn.Module, stack: Tensor, chosen: dict[int, int], grid: Grid, settings: ScanSettings,
                deadline: float | None, progress: ProgressHook | None, descent: DescentFactory | None = None
                ) -> tuple[dict[int, list[InversionResult]], bool]:
    """({class: [InversionResult per grid point]}, whether the deadline cut synthesis short).

    `model` may refuse forward passes after `deadline` (budget.TimeBudget.guard); `descent`
    checkpoints SmoothInv's batched descent (other methods' chunks are checkpointed whole)."""
    try:
        return _synthesise_rows(model, stack, chosen, grid, settings, deadline, progress, descent)
    except DeadlinePassed:  # before the first step (the model probe of prepare_batch)
        return {c: [] for c in chosen}, True


def _synthesise_rows(model: nn.Module, stack: Tensor, chosen: dict[int, int], grid: Grid, settings: ScanSettings,
                     deadline: float | None, progress: ProgressHook | None, descent: DescentFactory | None
                     ) -> tuple[dict[int, list[InversionResult]], bool]:
    """_synthesise, which see: rows = classes × grid points, through `Inverter.invert_rows`."""
    rows = [(c, point) for c in chosen for point in grid_options(settings.method.name, grid)]
    hook = None if progress is None else (lambda step, _l, _p: progress(f"scan {settings.method.name}", 1))
    outcome = settings.method.build().invert_rows(
        model, stack[[chosen[c] for c, _ in rows]], torch.tensor([c for c, _ in rows]),
        [settings.method.with_options(**point).config for _, point in rows], seed=settings.seed, callback=hook,
        control=RowControl(settings.stop_prob, deadline, descent))
    out: dict[int, list[InversionResult]] = {c: [] for c in chosen}
    for (c, _), result in zip(rows, outcome.results):
        if result is not None:
            out[c].append(result)
    return out, outcome.timed_out


def scan_steps(settings: ScanSettings, shape: Sequence[int], num_classes: int) -> int:
    """Progress-bar length: each chunk of classes makes the steps the method's many-row run makes
    (with the class screen: its pass over every class, then the full grid on its candidates and
    references; classes that pass its threshold besides are not foreseen)."""
    if screens(settings, num_classes):
        assert settings.screen is not None
        kept = min(num_classes, settings.screen.candidates + settings.screen.references)
        return (_grid_steps(screen_settings(settings), shape, num_classes)
                + _grid_steps(replace(settings, screen=None), shape, kept))
    return _grid_steps(settings, shape, num_classes)


def _grid_steps(settings: ScanSettings, shape: Sequence[int], num_classes: int) -> int:
    eps = tuple(settings.eps) if settings.eps else scan_eps(shape)
    grid = Grid(eps, tuple(settings.sigmas))
    configs = [settings.method.with_options(**point).config for point in grid_options(settings.method.name, grid)]
    chunks = len(class_chunks(list(range(num_classes)), settings, grid, shape))
    return settings.method.build().rows_steps(configs) * chunks
