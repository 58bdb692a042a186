"""Verified applies: what an executed plan meant the kernel to hold, compared with what it
holds when read back. A difference (another writer racing, a full map, a kernel refusing an
entry without an error) makes the apply a failure that names each entry, never a success.
Pure; messages carry owners and tables, never values."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.core.attachments import Step
from reconciler.core.plan import Action, Operation
from reconciler.core.tables import Observed

SHOWN = 20  # differences listed one by one; the rest are counted


def entry_differences(operations: list[Operation], observed: Observed) -> list[str]:
    """Each operation whose result the kernel does not hold now."""
    out = []
    for table, ops in by_table(operations).items():
        out += table_differences(ops, observed.get(table, {}).items())
    return out


def table_differences(operations: list[Operation],
                      entries: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Each of one table's operations whose result the kernel does not hold, against the
    table's entries as they are read: each entry is looked at once and only the operations
    are held by key, so a table of 1M entries is verified without a copy of it (in the
    operations' order)."""
    pending = {op.key: op for op in operations}
    seen: dict[bytes, str] = {}
    for key, value in entries:
        op = pending.pop(key, None)
        if op is None:
            continue
        if op.action is Action.DELETE:
            seen[key] = f"{op.owner}: {op.describe()} still present after its deletion"
        elif value != op.value:
            seen[key] = f"{op.owner}: {op.describe()} holds another value than was written"
    out = []
    for op in operations:
        if op.key in seen:
            out.append(seen[op.key])
        elif op.key in pending and op.action is not Action.DELETE:
            out.append(f"{op.owner}: {op.describe()} missing after it was written")
    return out


def by_table(operations: list[Operation]) -> dict[str, list[Operation]]:
    """Operations grouped by their table, each group in plan order."""
    out: dict[str, list[Operation]] = {}
    for op in operations:
        out.setdefault(op.table, []).append(op)
    return out


def attachment_differences(steps: list[Step]) -> list[str]:
    """Steps a fresh attachment plan still finds to do right after the apply did them."""
    return [f"{s.owner}: {s.describe()} not in place after the apply ({s.action.value} "
            f"still planned)" for s in steps]


def summarise(differences: list[str]) -> str:
    lines = differences[:SHOWN]
    if len(differences) > SHOWN:
        lines.append(f"... and {len(differences) - SHOWN:,} more")
    return "\n  ".join(lines)
