"""Settling a pending change under the pin root's lock: revert it (exactly what the record
holds, against the kernel as it is now), confirm it, or refuse to apply over it. Every
caller holds locked(pin_root): the guard, the apply that recorded it, `bpfsync confirm`,
and any later apply (CLI or daemon), which is how a change whose guard and applier both
died is still reverted once its deadline passed."""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from reconciler.confirm import store
from reconciler.confirm.record import CONFIRMED, REVERTED, Pending, revert_plan
from reconciler.core import registry
from reconciler.core.attachments import CONFIRM_DIR
from reconciler.core.errors import KernelStateError
from reconciler.core.plan import Plan
from reconciler.core.tables import MapSpec
from reconciler.core.verify import entry_differences, summarise
from reconciler.execute import Executor, execute
from reconciler.kernel.maps import PinnedTables

GRACE = 2.0  # seconds after the deadline others leave the revert to a living apply


class PendingConfirmation(KernelStateError):
    """An apply (CLI or daemon) refused: a change awaits confirmation."""


class NothingPending(KernelStateError):
    """`bpfsync confirm` with no change awaiting confirmation."""


@dataclass(frozen=True)
class Reverted:
    record: Pending  # as resolved
    plan: Plan  # what the revert executed
    changed: list[str]  # entries changed since the apply, left alone


def run_directory(pin_root: Path) -> Path:
    from reconciler.datapath.supervisor import run_dir

    return run_dir(pin_root)


def due(record: Pending, now: float) -> str | None:
    """Why record must be reverted now, or None while it may still be confirmed."""
    if not record.pending:
        return None
    if record.expired(now):
        return f"not confirmed within {record.within:g} s"
    if record.deadline is None and not store.alive(record.applier):
        return "its apply stopped before it was done"
    return None


def applier_reverts(record: Pending, now: float) -> bool:
    """The apply that is still waiting reverts its own change (and shows the revert as a
    plan): a guard or daemon steps in GRACE seconds after the deadline, or when the apply
    is gone."""
    return (record.deadline is not None and now < record.deadline + GRACE
            and store.alive(record.applier))


def settle_before_apply(pin_root: Path, tables: PinnedTables, executor: Executor,
                        now: float, revert_due: bool = True) -> Reverted | None:
    """Before any apply: revert a change that is due (unless not revert_due: the daemon
    reverts in its own time, and holds the reverted change back); refuse while one awaits
    confirmation."""
    record = store.read(run_directory(pin_root))
    if record is None or not record.pending:
        return None
    why = due(record, now)
    if why is not None and revert_due:
        return revert(pin_root, tables, executor, record, why)
    if why is not None:
        raise PendingConfirmation(f"a change applied from {record.directory} is due to be "
                                  f"reverted ({why})")
    left = record.reverts_in(now)
    raise PendingConfirmation(
        f"a change applied from {record.directory} awaits confirmation"
        + (f" (it reverts in {left:.0f} s)" if left is not None else "")
        + "; `bpfsync confirm` keeps it, `bpfsync confirm --revert` reverts it now")


def record_tables(record: Pending) -> tuple[MapSpec, ...]:
    """The tables the record's entries are in."""
    names = {u.table for u in record.undo}
    return tuple(s for s in registry.ENTRY_TABLES if s.name in names)


def revert(pin_root: Path, tables: PinnedTables, executor: Executor, record: Pending,
           why: str) -> Reverted:
    """Put back every entry record changed that still holds what the apply wrote; mark the
    record reverted. Checked by reading back."""
    specs = record_tables(record)
    plan, changed = revert_plan(record.undo, tables.read(specs), record.steps)
    execute(plan, executor)
    differences = entry_differences(plan.operations, tables.read(specs))
    outcome = f"reverted: {why}; {_entries(len(plan.operations))} put back"
    if plan.attachments.steps:
        n = len(plan.attachments.steps)
        outcome += f", {n} attachment change{'' if n == 1 else 's'} undone"
    if changed:
        outcome += f", {_entries(len(changed))} changed since and left alone"
    if differences:
        outcome += f", {_entries(len(differences))} not as recorded"
    resolved = record.resolve(REVERTED, outcome, time.time())
    store.write(run_directory(pin_root), resolved)
    _release(pin_root, record)  # (a revert unpinned what it put back)
    if record.history is not None:
        from reconciler.history.remember import mark_reverted

        mark_reverted(pin_root, record.history)
    if differences:
        raise KernelStateError("the revert was executed but the kernel does not hold what "
                               "was recorded:\n  " + summarise(differences))
    return Reverted(resolved, plan, changed)


def _entries(n: int) -> str:
    return f"{n:,} entr{'y' if n == 1 else 'ies'}"


def confirm(pin_root: Path, tables: PinnedTables, executor: Executor, now: float,
            how: str = "`bpfsync confirm`") -> Pending | Reverted:
    """Keep the pending change (the resolved record), or, when it is already due, revert it
    (Reverted: too late). NothingPending when no change awaits confirmation."""
    record = store.read(run_directory(pin_root))
    if record is None or not record.pending:
        last = f" (the last one: {record.outcome})" if record else ""
        raise NothingPending(f"no change awaits confirmation under {pin_root}{last}")
    why = due(record, now)
    if why is not None:
        return revert(pin_root, tables, executor, record, why)
    resolved = record.resolve(CONFIRMED, f"confirmed by {how}", now)
    store.write(run_directory(pin_root), resolved)
    _release(pin_root, record)
    return resolved


def _release(pin_root: Path, record: Pending) -> None:
    """Unpin the programs kept for a revert that will not come (core/attachments.Kept,
    core/filters.TcRestore), and their directory."""
    for step in record.steps:
        pin = getattr(step.target, "pin", None)
        if pin and Path(pin).parent == pin_root / CONFIRM_DIR:
            Path(pin).unlink(missing_ok=True)
    with suppress(OSError):  # (not empty: another record's, or foreign; left alone)
        (pin_root / CONFIRM_DIR).rmdir()
