"""TopoPrior (Hu et al., ICLR 2022, "Trigger Hunting with a Topological Prior for Trojan
Detection"), re-implemented from the paper as an inversion baseline.

A patch trigger x' = (1 − m) ⊙ x + m ⊙ p, with mask m ∈ [0,1]^{1×H×W} and pattern
p ∈ [0,1]^{C×H×W}, is found by gradient descent. N_T candidate triggers per image are
optimised together under

    L = mean_i [ CE(f(x'_i), y_t) + λ_size·mean(m_i) + λ_topo·L_topo(m_i) ] + λ_div·L_div

- flip loss: cross-entropy of the triggered image toward the target class;
- size: the l1 norm of the mask divided by H·W (its mean, in [0,1]);
- topological prior: 0-dimensional persistent homology of the mask under the
  superlevel-set filtration (pixels enter from the highest value down; a pixel joins
  the components of its already-entered neighbours, **8-connectivity** by default,
  4 on request). Each connected component is a pair (birth = the value of its
  highest pixel, death = the value of the pixel where it merges into an elder
  component; the elder rule). L_topo = Σ (birth − death)² over every pair except
  the k most persistent (the essential component, which never dies, counts as the
  most persistent; k = 1 by default), so a mask with one blob costs nothing and
  every extra blob costs the square of how far it stands out. The diagram is
  computed on the detached mask (union-find, Python/NumPy); the loss indexes the
  live mask at the critical (birth, death) pixels, so gradients raise the death
  pixel and lower the birth pixel of each penalised component: extra blobs fade
  or fuse with the main one;
- diversity: L_div = − mean over pairs i < j of ‖m_i⊙p_i − m_j⊙p_j‖₁ / (C·H·W)
  (``diversity="l1"``, the pairwise-distance form of the paper's diversity prior as
  we read it), or the mean pairwise cosine similarity
  of the flattened m_i⊙p_i (``diversity="cosine"``, the form in the authors'
  later released script).

The mask and pattern are free per-pixel logits (m = sigmoid(a), p = sigmoid(b)),
initialised from a torch.Generator seeded with `seed` on the model's device:
mask logits logit(mask_init) + N(0, 1)·init_noise, pattern logits N(0, 1), different
for every candidate (identical candidates would get a zero l1 diversity gradient).
Adam (the optimiser the paper names) updates them for `steps` steps.

The returned trigger is the candidate with the lowest final own loss
(CE + λ_size·size + λ_topo·topo, i.e. the best target probability at comparable
size and simplicity); the other candidates are in ``extras["candidates"]``.
``result.loss`` / ``result.target_prob`` are that candidate's curves (its own loss,
without the diversity term, which belongs to no single candidate). The callback
receives, per row, the objective actually minimised (mean over candidates plus
λ_div·L_div) and the best target probability over the candidates.

Defaults and where they come from
- num_triggers = 3, lambda_div = 1, lambda_topo = 10: the paper uses N_T = 3,
  λ1 = 1 and λ2 = 10 in all its experiments (λ1 on diversity and λ2 on topology is
  our reading, consistent with the weight of 10 on the topological term in the
  authors' released script).
- connectivity = 8: the cubical-complex convention with values on pixels that the
  authors' persistence code uses (pixels touching at a corner are connected).
- topo_k = 1: the prior is "one connected component".
- optimizer Adam: the paper. lr = 0.1 on the logits, steps = 200, lambda_size = 0.5,
  mask_init = 0.1 (init_noise = 0.5), topo_start = 0.0: not given in the paper;
  chosen so that 8×8 and 32×32 inversions converge in a few seconds on CPU.

Deviations from the paper (documented on purpose)
1. Targeted flip loss. The paper's flip loss is label-agnostic (it pushes the
   prediction away from the image's own label, so the target need not be known);
   this repository's call shape names a target, so we minimise CE toward it. A
   per-class scan over targets recovers the untargeted use.
2. No trigger-generator network: the paper frames the search as a trigger
   generator; we optimise per-pixel mask/pattern logits directly (as Neural Cleanse
   does, and as the authors' released script does). For one image the two express
   the same set of triggers.
3. Normalisations: the size and diversity terms are divided by the number of pixels
   (and of pairs) so that λ values mean the same at 8×8, 32×32 and 224×224; the
   paper's raw sums would make λ1 = 1 resolution-dependent. The mask-size weight is
   not given in the paper.
4. The topological loss is computed on the whole mask, and all candidates are
   optimised jointly (the authors' released script tiles the mask into 20×20
   patches and finds candidates in sequential rounds).
5. No random affine augmentation of the trigger and no Trojan-detection classifier
   on top: this module only reverse-engineers triggers (the detection stage of the
   paper is out of scope).
6. The chosen candidate is the one with the lowest final own loss; the paper keeps
   all N_T candidates as features for its detector.

Behaviour worth knowing: with 8-connectivity the cheapest way to satisfy the prior
is sometimes a thin diagonal chain of mask pixels joining two blobs; the mask is then
one component by count (extras["components"]) though it looks like two. The model is
put in eval mode for the descent and restored afterwards.

Sources: the paper text was only partly readable here; N_T, λ1, λ2 come from its
experiment-setup sentence, the loss shapes from its method description.

Cost: one step evaluates the model on B·N_T images and runs one union-find per
candidate mask on H·W pixels in Python, so large inputs are slow (docs/benchmarks.md,
"TopoPrior's cost"). Use ``topo_start`` to skip the prior in early steps when that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine.pgd import StepCallback
from ..errors import SmoothInvError
from ..triggers import MaskedTrigger
from .base import Found, Inverter, draw_rows, non_finite_loss
from .config import MethodConfig, bounded_float, non_negative_float, one_of, positive_float, positive_int
from .registry import register_method

Diversity = Literal["l1", "cosine"]

PersistencePair = tuple[int, "int | None"]


# --------------------------------------------------------------------------- persistence


@lru_cache(maxsize=16)
def _neighbours(h: int, w: int, connectivity: int) -> tuple[tuple[int, ...], ...]:
    """Flat indices of each pixel's neighbours on an h×w grid."""
    if connectivity == 4:
        offsets = ((-1, 0), (1, 0), (0, -1), (0, 1))
    else:
        offsets = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
    out = []
    for r in range(h):
        for c in range(w):
            out.append(
                tuple((r + dr) * w + (c + dc) for dr, dc in offsets if 0 <= r + dr < h and 0 <= c + dc < w)
            )
    return tuple(out)


