"""Typed method configuration: each method's options are one frozen dataclass, validated once
when it is built, JSON-ready, and strict about names (a misspelled option is an error, not a
silently dropped key).

    @dataclass(frozen=True)
    class MyConfig(MethodConfig):
        steps: int = 200
        lr: float = 0.1

        def __post_init__(self) -> None:
            positive_int(self, "steps"); positive_float(self, "lr")
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from ..errors import SmoothInvError

C = TypeVar("C", bound="MethodConfig")


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's configuration (fields come from the subclass)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_names(cls, names: Iterable[str], method: str) -> None:
        """Raise if any of `names` is not an option of this configuration."""
        known = cls.field_names()
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise SmoothInvError(
                f"method {method!r} has no option {', '.join(map(repr, unknown))}; its options: {', '.join(known)}"
            )

    @classmethod
    def build(cls: type[C], options: Mapping[str, Any], method: str) -> C:
        """The configuration from `options` (unknown names raise; missing ones take defaults)."""
        cls.check_names(options, method)
        return cls(**options)

    def with_options(self: C, method: str, **changes: Any) -> C:
        """A copy with `changes` applied and validated (unknown names raise)."""
        self.check_names(changes, method)
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready {option: value} (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def positive_int(config: MethodConfig, name: str, minimum: int = 1) -> None:
    """Option `name` must be an integer >= minimum."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise SmoothInvError(f"{name} must be an integer >= {minimum} (got {value!r})")
    object.__setattr__(config, name, int(value))


def bounded_float(config: MethodConfig, name: str, low: float = 0.0, high: float = math.inf, *,
                  low_open: bool = True, high_open: bool = False) -> None:
    """Option `name` must be a finite number in the interval (low, high] (ends as given)."""
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise SmoothInvError(f"{name} must be a finite number (got {value!r})")
    v = float(value)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open or math.isinf(high) else "]"
        raise SmoothInvError(f"{name} must be in {left}{low:g}, {high:g}{right} (got {value!r})")
    object.__setattr__(config, name, v)


def positive_float(config: MethodConfig, name: str) -> None:
    """Option `name` must be a finite number > 0."""
    bounded_float(config, name, 0.0)


def non_negative_float(config: MethodConfig, name: str) -> None:
    """Option `name` must be a finite number >= 0."""
    bounded_float(config, name, 0.0, low_open=False)


def one_of(config: MethodConfig, name: str, choices: tuple[Any, ...]) -> None:
    """Option `name` must be one of `choices`, of the same kind (8.0 is not the integer 8, 1 is not True)."""
    value = getattr(config, name)
    for choice in choices:
        same_kind = isinstance(value, bool) == isinstance(choice, bool) and (
            not isinstance(choice, int) or isinstance(value, numbers.Integral))
        if same_kind and value == choice:
            object.__setattr__(config, name, choice)
            return
    raise SmoothInvError(f"{name} must be one of {', '.join(map(str, choices))} (got {value!r})")
