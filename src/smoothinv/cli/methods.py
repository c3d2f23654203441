"""From command-line flags to a method's typed configuration (methods.MethodSpec).

Commands share flags such as --steps and --noise-samples, but not every method has every
option: a flag's value goes to the method if its configuration has that option. A flag the user
typed for a method without the option is a usage error; a flag left at its default is not
passed (the method keeps its own default for anything the command does not set)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import click
from click.core import ParameterSource

from ..methods.registry import MethodSpec, method_options, method_spec


def typed(ctx: click.Context, name: str) -> bool:
    """Whether the user gave parameter `name` (on the command line or in the environment)."""
    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def spec_from_flags(method: str, flags: Mapping[str, Any], *, ctx: click.Context | None = None) -> MethodSpec:
    """`method` configured from `flags` ({click parameter name: value}, the parameter name being
    the method option it sets; None values are skipped)."""
    return specs_from_flags([method], flags, ctx=ctx)[0]


def specs_from_flags(methods: Sequence[str], flags: Mapping[str, Any], *,
                     ctx: click.Context | None = None) -> list[MethodSpec]:
    """Each of `methods` configured from the `flags` it takes; a flag the user typed must apply
    to at least one of them."""
    ctx = ctx or click.get_current_context()
    takes = {m: set(method_options(m)) for m in methods}
    for name, value in flags.items():
        if value is not None and typed(ctx, name) and not any(name in t for t in takes.values()):
            flag = "--" + name.replace("_", "-")
            which = ", ".join(methods)
            raise click.UsageError(f"{flag} does not apply to --method {which} (options: "
                                   f"{', '.join(sorted(set().union(*takes.values())))})", ctx)
    return [method_spec(m, **{k: v for k, v in flags.items() if v is not None and k in takes[m]}) for m in methods]