def persistence_0d(values: Tensor, connectivity: int = 8) -> list[PersistencePair]:
    """0-dimensional persistence of an image under the superlevel-set filtration.

    values: [H,W] (any real numbers). Pixels enter from the highest value down (ties in
    row-major order); neighbours are 4- or 8-connected. Returns (birth_index,
    death_index) pairs as flat indices into values (row-major): the essential component
    first, as (index of the global maximum, None), then the finite pairs sorted by
    persistence values[birth] − values[death], largest first. Pairs of zero persistence
    (a plateau pixel that merges at its own level) are left out.
    """
    if values.dim() != 2:
        raise SmoothInvError(f"persistence needs a 2-D array [H,W], got shape {list(values.shape)}")
    if connectivity not in (4, 8):
        raise SmoothInvError(f"connectivity must be 4 or 8 (got {connectivity})")
    h, w = values.shape
    v = values.detach().to("cpu", torch.float64).reshape(-1).numpy()
    if not np.isfinite(v).all():
        raise SmoothInvError("persistence needs finite values")
    order = np.argsort(-v, kind="stable")
    rank = np.empty(len(v), dtype=np.int64)
    rank[order] = np.arange(len(v))
    rank_list = rank.tolist()
    neighbours = _neighbours(h, w, connectivity)
    parent = [-1] * len(v)  # -1: not entered yet
    birth = [0] * len(v)  # birth pixel of each root's component
    pairs: list[tuple[int, int]] = []

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    for i in order.tolist():
        roots: list[int] = []
        for j in neighbours[i]:
            if parent[j] >= 0:
                r = find(j)
                if r not in roots:
                    roots.append(r)
        if not roots:
            parent[i] = i
            birth[i] = i
            continue
        if len(roots) == 1:
            parent[i] = roots[0]
            continue
        elder = min(roots, key=lambda r: rank_list[birth[r]])
        parent[i] = elder
        for r in roots:
            if r != elder:
                if v[birth[r]] > v[i]:
                    pairs.append((birth[r], i))
                parent[r] = elder
    pairs.sort(key=lambda p: (-(v[p[0]] - v[p[1]]), rank_list[p[0]]))
    essential: PersistencePair = (int(order[0]), None)
    return [essential] + [(int(b), int(d)) for b, d in pairs]


def topological_loss(mask: Tensor, k: int = 1, connectivity: int = 8) -> Tensor:
    """Σ (m[birth] − m[death])² over every 0-dim persistence pair of `mask` but the k
    most persistent (the essential component first; its death, if penalised at k = 0,
    is the global minimum).

    mask: [H,W] or [1,H,W]. The diagram comes from the detached values; the returned
    scalar indexes the live mask at the critical pixels, so it is differentiable.
    """
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    if k < 0:
        raise SmoothInvError(f"k must be >= 0 (got {k})")
    pairs = persistence_0d(mask, connectivity)
    flat = mask.reshape(-1)
    penalised = pairs[k:]
    if not penalised:
        return flat.sum() * 0.0
    births = [b for b, _ in penalised]
    deaths = [int(torch.argmin(flat.detach())) if d is None else d for _, d in penalised]
    idx_b = torch.tensor(births, device=mask.device)
    idx_d = torch.tensor(deaths, device=mask.device)
    return ((flat[idx_b] - flat[idx_d]) ** 2).sum()


