"""Methods by name: `get_method("nc", steps=200)`, `method_spec("smoothinv", noise_samples=8)`.

A registered name is a method class, a one-line description, and options that define the name
(`momentum` is SmoothInv with optimizer="momentum"). A `MethodSpec` is a name with its typed
configuration: what a scan's settings carry and a checkpoint fingerprints (it is a frozen,
JSON-ready dataclass), and what builds the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..registry import Registry
from .base import Inverter
from .config import MethodConfig


@dataclass(frozen=True)
class MethodEntry:
    """What a method name stands for."""

    cls: type[Inverter]
    description: str
    fixed: tuple[tuple[str, Any], ...] = ()
    """Options that define this name and override the caller's."""


METHODS: Registry[MethodEntry] = Registry("method")


@dataclass(frozen=True)
class MethodSpec:
    """A method name with its configuration."""

    name: str
    config: MethodConfig

    def build(self) -> Inverter:
        return METHODS.get(self.name).cls(self.config, name=self.name)

    def with_options(self, **changes: Any) -> MethodSpec:
        """The same method with some options changed (unknown names raise); a name's fixed
        options stay fixed."""
        entry = METHODS.get(self.name)
        return MethodSpec(self.name, self.config.with_options(self.name, **{**changes, **dict(entry.fixed)}))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.name, **self.config.to_dict()}


def register_method(name: str, description: str, *, aliases: tuple[str, ...] = (),
                    **fixed: Any) -> Callable[[type[Inverter]], type[Inverter]]:
    """Register an Inverter class under `name` (and hidden `aliases`); `fixed` options define
    that name and override the caller's."""

    def decorate(cls: type[Inverter]) -> type[Inverter]:
        cls.Config.check_names(fixed, name)
        METHODS.add(name, MethodEntry(cls, description, tuple(sorted(fixed.items()))), aliases=aliases)
        return cls

    return decorate


def method_class(name: str) -> type[Inverter]:
    """The Inverter class registered as `name`."""
    return METHODS.get(name).cls


def method_spec(name: str, **options: Any) -> MethodSpec:
    """`name` with its configuration built from `options`; unknown options raise."""
    entry = METHODS.get(name)
    name = METHODS.canonical(name)
    return MethodSpec(name, entry.cls.Config.build({**options, **dict(entry.fixed)}, name))


def get_method(name: str, **options: Any) -> Inverter:
    """The method registered as `name`, configured by `options` (unknown options raise)."""
    return method_spec(name, **options).build()


def method_options(name: str) -> tuple[str, ...]:
    """The option names method `name` takes."""
    return method_class(name).Config.field_names()


def list_methods() -> dict[str, str]:
    """{name: description} of every registered method (aliases left out)."""
    return {name: entry.description for name, entry in METHODS.items()}
