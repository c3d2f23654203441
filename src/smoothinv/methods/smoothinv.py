"""SmoothInv (Sun & Kolter, CVPR 2023) and its no-smoothing ablation PlainAdv.

SmoothInv minimises −log G(x+p)_{y_t} over ‖p‖₂ ≤ ε, where G is the soft smoothed
classifier (engine.smoothing). Because G is robust, the gradient steps that lower the
loss most are the ones that paint the backdoor's pattern, not adversarial noise.
PlainAdv runs the same descent on the base classifier f (σ = 0, one copy).

An unset `eps` is the paper's ε = 5 scaled to the input size (methods.eps.scaled_eps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..engine.early_stop import RowStopper
from ..engine.pgd import DescentCheckpoint, PGDSettings, PGDTrace, StepCallback, Stateful, descend
from ..denoisers import DenoiserRef, OneShotDenoiser, open_denoiser
from ..engine.smoothing import Denoiser, SmoothedClassifier
from ..triggers import AdditiveTrigger
from .base import Found, Inverter, RowControl
from .config import MethodConfig, bounded_float, non_negative_float, one_of, positive_float, positive_int
from .eps import scaled_eps
from .registry import register_method

@dataclass(frozen=True)
class PlainAdvConfig(MethodConfig):
    """eps: l2 bound of p (absolute; None: the paper's ε = 5 scaled to the input, `scaled_eps`);
    steps, step_fraction (α = step_fraction·ε), optimizer: the descent (engine.pgd);
    max_batch: images per forward pass (a memory bound)."""

    eps: float | None = None
    steps: int = 400
    step_fraction: float = 0.05
    optimizer: str = "pgd"
    max_batch: int = 256

    sigma: ClassVar[float] = 0.0
    noise_samples: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if self.eps is not None:
            positive_float(self, "eps")
        positive_int(self, "steps")
        bounded_float(self, "step_fraction", 0.0, 1.0)
        one_of(self, "optimizer", ("pgd", "momentum"))
        positive_int(self, "max_batch")

    def descent(self) -> PGDSettings:
        return PGDSettings(steps=self.steps, step_fraction=self.step_fraction, optimizer=self.optimizer)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SmoothInvConfig(MethodConfig):
    """PlainAdvConfig's options plus sigma: the smoothing noise σ; noise_samples: N copies per step;
    denoiser: T in G, a `DenoiserRef` (`denoisers.resolve_denoiser`), None for the identity (the
    paper's "w/o diffusion")."""

    eps: float | None = None
    sigma: float = 0.25  # type: ignore[misc]
    noise_samples: int = 10  # type: ignore[misc]
    steps: int = 400
    step_fraction: float = 0.05
    optimizer: str = "pgd"
    max_batch: int = 256
    denoiser: DenoiserRef | None = None

    def __post_init__(self) -> None:
        PlainAdvConfig.__post_init__(self)  # type: ignore[arg-type]
        non_negative_float(self, "sigma")
        positive_int(self, "noise_samples")
        if self.denoiser is not None:
            object.__setattr__(self, "denoiser", DenoiserRef.from_value(self.denoiser))

    descent = PlainAdvConfig.descent


AnyConfig = SmoothInvConfig | PlainAdvConfig


class SmoothInv(Inverter[SmoothInvConfig]):
    """Synthesise an additive backdoor perturbation on the smoothed classifier.

    T in G is the `denoiser` given here (any callable, e.g. a OneShotDenoiser), else the one the
    configuration names, else the identity (the paper's best variant on its zoo). Rows that differ only in
    eps and sigma run as one batched descent (`invert_rows`), so a scan's classes × grid points
    share every forward pass.
    """

    name = "smoothinv"
    Config = SmoothInvConfig
    grid_axes = ("eps", "sigma")

    def __init__(self, config: SmoothInvConfig | None = None, /, *, name: str | None = None,
                 denoiser: Denoiser | None = None, **options: Any) -> None:
        super().__init__(config, name=name, **options)
        self.denoiser = denoiser

    def describe(self, config: AnyConfig | None = None, shape: Sequence[int] | None = None) -> dict[str, Any]:
        config = config or self.config
        eps = config.eps if config.eps is not None or shape is None else scaled_eps(shape)
        out = {
            "eps": eps,
            "sigma": config.sigma,
            "noise_samples": config.noise_samples if config.sigma > 0 else 1,
            "steps": config.steps,
            "step_size": None if eps is None else config.step_fraction * eps,
            "optimizer": config.optimizer,
        }
        if isinstance(config, SmoothInvConfig):
            denoiser = self.denoiser_for(config)
            out["denoiser"] = (None if denoiser is None else denoiser.describe([config.sigma])
                               if isinstance(denoiser, OneShotDenoiser) else getattr(denoiser, "name", type(denoiser).__name__))
        return out

    def denoiser_for(self, config: AnyConfig | None = None) -> Denoiser | None:
        """T for rows of `config`: the callable given to the constructor, else the configured one."""
        config = config or self.config
        if self.denoiser is not None or not isinstance(config, SmoothInvConfig) or config.denoiser is None:
            return self.denoiser
        return open_denoiser(config.denoiser)

    def _group(self, config: AnyConfig) -> AnyConfig:  # type: ignore[override]
        """Rows that differ only in eps and sigma run as one batched descent."""
        if isinstance(config, SmoothInvConfig):
            return replace(config, eps=None, sigma=0.0)
        return replace(config, eps=None)

    def _optimise(self, model: nn.Module, x: Tensor, y: Tensor, config: AnyConfig, generators: list[torch.Generator],
                  callback: StepCallback | None) -> list[Found]:
        return self._optimise_group(model, x, y, [config] * x.shape[0], generators, callback, RowControl())[0]

    def _optimise_group(self, model: nn.Module, x: Tensor, y: Tensor, configs: list[AnyConfig],  # type: ignore[override]
                        generators: list[torch.Generator], callback: StepCallback | None,
                        control: RowControl) -> tuple[list[Found], bool]:
        """One batched descent, row b at configs[b]'s eps and sigma: (a Found per row, whether
        the deadline stopped it)."""
        shape = tuple(x.shape[1:])
        eps = torch.tensor([c.eps if c.eps is not None else scaled_eps(shape) for c in configs], device=x.device)
        sigma = torch.tensor([float(c.sigma) for c in configs], device=x.device)
        stopper = RowStopper(control.stop_prob, control.deadline, control.race)
        saved = None if control.checkpoint is None else control.checkpoint(stopper)
        trace = self.descend_rows(model, x, y, eps, sigma, configs[0], generators, callback, stopper, saved)
        found = [Found(AdditiveTrigger(trace.perturbation[i].detach().cpu().clone()), trace.loss[:, i],
                       trace.target_prob[:, i], self.describe(configs[i], shape)) for i in range(x.shape[0])]
        return found, stopper.timed_out

    def descend_rows(self, model: nn.Module, x: Tensor, y: Tensor, eps: Tensor, sigma: Tensor, config: AnyConfig,
                     generators: list[torch.Generator], callback: StepCallback | None = None,
                     stopper: RowStopper | None = None, checkpoint: DescentCheckpoint | None = None) -> PGDTrace:
        """The descent of rows x [B,C,H,W] toward y [B] with a per-row ε [B] and σ [B].

        Row b's noise comes from generators[b]. A `stopper` freezes rows whose target
        probability has saturated and honours a deadline; a `checkpoint` saves the descent now
        and then and resumes a saved one bit for bit (engine.pgd.descend)."""
        smoothed = SmoothedClassifier(model, config.noise_samples, self.denoiser_for(config), config.max_batch)
        sigma = sigma.to(device=x.device, dtype=torch.float32)

        def rows_loss_and_grad(x_rows: Tensor, rows: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return smoothed.loss_and_grad(x_rows, y[rows], sigma[rows], [generators[int(r)] for r in rows])

        everything = torch.arange(x.shape[0], device=x.device)
        eps = eps.to(device=x.device, dtype=torch.float32)
        loss_and_grad = (stopper.wrap(rows_loss_and_grad, origin=x, eps=eps) if stopper
                         else (lambda x_adv: rows_loss_and_grad(x_adv, everything)))
        parts: dict[str, Stateful] = {"noise": RowGenerators(generators)}
        if stopper is not None:
            parts["stopper"] = stopper
        return descend(loss_and_grad, x, eps, config.descent(), callback, checkpoint=checkpoint, parts=parts,
                       active=None if stopper is None else stopper.active_rows)


class PlainAdv(SmoothInv):
    """The paper's ablation: SmoothInv's descent on the base classifier (no noise)."""

    name = "plainadv"
    Config = PlainAdvConfig  # type: ignore[assignment]
    grid_axes = ("eps",)


class RowGenerators:
    """One generator per row as a checkpointable part (engine.pgd.Stateful): states [B, L] bytes."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    def state_dict(self) -> dict[str, Tensor]:
        return {"states": torch.stack([g.get_state() for g in self.generators])}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for g, s in zip(self.generators, state["states"]):
            g.set_state(s.clone())


register_method("smoothinv", "SmoothInv, the paper's PGD (normalised gradient, constant step)", aliases=("pgd",))(SmoothInv)
register_method("momentum", "SmoothInv as in the authors' released code (SGD momentum 0.9, step halved every 300 steps)",
                optimizer="momentum")(SmoothInv)
register_method("plainadv", "PlainAdv: the same descent on the base classifier, no smoothing")(PlainAdv)

__all__ = ["PlainAdv", "PlainAdvConfig", "SmoothInv", "SmoothInvConfig"]
