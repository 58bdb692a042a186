"""The reconcile pipeline: desired state from a directory, observed state from the kernel, the
plan between them, and its execution. Stateless: the kernel is read fresh every time.

Execution order: table entries are written first (so a newly attached program finds its
tunnels and services), then programs are attached, replaced or detached, then entries that
are no longer wanted are deleted (after the programs that used them are gone).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from reconciler import attach
from reconciler.confirm import record as pending_record
from reconciler.confirm import revert as pending
from reconciler.confirm import store as pending_store
from reconciler.core import registry
from reconciler.core.attachments import AttachContext, Step, runs
from reconciler.core.capacity import Capacities
from reconciler.core.compile import compile_tables
from reconciler.core.desired import CompileMemo
from reconciler.core.errors import BpfsyncError, KernelStateError, UnsafePlan
from reconciler.core.plan import Operation, Plan, PrunePolicy
from reconciler.core.planning import compute_plan
from reconciler.core.progress import QUIET, Progress
from reconciler.core.state import DesiredState
from reconciler.core.tables import BPF_MAP_TYPE_HASH, MapSpec, Observed
from reconciler.core.verify import (
    attachment_differences,
    by_table,
    summarise,
    table_differences,
)
from reconciler.execute import execute
from reconciler.history.remember import remember
from reconciler.kernel.maps import (
    PinnedTables,
    ReadOnDemand,
    locked,
    open_tables,
    remove_empty_dirs,
    remove_pins,
)
from reconciler.kernel.programs import Compiler
from reconciler.kernel.tagcache import TagCache
from reconciler.load.directory import over_capacity


@dataclass(frozen=True)
class Result:
    state: DesiredState
    plan: Plan  # what was executed (a selection may have held part of the whole back)
    written: int = 0
    attached: int = 0
    pending: pending_record.Pending | None = None  # awaiting confirmation (Confirm given)
    reverted: pending.Reverted | None = None  # an earlier change, reverted first (overdue)


class ApplyNotVerified(KernelStateError):
    """The plan was executed but reading the kernel back shows something else."""


@dataclass(frozen=True)
class Confirm:
    """Confirm-or-revert for apply_state: the change reverts unless `bpfsync confirm` comes
    within seconds after it is executed. guard(record) is called once the record is known,
    before anything is executed: it starts whatever reverts the change should the applier
    die, and returns that process (written into the record)."""

    within: float
    guard: Callable[[pending_record.Pending], pending_record.Process | None]
    wanted: Callable[[Plan], bool] = lambda plan: True  # does this plan need confirming
    # the seconds this plan waits (None: it needs no confirmation), instead of the above two
    within_for: Callable[[Plan], float | None] | None = None
    revert_due: bool = True  # revert an overdue change first (False: refuse; the daemon)


Select = Callable[[Plan], Plan]
T = TypeVar("T")
# Written keys of one hash table up to which verifying looks them up one by one (a syscall
# each: beyond some thousands, reading the table in batches costs less)
VERIFY_BY_KEY = 4096


def open_pinned(pin_root: Path, create: bool,
                capacity: Mapping[str, int] | None = None) -> PinnedTables:
    """Every pinned map of every data path in the registry; capacity: the capacities asked
    for (`--capacity`), which only a pin root without those maps takes (core/capacity.py)."""
    return open_tables(pin_root, create, registry.PINNED, registry.CREATED_BY_BCC, capacity)


def capacities(pin_root: Path, capacity: Mapping[str, int] | None = None) -> Capacities:
    """The capacities pin_root has (its pinned maps' sizes), or will have when the first apply
    creates them with capacity; KernelStateError when capacity asks to resize a group."""
    return read_pinned(pin_root, lambda tables: tables.capacities, capacity)


def read_pinned(pin_root: Path, read: Callable[[PinnedTables], T],
                capacity: Mapping[str, int] | None = None) -> T:
    """read(tables) on every pinned map, opened for the call (never created)."""
    tables = open_pinned(pin_root, create=False, capacity=capacity)
    try:
        return read(tables)
    finally:
        tables.close()


def read_observed(pin_root: Path, specs: tuple[MapSpec, ...] = registry.ENTRY_TABLES) -> Observed:
    return read_pinned(pin_root, lambda tables: tables.read(specs))


def host_facts(state: DesiredState, pin_root: Path, create: bool) -> dict[str, Any]:
    """Every data path's host facts, by capability name (Capability.facts); create: apply."""
    return {c.name: c.facts(state, pin_root, create) for c in registry.CAPABILITIES
            if c.facts is not None}


def host_warnings(state: DesiredState, pin_root: Path) -> list[str]:
    """MTU warnings for declared devices that exist on this host (for `validate`)."""
    return list(attach.host_warnings(state, pin_root))


def plan_state(state: DesiredState, pin_root: Path, prune: PrunePolicy | None = None,
               progress: Progress = QUIET, capacity: Mapping[str, int] | None = None) -> Result:
    """The plan from what the kernel holds to state; nothing touched (not even created)."""
    facts = host_facts(state, pin_root, create=False)
    tables = open_pinned(pin_root, create=False, capacity=capacity)
    # programs compile against the pinned tables; before the first apply there are none
    compiler = Compiler(TagCache.in_state_directory(), pin_root) if tables.complete() else None
    try:
        plan = _plan(state, pin_root, prune, tables, AttachContext(state, pin_root, compiler,
                                                                     facts), None, progress)
    finally:
        progress.end()
        tables.close()
        if compiler:
            compiler.close()
    return Result(state, plan)


def _plan(state: DesiredState, pin_root: Path, prune: PrunePolicy | None, tables: PinnedTables,
          context: AttachContext, memo: CompileMemo | None, progress: Progress) -> Plan:
    over = over_capacity(state, tables.capacities)  # (the load checked the capacities it
    if over:                                         # was given: this pin root's are these)
        raise BpfsyncError("; ".join(f.message for f in over))
    observed = ReadOnDemand(tables, registry.ENTRY_TABLES)  # (names: read by the compile)
    progress.phase(f"compiling {state.resource_count:,} resources")
    desired = compile_tables(state, memo, context.facts, pin_root, observed)
    progress.phase(f"comparing {desired.total:,} entries with the kernel's tables")
    plan = compute_plan(desired, observed, prune, observed.entries)
    plan.capacities = {name: tables.capacities.spec(registry.BY_NAME[name]).max_entries
                       for name in plan.capacities}  # the pin root's sizes
    progress.phase("reading attachments")
    plan.attachments = attach.plan_attachments(context)
    return plan


def apply_state(state: DesiredState, pin_root: Path, prune: PrunePolicy | None = None,
                allow_empty: bool = False, select: Select | None = None,
                where: str = "the desired state", memo: CompileMemo | None = None,
                create: bool = True, progress: Progress = QUIET,
                show: Callable[[Plan], None] | None = None,
                confirm: Confirm | None = None, by: str = "apply",
                capacity: Mapping[str, int] | None = None) -> Result:
    """Plan against the kernel as it is now and execute; select may hold operations back
    (the daemon's drift policies). The plan is computed under the pin root's lock. Nothing
    is created (pins, cgroups) before what the plan needs is known to be here; create=False
    creates no map at all (destroy). show(plan) is called with the plan to execute before
    anything is executed (the command line prints it then).

    Every apply first settles a change awaiting confirmation (confirm/revert.py): reverted
    when it is due, else PendingConfirmation. After executing, what was written is read
    back; a difference raises ApplyNotVerified (and reverts at once under confirm). A plan
    that changed something is recorded in the history as a revision made by `by` ("":
    not recorded)."""
    if any(state.count(k.name) for k in registry.KINDS.values() if k.programs):
        Compiler.check()
    facts = host_facts(state, pin_root, create=True)
    tables: PinnedTables = open_pinned(pin_root, create=create, capacity=capacity)
    compiler = Compiler(memo.get("program tags", TagCache.in_state_directory)
                        if memo is not None else TagCache.in_state_directory(), pin_root)
    context = AttachContext(state, pin_root, compiler, facts)
    try:
        with locked(pin_root):
            reverted = pending.settle_before_apply(
                pin_root, tables, KernelExecutor(tables, context), time.time(),
                confirm is None or confirm.revert_due)
            full = _plan(state, pin_root, prune, tables, context, memo, progress)
            plan = select(full) if select else full
            if plan.empties_everything() and not allow_empty:
                raise UnsafePlan(
                    f"{where} declares nothing, and applying it would delete all "
                    f"{plan.observed_total} entries bpfsync manages; pass --allow-empty if "
                    f"that is really what you want")
            if plan.attachments.conflicts:
                raise KernelStateError("nothing applied:\n  " +
                                       "\n  ".join(plan.attachments.conflicts))
            record = _record(plan, confirm, state, where, context)
            if show is not None:
                progress.end()
                show(plan)
            writes = len(plan.operations)
            progress.phase(f"writing {writes:,} entries", writes)
            executor = KernelExecutor(tables, context, progress)
            written, attached = execute(plan, executor)
            progress.phase("reading back what was written")
            differences = _verify(plan, tables, context)
            if differences and record is not None:
                pending.revert(pin_root, tables, executor, record, "the apply did not verify")
            if differences:
                raise ApplyNotVerified("applied, but the kernel does not hold what was "
                                       "written:\n  " + summarise(differences))
            number = remember(pin_root, state, plan, by) if by and not plan.in_sync else None
            if record is not None:
                record = replace(record, deadline=time.time() + record.within, history=number)
                pending_store.write(pending.run_directory(pin_root), record)
    finally:
        progress.end()
        tables.close()
        compiler.close()
    return Result(state, plan, written, attached, record, reverted)


def _record(plan: Plan, confirm: Confirm | None, state: DesiredState, where: str,
            context: AttachContext) -> pending_record.Pending | None:
    """The pending-change record of plan, written before plan is executed (None: no
    confirmation asked, or nothing to confirm): the entries' bytes before, and what undoes
    the attachment steps (each part's undo)."""
    if confirm is None or not plan.changes():
        return None
    within = (confirm.within_for(plan) if confirm.within_for is not None
              else confirm.within if confirm.wanted(plan) else None)
    if within is None:
        return None
    back, cannot = attach.undo(context, plan.attachments.changes())
    if cannot:
        raise UnsafePlan(
            "--confirm-within reverts exactly what it can put back; this plan also "
            "replaces or removes attachments, which it cannot undo yet (the programs they "
            "ran are gone once they are):\n  " +
            "\n  ".join(f"{s.owner}: {s.action.value} {s.describe()}" for s in cannot) +
            "\napply that part without --confirm-within first, then the risky change with it")
    source = str(Path(where).resolve()) if Path(where).is_dir() else where
    record = pending_record.new(plan, within, source, state.revision or "",
                                pending_store.this_process(), time.time(), tuple(back))
    record = replace(record, guard=confirm.guard(record))
    pending_store.write(pending.run_directory(context.pin_root), record)
    return record


def _verify(plan: Plan, tables: PinnedTables, context: AttachContext) -> list[str]:
    """Read back the tables the plan wrote, and re-plan the attachments when it changed
    some: what the kernel holds now against what the plan meant (core/verify.py)."""
    out = []
    for table, ops in by_table(plan.operations).items():
        out += table_differences(ops, _written(table, ops, tables))
    done = {s.target.place for s in plan.attachments.changes()}
    if done:  # only what this plan did: a step it held back (drift policy) is no difference
        again = attach.plan_attachments(context).changes()
        out += attachment_differences([s for s in again if s.target.place in done])
    return out


def _written(table: str, ops: list[Operation], tables: PinnedTables
             ) -> Iterable[tuple[bytes, bytes]]:
    """What table holds now, for the keys ops wrote: a hash table that few keys were written
    to is asked for those keys alone (an edit writes a handful of 100k entries: reading the
    table again cost a tenth of a second), any other is read as it is compared (a batch at
    a time: 1M entries read back whole held a second copy of them)."""
    spec = registry.BY_NAME[table]
    if spec.map_type == BPF_MAP_TYPE_HASH and len(ops) <= VERIFY_BY_KEY:
        return tables.read_keys(spec, [op.key for op in ops]).items()
    return tables.entries(spec)


def revert_pending(pin_root: Path, why: str, only: str | None = None,
                   wait: float = 10) -> pending.Reverted | None:
    """Revert the change awaiting confirmation under pin_root now (only: if its record id
    is this one); None when there is none (confirmed, reverted, or another)."""
    tables = open_pinned(pin_root, create=False)
    try:
        with locked(pin_root, wait):
            record = pending_store.read(pending.run_directory(pin_root))
            if record is None or not record.pending or (only and record.id != only):
                return None
            return pending.revert(pin_root, tables, _undoer(tables, pin_root), record, why)
    finally:
        tables.close()


def confirm_pending(pin_root: Path, how: str, wait: float = 30
                    ) -> pending_record.Pending | pending.Reverted:
    """`bpfsync confirm`: keep the pending change (how: by what, for its record), or revert
    it when it is already due."""
    tables = open_pinned(pin_root, create=False)
    try:
        with locked(pin_root, wait):
            return pending.confirm(pin_root, tables, _undoer(tables, pin_root), time.time(),
                                   how)
    finally:
        tables.close()


def _undoer(tables: PinnedTables, pin_root: Path) -> KernelExecutor:
    """An executor for a revert: entries, and the attachment steps that undo (detaching and
    putting back need no compiled program)."""
    return KernelExecutor(tables, AttachContext(DesiredState(), pin_root))


def pending_differences(pin_root: Path, record: pending_record.Pending) -> list[str]:
    """What of a pending change the kernel no longer holds (read now)."""
    specs = pending.record_tables(record)
    observed = read_observed(pin_root, specs) if specs else {}
    return pending_record.still_applied(record.undo, observed)


def read_pending(pin_root: Path) -> pending_record.Pending | None:
    """The pending-change record of pin_root (pending or how it was settled), if any."""
    return pending_store.read(pending.run_directory(pin_root))


def destroy(pin_root: Path) -> tuple[Result, list[str]]:
    """Undo everything bpfsync made for pin_root: the plan to an empty desired state (every
    entry deleted, every attachment detached, host plumbing reverted exactly), executed as
    apply runs it; then the pins and directories it made under pin_root, what each data
    path made on the host for it (Capability.destroy), and pin_root when nothing else is
    left there. Foreign objects stay where they are. Returns the executed plan and what was
    removed (paths relative to pin_root, or absolute)."""
    result = apply_state(DesiredState(), pin_root, PrunePolicy(), allow_empty=True,
                         where="destroy", create=False, by="destroy")
    removed = remove_pins(pin_root, (*registry.PINNED, *registry.CREATED_BY_BCC))
    removed += remove_empty_dirs(pin_root, ("progs", "links", "confirm"))
    for capability in registry.CAPABILITIES:
        if capability.destroy is not None:
            removed += capability.destroy(pin_root)
    if not any(pin_root.iterdir()):
        pin_root.rmdir()
        removed.append(str(pin_root))
    return result, removed


class KernelExecutor:
    """execute()'s steps on the real kernel (see Executor)."""

    def __init__(self, tables: PinnedTables, context: AttachContext | None,
                 progress: Progress = QUIET) -> None:
        self.tables, self.context, self.progress = tables, context, progress

    def write(self, table: str, ops: list[Operation], delete: bool) -> None:
        self.tables.write(table, ops, delete)
        self.progress.advance(len(ops))

    def attach(self, steps: list[Step]) -> None:
        if self.context is None:
            raise KernelStateError("attachment steps given to an entries-only executor")
        for part, run in runs(steps, attach.part_of):
            part.execute(self.context, run)
