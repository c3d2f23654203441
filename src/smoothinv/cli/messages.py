"""Library messages, rendered for the command line.

The library names a parameter in a message as its backquoted Python name (``errors.param``:
`` `num_classes` ``, `` `out` ``); on the command line the user set it with a flag, so
`for_command_line` writes the flag instead:

- `` `name` `` where ``name`` is the Python name of an option of a `smoothinv` command
  (``num_classes``, ``model_path``) becomes that option's first long flag (``--num-classes``,
  ``--model``); a library parameter whose name differs from the option's is mapped by
  ``ALIASES``. A name that different commands spell as different flags is left as a word.
- `` `name`=True `` for an on/off flag becomes the flag alone (``--overwrite``), `` `name`=False ``
  its off flag if it has one (``--no-baseline``), and `` `name`=VALUE `` becomes ``--flag VALUE``.
- any other backquoted word loses its backquotes: `` `name` `` becomes ``name``.

Backquoted text that is not a single word (`` `smoothinv zoo build` ``) is left as it is.
"""

from __future__ import annotations

import functools
import re

import click

ALIASES = {
    "out_dir": "--out",  # run_demo
    "timeout": "--probe-timeout",  # probe_model
    "limit": "--clean-limit",  # load_clean_set
    "directory": "--zoo-dir",  # the zoo's functions
}
"""Library parameter name → flag, where the library's name is not the click option's."""

_REFERENCE = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`(=(\S+))?")
_TRAILING = ".,;:)]"  # punctuation that may follow a value in a sentence


def for_command_line(message: str, root: click.Command | None = None) -> str:
    """`message` with its backquoted parameter names written as the flags of `root`'s commands
    (default: the `smoothinv` command group); see the module docstring for the rules."""
    flags, switches = _flags(root)

    def render(match: re.Match[str]) -> str:
        name, assigned, value = match.group(1), match.group(2), match.group(3)
        flag = flags.get(name)
        if flag is None:
            return name + (assigned or "")
        if value is None:
            return flag
        word = value.rstrip(_TRAILING)
        if flag in switches and (word == "True" or (word == "False" and switches[flag])):
            return (flag if word == "True" else switches[flag]) + value[len(word):]
        return f"{flag} {value}"

    return _REFERENCE.sub(render, message)


@functools.lru_cache(maxsize=None)
def _flags(root: click.Command | None) -> tuple[dict[str, str], dict[str, str | None]]:
    """({Python name: first long flag} of every visible option under `root`, plus ALIASES;
    {flag: its off flag or None} of the on/off switches)."""
    if root is None:
        from .main import cli

        root = cli
    seen: dict[str, set[str]] = {}
    switches: dict[str, str | None] = {}
    for option in _options(root):
        longs = [o for o in option.opts if o.startswith("--")]
        if option.name is None or not longs:
            continue
        seen.setdefault(option.name, set()).add(longs[0])
        if option.is_flag:
            switches[longs[0]] = next((o for o in option.secondary_opts if o.startswith("--")), None)
    flags = {name: next(iter(found)) for name, found in seen.items() if len(found) == 1}
    flags.update(ALIASES)
    return flags, switches


def _options(command: click.Command) -> list[click.Option]:
    """The visible options of `command` and, for a group, of every command under it."""
    found = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            found += _options(sub)
    return found
