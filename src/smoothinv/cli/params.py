"""Click parameter types and bounds shared by every command, so the same option is validated
the same way everywhere and a bad value is a usage error that names the option.

Each bound is generous for real use and stops values that would overflow float32, exhaust
memory or run without end (`--steps 1e22`, `--eps 1e39`, `--seed 2**64`, `--classes 0.5`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import click

MAX_STEPS = 100_000
MAX_NOISE_SAMPLES = 10_000
MAX_SEED = 2**63 - 1
MAX_EPS = 1e4
MAX_SIGMA = 100.0
MAX_CLASS_INDEX = 1_000_000
MAX_IMAGES = 10_000_000
MAX_SECONDS = 30 * 24 * 3600.0
MAX_LIST = 64


class FloatList(click.ParamType):
    """'0.25,0.5' → (0.25, 0.5): finite numbers in [low, high] (``low`` excluded when ``open_low``).

    ``none_word`` (e.g. "none") parses to an empty tuple, for options that can be switched off."""

    name = "numbers"

    def __init__(self, low: float, high: float, *, open_low: bool = False, none_word: str | None = None) -> None:
        self.low, self.high, self.open_low, self.none_word = low, high, open_low, none_word

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        text = str(value).strip()
        if self.none_word is not None and text.lower() in ("", self.none_word):
            return ()
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            self.fail(f"needs at least one number (got {value!r})", param, ctx)
        if len(parts) > MAX_LIST:
            self.fail(f"takes at most {MAX_LIST} values (got {len(parts)})", param, ctx)
        out = []
        for part in parts:
            try:
                number = float(part)
            except ValueError:
                self.fail(f"takes comma-separated numbers, e.g. 0.25,0.5 (got {value!r})", param, ctx)
            if not math.isfinite(number):
                self.fail(f"values must be finite numbers (got {part!r})", param, ctx)
            if not self._inside(number):
                self.fail(f"values must be {self.describe()} (got {part!r})", param, ctx)
            out.append(number)
        return tuple(out)

    def _inside(self, number: float) -> bool:
        above = number > self.low if self.open_low else number >= self.low
        return above and number <= self.high

    def describe(self) -> str:
        return f"{'>' if self.open_low else '>='} {self.low:g} and <= {self.high:g}"


class Number(click.ParamType):
    """One finite float in [low, high] (``low`` excluded when ``open_low``)."""

    name = "number"

    def __init__(self, low: float, high: float, *, open_low: bool = False) -> None:
        self._list = FloatList(low, high, open_low=open_low)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            value = repr(value)
        if "," in str(value):
            self.fail(f"takes one number (got {value!r})", param, ctx)
        return self._list.convert(value, param, ctx)[0]


class IntList(click.ParamType):
    """'0,3,7' → (0, 3, 7): whole numbers in [low, high]; '1.7' or '1e30' is an error, not a truncation."""

    name = "integers"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",") if p.strip()]
        if not parts:
            self.fail(f"needs at least one whole number (got {value!r})", param, ctx)
        out = []
        for part in parts:
            try:
                number = int(part)
            except ValueError:
                self.fail(f"takes comma-separated whole numbers, e.g. 0,3,7 (got {part!r})", param, ctx)
            if not self.low <= number <= self.high:
                self.fail(f"values must be between {self.low} and {self.high} (got {part})", param, ctx)
            out.append(number)
        return tuple(out)


class SizePair(click.ParamType):
    """'32' or '32,32' (or '32x32') → (32, 32): an image's H,W."""

    name = "H,W"

    def __init__(self, low: int, high: int) -> None:
        self._ints = IntList(low, high)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value  # type: ignore[return-value]
        values = self._ints.convert(str(value).lower().replace("x", ","), param, ctx)
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            self.fail(f"takes H,W or one number (got {value!r})", param, ctx)
        return values[0], values[1]


@dataclass(frozen=True)
class Bounds:
    """Where each shared option's values must lie."""

    steps = click.IntRange(1, MAX_STEPS)
    noise_samples = click.IntRange(1, MAX_NOISE_SAMPLES)
    seed = click.IntRange(0, MAX_SEED)
    images = click.IntRange(1, MAX_IMAGES)
    max_batch = click.IntRange(1, 1_000_000)
    eps = FloatList(0.0, MAX_EPS, open_low=True)
    sigmas = FloatList(0.0, MAX_SIGMA)
    positive_sigmas = FloatList(0.0, MAX_SIGMA, open_low=True)
    fallback_sigmas = FloatList(0.0, MAX_SIGMA, open_low=True, none_word="none")
    classes = IntList(0, MAX_CLASS_INDEX)
    seconds = Number(0.0, MAX_SECONDS, open_low=True)
    threshold = Number(0.0, 1e6, open_low=True)
    input_size = SizePair(1, 100_000)
    statistics = FloatList(-1e6, 1e6)


BOUNDS = Bounds()
