"""The l2 budget ε and how it scales with the input size.

The paper's ε ∈ {5, 10} are l2 norms for 3×224×224 inputs. The same per-pixel budget at
C×H×W is ε · sqrt(C·H·W / (3·224·224)): at 32×32 the unscaled ε would let every class's
perturbation flip most images (a universal adversarial perturbation), hiding the backdoor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

REFERENCE_SHAPE = (3, 224, 224)
PAPER_EPS = (5.0, 10.0)


def eps_scale(shape: Sequence[int]) -> float:
    """sqrt(C·H·W / (3·224·224)) for an image shape (C,H,W)."""
    return math.sqrt(math.prod(shape) / math.prod(REFERENCE_SHAPE))


def scaled_eps(shape: Sequence[int], eps_224: float = PAPER_EPS[0]) -> float:
    """The l2 bound with the per-pixel budget of `eps_224` at 3×224×224, for images of `shape`."""
    return round(eps_224 * eps_scale(shape), 4)
