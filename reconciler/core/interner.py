"""One object per distinct value of a load. 100k Services usually repeat a handful of
protocols, tunnels, backends and key sources; each resource holding its own equal copy cost
about 500 bytes per Service, half of the desired state. Builders pass the fields
that repeat (never the ones unique by rule, such as names) through one Interner, so equal
values become one object. Values must be immutable and hashable."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


class Interner:
    """share(value): the first object equal to value that this Interner was given. Holds one
    entry per distinct value: as many as the load has distinct repeated fields, never more
    than its resources' fields."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[Any, Any] = {}

    def __call__(self, value: T) -> T:
        return self._seen.setdefault(value, value)  # type: ignore[no-any-return]
