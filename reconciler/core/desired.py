"""Desired table contents: what compiling resources produces (each data path's compile puts
its entries; core/compile.py runs them all), the pure half of every plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from reconciler.core.tables import Entries, MapSpec

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

M = TypeVar("M")


@dataclass
class DesiredTables:
    """Entries per owned table (by name), and the "Kind/name" that owns each entry.

    refresh: for a table whose entries record history (the names table's file and revision
    that last wrote a resource), the values its entries take when their resources (the
    "Kind/name"s given) are written in the plan; its entries hold what the kernel already
    records otherwise, so a new commit that leaves a resource as it was writes nothing
    (core/planning.py)."""

    entries: dict[str, Entries] = field(default_factory=dict)
    owners: dict[str, dict[bytes, str]] = field(default_factory=dict)
    refresh: dict[str, Callable[[set[str]], dict[bytes, bytes]]] = field(default_factory=dict)
    # kept[table](key, old, new): the kernel's old value stands for new (history it records)
    kept: dict[str, Callable[[bytes, bytes, bytes], bool]] = field(default_factory=dict)

    @classmethod
    def empty(cls, tables: tuple[MapSpec, ...]) -> DesiredTables:
        return cls({s.name: {} for s in tables}, {s.name: {} for s in tables})

    def put(self, table: MapSpec, key: bytes, value: bytes, owner: str) -> None:
        self.entries.setdefault(table.name, {})[key] = value
        self.owners.setdefault(table.name, {}).setdefault(key, owner)

    @property
    def total(self) -> int:
        return sum(map(len, self.entries.values()))


class CompileMemo:
    """What a data path's compile keeps from one reconcile to the next (the daemon holds one
    for its lifetime): one object per data path, created on first use."""

    def __init__(self) -> None:
        self._by_name: dict[str, Any] = {}

    def get(self, name: str, factory: Callable[[], M]) -> M:
        if name not in self._by_name:
            self._by_name[name] = factory()
        return self._by_name[name]  # type: ignore[no-any-return]


@dataclass(frozen=True)
class CompileContext:
    """What compiling may need beyond the resources: the daemon's memo (None: compile from
    scratch), each data path's host facts by capability name (Capability.facts), the pin
    root (None: not known, e.g. in unit tests; entries made of them are then not compiled)
    and the entries the kernel holds (None: not read; only history-recording tables look)."""

    memo: CompileMemo | None = None
    facts: Mapping[str, Any] | None = None
    pin_root: Path | None = None
    observed: Mapping[str, Mapping[bytes, bytes]] | None = None