def count_components(mask: Tensor, threshold: float = 0.5, connectivity: int = 8) -> int:
    """Number of connected components of {mask > threshold} ([H,W] or [1,H,W])."""
    if mask.dim() == 3 and mask.shape[0] == 1:
        mask = mask[0]
    flat = mask.detach().to("cpu", torch.float64).reshape(-1)
    count = 0
    for b, d in persistence_0d(mask, connectivity):
        if float(flat[b]) > threshold and (d is None or float(flat[d]) <= threshold):
            count += 1
    return count


# --------------------------------------------------------------------------- method


@dataclass(frozen=True)
class TopoPriorConfig(MethodConfig):
    """num_triggers: candidates optimised together (N_T); lambda_div / lambda_topo /
    lambda_size: weights of the diversity, topological and mask-size terms; topo_k:
    components kept free of the topological penalty; connectivity: 4 or 8;
    diversity: "l1" or "cosine"; steps / lr: Adam on mask and pattern logits;
    mask_init / init_noise: initial mask value and logit noise; topo_start: fraction of
    the steps before the topological term is switched on; max_batch: images per
    forward pass."""

    num_triggers: int = 3
    steps: int = 200
    lr: float = 0.1
    lambda_div: float = 1.0
    lambda_topo: float = 10.0
    lambda_size: float = 0.5
    topo_k: int = 1
    connectivity: int = 8
    diversity: str = "l1"
    mask_init: float = 0.1
    init_noise: float = 0.5
    topo_start: float = 0.0
    max_batch: int = 256

    def __post_init__(self) -> None:
        for name in ("num_triggers", "steps", "max_batch"):
            positive_int(self, name)
        positive_int(self, "topo_k", minimum=0)
        positive_float(self, "lr")
        for name in ("lambda_div", "lambda_topo", "lambda_size", "init_noise"):
            non_negative_float(self, name)
        one_of(self, "connectivity", (4, 8))
        one_of(self, "diversity", ("l1", "cosine"))
        bounded_float(self, "mask_init", 0.0, 1.0, high_open=True)
        bounded_float(self, "topo_start", 0.0, 1.0, low_open=False)


class _Candidates(NamedTuple):
    """The free variables of K candidates per row: mask logits [B,K,1,H,W], pattern logits [B,K,C,H,W]."""

    mask_logits: Tensor
    pattern_logits: Tensor


