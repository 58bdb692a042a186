"""Verified applies: what an executed plan meant the kernel to hold, compared with what it
holds when read back. A difference (another writer racing, a full map, a kernel refusing an
entry without an error) makes the apply a failure that names each entry, never a success.
Pure; messages carry owners and tables, never values."""

from __future__ import annotations

from reconciler.core.attachments import Step
from reconciler.core.plan import Action, Operation
from reconciler.core.tables import Observed

SHOWN = 20  # differences listed one by one; the rest are counted


def entry_differences(operations: list[Operation], observed: Observed) -> list[str]:
    """Each operation whose result the kernel does not hold now."""
    out = []
    for op in operations:
        have = observed.get(op.table, {}).get(op.key)
        if op.action is Action.DELETE:
            if have is not None:
                out.append(f"{op.owner}: {op.describe()} still present after its deletion")
        elif have is None:
            out.append(f"{op.owner}: {op.describe()} missing after it was written")
        elif have != op.value:
            out.append(f"{op.owner}: {op.describe()} holds another value than was written")
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
