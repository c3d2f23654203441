"""One small registry type for everything smoothinv looks up by name: model architectures,
inversion methods, attacks and zoo recipes (in the manner of timm's model registry).

    ARCHS = Registry[ArchInfo]("architecture")
    ARCHS.add("resnet18", ArchInfo(...))
    ARCHS.get("resnet18")          # unknown names raise SmoothInvError listing the known ones

An entry is whatever the kind needs (a builder with its metadata, a class); the registry only
keeps names unique, answers lookups with a one-line error, and lists entries in name order.
Aliases resolve to their entry but are not listed.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import SmoothInvError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (`kind` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def add(self, name: str, entry: T, *, aliases: tuple[str, ...] = ()) -> T:
        """Register `entry` as `name` (and as each alias); a name may be registered once."""
        for key in (name, *aliases):
            if not isinstance(key, str) or not key:
                raise ValueError(f"a {self.kind} needs a non-empty name (got {key!r})")
            if key in self._entries or key in self._aliases:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._entries[name] = entry
        self._aliases.update({alias: name for alias in aliases})
        return entry

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry, aliases=aliases)

    def canonical(self, name: str) -> str:
        """The registered name `name` stands for (itself, or what it is an alias of)."""
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise SmoothInvError(f"unknown {self.kind} {_short(name)}; choose from: {', '.join(self.names())}")

    def get(self, name: str) -> T:
        """The entry registered as `name` (or an alias of it)."""
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs sorted by name."""
        return [(name, self._entries[name]) for name in self.names()]

    def in_registration_order(self) -> list[T]:
        """Entries in the order they were added, for lists whose order means something
        (the zoo builds its quick recipes first)."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


def _short(name: object, limit: int = 60) -> str:
    """repr(name), cut to `limit` characters: a name can come from a file and be megabytes long."""
    text = repr(name)
    return text if len(text) <= limit else text[: limit - 3] + "..."