class TopoPrior(Inverter[TopoPriorConfig]):
    """Reverse-engineer a patch trigger with topological and diversity priors (module docstring)."""

    name = "topoprior"
    Config = TopoPriorConfig

    def describe(self, config: TopoPriorConfig | None = None) -> dict[str, Any]:
        out = (config or self.config).to_dict()
        del out["max_batch"]
        return {"num_triggers": out.pop("num_triggers"), "steps": out.pop("steps"), "lr": out.pop("lr"),
                "optimizer": "adam", **out}

    # ----------------------------------------------------------------------- pieces

    @staticmethod
    def _topo_terms(masks: Tensor, config: TopoPriorConfig) -> Tensor:
        """L_topo of each mask [N,H,W] → [N]."""
        return torch.stack([topological_loss(m, config.topo_k, config.connectivity) for m in masks])

    @staticmethod
    def _diversity(masks: Tensor, patterns: Tensor, config: TopoPriorConfig) -> tuple[Tensor, Tensor]:
        """(L_div [B], per-candidate share [B,K]) for masks [B,K,1,H,W], patterns [B,K,C,H,W].

        The shares average to L_div. With one candidate both are zero."""
        b, k = masks.shape[:2]
        if k < 2:
            zero = masks.sum(dim=(2, 3, 4)) * 0.0
            return zero[:, 0], zero
        content = (masks * patterns).flatten(2)  # [B,K,D]
        if config.diversity == "l1":
            dist = (content[:, :, None, :] - content[:, None, :, :]).abs().mean(-1)  # [B,K,K]
            pair = -dist
        else:
            unit = F.normalize(content, dim=-1, eps=1e-12)
            pair = unit @ unit.transpose(1, 2)
        off = ~torch.eye(k, dtype=torch.bool, device=masks.device)
        share = (pair * off).sum(-1) / (k - 1)  # [B,K]
        return share.mean(1), share

    @staticmethod
    def _start(x: Tensor, config: TopoPriorConfig, generators: list[torch.Generator]) -> _Candidates:
        """Mask logits logit(mask_init) + N(0,1)·init_noise and pattern logits N(0,1); row b
        draws its mask noise, then its pattern, from generators[b]."""
        _, channels, h, w = x.shape
        k = config.num_triggers
        logit0 = math.log(config.mask_init / (1 - config.mask_init))
        mask_noise = draw_rows(generators, (k, 1, h, w), x.device)  # each generator: its mask first,
        patterns = draw_rows(generators, (k, channels, h, w), x.device)  # then its pattern
        return _Candidates((logit0 + config.init_noise * mask_noise).requires_grad_(True),
                           patterns.requires_grad_(True))

    @staticmethod
    def _logits(model: nn.Module, images: Tensor, config: TopoPriorConfig) -> Tensor:
        outs = [model(images[i : i + config.max_batch]) for i in range(0, images.shape[0], config.max_batch)]
        return torch.cat(outs)

    def _objective(self, model: nn.Module, x: Tensor, y: Tensor, cand: _Candidates, config: TopoPriorConfig,
                   step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(objective per row [B], own loss per candidate [B,K], target probability [B,K])."""
        bsz, channels, h, w = x.shape
        k = config.num_triggers
        masks, patterns = torch.sigmoid(cand.mask_logits), torch.sigmoid(cand.pattern_logits)
        triggered = (1 - masks) * x[:, None] + masks * patterns
        y_rep = y[:, None].expand(bsz, k).reshape(-1)
        logits = self._logits(model, triggered.reshape(bsz * k, channels, h, w), config)
        ce = F.cross_entropy(logits, y_rep, reduction="none").view(bsz, k)
        prob = torch.softmax(logits.detach(), dim=-1).gather(1, y_rep[:, None]).view(bsz, k)
        size = masks.mean(dim=(2, 3, 4))
        topo_weight = config.lambda_topo if step >= math.ceil(config.topo_start * config.steps) else 0.0
        topo = (self._topo_terms(masks.reshape(bsz * k, h, w), config).view(bsz, k) if topo_weight > 0
                else torch.zeros_like(size))
        own = ce + config.lambda_size * size + topo_weight * topo  # [B,K]
        div, _ = self._diversity(masks, patterns, config)
        total = own.mean(1) + config.lambda_div * div  # [B]
        if not bool(torch.isfinite(total).all()):
            raise non_finite_loss(step)
        return total, own.detach(), prob

    # ----------------------------------------------------------------------- main

    def _optimise(self, model: nn.Module, x: Tensor, y: Tensor, config: TopoPriorConfig,
                  generators: list[torch.Generator], callback: StepCallback | None) -> list[Found]:
        cand = self._start(x, config, generators)
        optimizer = torch.optim.Adam(list(cand), lr=config.lr)
        own_curve, prob_curve = [], []
        for step in range(config.steps + 1):
            total, own, prob = self._objective(model, x, y, cand, config, step)
            own_curve.append(own)
            prob_curve.append(prob)
            if step == config.steps:
                break
            optimizer.zero_grad(set_to_none=True)
            total.sum().backward()
            optimizer.step()
            if callback is not None:
                callback(step, total.detach(), prob.max(dim=1).values)
        return self._package(cand, torch.stack(own_curve).cpu(), torch.stack(prob_curve).cpu(), config)

    def _package(self, cand: _Candidates, own: Tensor, prob: Tensor, config: TopoPriorConfig) -> list[Found]:
        """One Found per row: its lowest-own-loss candidate; own, prob: [steps+1,B,K]."""
        with torch.no_grad():
            masks = torch.sigmoid(cand.mask_logits).detach().cpu()
            patterns = torch.sigmoid(cand.pattern_logits).detach().cpu()
            _, shares = self._diversity(masks, patterns, config)
        description = self.describe(config)
        out = []
        for b in range(masks.shape[0]):
            candidates = [{"index": i, "trigger": MaskedTrigger(masks[b, i].clone(), patterns[b, i].clone()),
                           "loss": float(own[-1, b, i]), "target_prob": float(prob[-1, b, i]),
                           "components": count_components(masks[b, i], 0.5, config.connectivity),
                           "mask_l1": float(masks[b, i].sum()), "diversity_share": float(shares[b, i])}
                          for i in range(config.num_triggers)]
            best = min(range(len(candidates)), key=lambda i: (candidates[i]["loss"], -candidates[i]["target_prob"], i))
            chosen = candidates[best]
            extras = {"candidate": best, "components": chosen["components"], "mask_l1": chosen["mask_l1"],
                      "candidate_target_probs": [c["target_prob"] for c in candidates],
                      "candidates": [c for c in candidates if c["index"] != best]}
            out.append(Found(chosen["trigger"], own[:, b, best].clone(), prob[:, b, best].clone(), description,
                             extras))
        return out


register_method(
    "topoprior",
    "TopoPrior (Hu et al., ICLR 2022): mask+pattern trigger with topological (one-component) and diversity priors",
)(TopoPrior)
