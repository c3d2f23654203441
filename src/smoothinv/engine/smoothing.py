"""Soft randomized smoothing: the robust classifier SmoothInv inverts.

G(x) = (1/N) Σ_i softmax(f(T(x + δ_i))),  δ_i ~ N(0, σ²I)

f is the suspect model (takes [0,1] images, returns logits), T an optional denoiser
(any image→image callable; identity when None). Unlike Cohen et al.'s hard-vote smoothed
classifier, G averages probabilities, so it is differentiable and can be optimised.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
from torch import Tensor, nn

from .logits import check_logits

Denoiser = Callable[[Tensor, Tensor], Tensor]
"""T(noisy images [M,C,H,W], their σ [M]) → images [M,C,H,W]."""

Generators = Union[torch.Generator, Sequence[torch.Generator], None]
"""One generator for all rows, one per row (row b's noise from generators[b]), or None (global RNG)."""


class SmoothedClassifier:
    """G(x) for a batch of images, each row with its own σ.

    Rows are independent: row b uses σ_b and its own noise, so one batch can hold
    several (image, target, σ) configurations. The N noisy copies of all rows are pushed
    through f in chunks of at most `max_batch` images, which bounds memory for large
    inputs. Chunks are merged exactly.

    Noise comes from a `generator`: one torch.Generator draws each chunk's noise in turn (a
    result then depends on `max_batch` and on the other rows), or a sequence of generators,
    one per row, each drawing that row's N copies at once (row b's noise is then the same
    whatever `max_batch` is and whichever rows share the batch).
    """

    def __init__(
        self,
        base: nn.Module,
        num_samples: int = 10,
        denoiser: Denoiser | None = None,
        max_batch: int = 256,
    ) -> None:
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        self.base = base
        self.num_samples = num_samples
        self.denoiser = denoiser
        self.max_batch = max_batch

    def _copies(self, sigma: Tensor) -> int:
        # With σ = 0 every copy is identical; one suffices.
        return self.num_samples if bool((sigma > 0).any()) else 1

    def _noisy_logits(self, x: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
        """x: [M,C,H,W], sigma: [M], noise δ [M,C,H,W] → logits [M,K] of f(T(x + σδ))."""
        noisy = x + noise * sigma.view(-1, 1, 1, 1)
        if self.denoiser is not None:
            noisy = self.denoiser(noisy, sigma)
        return check_logits(self.base(noisy), x.shape[0], "smoothing")

    def _chunks(self, x: Tensor, sigma: Tensor, generator: Generators):
        """Yield (row index [m], images [m,C,H,W], σ [m], noise [m,C,H,W]) over the N copies of
        every row."""
        copies = self._copies(sigma)
        rows = torch.arange(x.shape[0], device=x.device).repeat_interleave(copies)
        noise = _ChunkNoise(x, copies, generator)
        for start in range(0, rows.numel(), self.max_batch):
            idx = rows[start : start + self.max_batch]
            yield idx, x[idx], sigma[idx], noise.take(idx)

    @staticmethod
    def _as_sigma(sigma: float | Tensor, rows: int, like: Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        return s.expand(rows).contiguous() if s.dim() == 0 else s

    @torch.no_grad()
    def probs(self, x: Tensor, sigma: float | Tensor, generator: Generators = None) -> Tensor:
        """G(x): x [B,C,H,W], σ scalar or [B] → class probabilities [B,K]."""
        sigma = self._as_sigma(sigma, x.shape[0], x)
        total: Tensor | None = None
        for idx, xs, ss, noise in self._chunks(x, sigma, generator):
            p = torch.softmax(self._noisy_logits(xs, ss, noise), dim=1)
            if total is None:
                total = torch.zeros(x.shape[0], p.shape[1], device=x.device, dtype=p.dtype)
            total.index_add_(0, idx, p)
        assert total is not None
        return total / self._copies(sigma)

    def loss_and_grad(
        self,
        x: Tensor,
        targets: Tensor,
        sigma: float | Tensor,
        generator: Generators = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """−log G(x)_y per row and its gradient w.r.t. x, memory-bounded and stable.

        x [B,C,H,W], targets [B] → (loss [B], target probability G_y [B], ∇ₓloss [B,C,H,W]).

        With ℓ_i = log softmax(f(T(x+δ_i)))_y, log G_y = logsumexp_i ℓ_i − log N and
        ∇ log G_y = Σ_i w_i ∇ℓ_i with w = softmax_i(ℓ). Chunks are merged with a running
        maximum (as in online softmax), so any N fits in memory and a target probability
        far below float32's range still yields a gradient.
        """
        sigma = self._as_sigma(sigma, x.shape[0], x)
        rows = x.shape[0]
        run_max = torch.full((rows,), -torch.inf, device=x.device, dtype=x.dtype)
        weight_sum = torch.zeros(rows, device=x.device, dtype=x.dtype)
        grad = torch.zeros_like(x)
        for idx, xs, ss, noise in self._chunks(x.detach(), sigma, generator):
            xs = xs.requires_grad_(True)
            logp = torch.log_softmax(self._noisy_logits(xs, ss, noise), dim=1)
            ell = logp.gather(1, targets[idx].view(-1, 1)).squeeze(1)
            chunk_max = torch.full_like(run_max, -torch.inf)
            chunk_max.scatter_reduce_(0, idx, ell.detach(), reduce="amax")
            w = torch.exp(ell.detach() - chunk_max[idx])
            (g,) = torch.autograd.grad((w * ell).sum(), xs)
            chunk_w = torch.zeros_like(weight_sum).index_add_(0, idx, w)
            chunk_g = torch.zeros_like(grad).index_add_(0, idx, g)
            new_max = torch.maximum(run_max, chunk_max)
            old_scale = _rescale(run_max, new_max)
            new_scale = _rescale(chunk_max, new_max)
            weight_sum = weight_sum * old_scale + chunk_w * new_scale
            grad = grad * old_scale.view(-1, 1, 1, 1) + chunk_g * new_scale.view(-1, 1, 1, 1)
            run_max = new_max
        log_g = torch.log(weight_sum) + run_max - torch.log(torch.tensor(float(self._copies(sigma))))
        grad = -grad / weight_sum.view(-1, 1, 1, 1)
        return -log_g, torch.exp(log_g), grad


def _rescale(old: Tensor, new: Tensor) -> Tensor:
    """exp(old − new), with 0 where a row has not been seen yet (old = −inf)."""
    return torch.where(torch.isinf(old), torch.zeros_like(old), torch.exp(old - new))


class _ChunkNoise:
    """The noise of each chunk of noisy copies. With one generator (or none) a chunk's noise is
    drawn at once; with one generator per row, row b's N copies are drawn together from
    generators[b] when its first copy is needed, and handed out over the chunks it spans."""

    def __init__(self, x: Tensor, copies: int, generator: Generators) -> None:
        self.x = x
        self.copies = copies
        self.generator = generator
        self.per_row = generator is not None and not isinstance(generator, torch.Generator)
        if self.per_row and len(generator) != x.shape[0]:  # type: ignore[arg-type]
            raise ValueError(f"expected one generator per row: {len(generator)} for {x.shape[0]} rows")  # type: ignore[arg-type]
        self._row = -1
        self._drawn: Tensor | None = None
        self._used = 0

    def take(self, idx: Tensor) -> Tensor:
        """Noise [m,C,H,W] for the copies of rows idx [m] (sorted, continuing the last chunk)."""
        shape = (idx.numel(), *self.x.shape[1:])
        if not self.per_row:
            return torch.randn(shape, generator=self.generator, device=self.x.device, dtype=self.x.dtype)  # type: ignore[arg-type]
        parts = []
        for row, count in zip(*torch.unique_consecutive(idx, return_counts=True)):
            parts.append(self._row_noise(int(row), int(count)))
        return torch.cat(parts)

    def _row_noise(self, row: int, count: int) -> Tensor:
        if row != self._row:
            generator = self.generator[row]  # type: ignore[index]
            self._drawn = torch.randn((self.copies, *self.x.shape[1:]), generator=generator, device=self.x.device,
                                      dtype=self.x.dtype)
            self._row, self._used = row, 0
        assert self._drawn is not None
        out = self._drawn[self._used : self._used + count]
        self._used += count
        return out
