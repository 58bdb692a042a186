"""Plans: the ordered list of entry operations that turns observed tables into desired ones.

Pure: computed from two sets of bytes, printed by `diff`, executed as-is by `apply`.
Order: upserts before deletes; upserts in registry order (data paths in their list, each in
its own order), deletes in reverse (core/registry.py UPSERT_ORDER, DELETE_ORDER).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from itertools import groupby
from typing import Protocol

from reconciler.core.attachments import AttachAction, AttachPlan


class Action(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"

    @property
    def sign(self) -> str:
        return {"create": "+", "update": "~", "delete": "-"}[self.value]


class Change(Protocol):
    """What every change of a plan has, entry (Operation, below) or attachment
    (core/attachments.Step), so that drift policy, status and counts treat them alike:
    an action (its value and sign as printed), the "Kind/name" that owns it, why, whether
    it repairs a change made outside bpfsync, a one-line description without values (values
    may hold keys), and is_change: True when the change itself says it is one (it removes
    what nobody declares), False when it says it is drift, None when the owner's history
    decides (core/drift.py)."""

    @property
    def action(self) -> Action | AttachAction: ...
    @property
    def owner(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def drift(self) -> bool: ...
    @property
    def is_change(self) -> bool | None: ...
    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Operation:
    action: Action
    table: str
    key: bytes
    # Values may hold key material: kept out of repr so that no log or traceback shows them.
    value: bytes | None = field(repr=False)  # new value; None for delete
    old: bytes | None = field(repr=False)  # observed value; None for create
    owner: str  # "Kind/name" that owns the entry (synthesised for entries not in YAML)
    reason: str
    drift: bool = False  # the kernel entry was changed or added outside bpfsync

    def describe(self) -> str:
        return f"{self.table} entry"

    @property
    def is_change(self) -> bool | None:
        """Drift or change as far as the entry itself tells (see Change): deleting an entry
        bpfsync wrote is a change (its owner was removed: nobody declares it); deleting one
        someone else added is drift. A write is the owner's to decide: a value altered
        outside bpfsync whose owner was also edited in YAML takes the YAML's."""
        if self.action is Action.DELETE:
            return not self.drift
        return None


@dataclass(frozen=True, slots=True)
class PrunePolicy:
    enabled: bool = True
    keep_kinds: frozenset[str] = frozenset()  # kinds whose removed entries are kept

    def allows(self, kind: str) -> bool:
        return self.enabled and kind not in self.keep_kinds


@dataclass
class Plan:
    operations: list[Operation] = field(default_factory=list)
    kept: list[Operation] = field(default_factory=list)  # deletions skipped by the prune policy
    desired_total: int = 0
    attachments: AttachPlan = field(default_factory=AttachPlan)
    observed_counts: dict[str, int] = field(default_factory=dict)  # entries per owned table
    capacities: dict[str, int] = field(default_factory=dict)  # max entries per owned table

    @property
    def observed_total(self) -> int:
        return sum(self.observed_counts.values())

    def counts_after(self) -> dict[str, int]:
        """Entries per owned table once this plan is executed."""
        out = dict(self.observed_counts)
        for op in self.operations:
            if op.action is Action.CREATE:
                out[op.table] = out.get(op.table, 0) + 1
            elif op.action is Action.DELETE:
                out[op.table] = out.get(op.table, 0) - 1
        return out

    @property
    def in_sync(self) -> bool:
        return not self.operations and not self.attachments.changes()

    def count(self, action: Action) -> int:
        return sum(1 for op in self.operations if op.action is action)

    @property
    def drift(self) -> list[Operation]:
        return [op for op in self.operations if op.drift]

    def changes(self) -> list[Change]:
        """Every change: entry operations, then attachment steps."""
        return [*self.operations, *self.attachments.steps]

    def empties_everything(self) -> bool:
        """True when applying would leave every owned table empty although some are not."""
        deletes = self.count(Action.DELETE)
        return self.observed_total > 0 and self.desired_total == 0 and deletes > 0

    def batches(self) -> Iterator[tuple[str, bool, list[Operation]]]:
        """Consecutive operations grouped by (table, is_delete), in plan order."""
        for (table, delete), group in groupby(
                self.operations, key=lambda op: (op.table, op.action is Action.DELETE)):
            yield table, delete, list(group)
