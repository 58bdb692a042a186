"""Computing a plan: the entry operations that turn observed tables into desired ones, in
the registry's order (upserts, then deletes). Pure: two sets of bytes in, a Plan out."""

from __future__ import annotations

from collections.abc import Callable

from reconciler.core import registry
from reconciler.core.desired import DesiredTables
from reconciler.core.plan import Action, Operation, Plan, PrunePolicy
from reconciler.core.tables import Observed, stamp_ok
from reconciler.names.tables import Names


def compute_plan(desired: DesiredTables, observed: Observed,
                 prune: PrunePolicy | None = None) -> Plan:
    """Entries that record history (desired.refresh: the names table's file and revision)
    are written with fresh values when another entry of their resource is written; the
    compiled ones keep what the kernel records, so a new commit that leaves a resource as
    it was writes nothing for it."""
    prune = prune or PrunePolicy()
    counts = {s.name: len(observed.get(s.name, {})) for s in registry.OWNED_TABLES}
    plan = Plan(desired_total=desired.total, observed_counts=counts,
                capacities={s.name: s.max_entries for s in registry.OWNED_TABLES})
    # dict equality runs in C: the common case of a table nothing touched costs little
    same = {s.name for s in registry.OWNED_TABLES
            if desired.entries[s.name] == observed.get(s.name, {})}
    upserts: dict[str, list[Operation]] = {}
    absent: dict[str, int] = {}  # table -> how many desired keys the kernel lacks
    for spec in registry.UPSERT_ORDER:
        if spec.name in same:
            continue
        want, have = desired.entries[spec.name], observed.get(spec.name, {})
        owners = desired.owners[spec.name]
        kept = desired.kept.get(spec.name)
        # one pass in a comprehension: a set difference of the item views (in C, but
        # hashing every pair into a new set) measured twice as slow at 100k entries; the
        # few differences are sorted
        get = have.get
        creates, updates = [], []
        for key in [key for key, value in want.items() if get(key) != value]:
            (updates if key in have else creates).append(key)
        absent[spec.name] = len(creates)
        ops = upserts[spec.name] = [
            Operation(Action.CREATE, spec.name, key, want[key], None, owners[key],
                      "declared in YAML") for key in sorted(creates)]
        for key in sorted(updates):
            old = have[key]
            drift = not stamp_ok(key, old)
            if kept is not None and not drift and kept(key, old, want[key]):
                continue  # refreshed below if its resource is written
            reason = "changed outside bpfsync" if drift else "changed in YAML"
            ops.append(Operation(Action.UPDATE, spec.name, key, want[key], old, owners[key],
                                 reason, drift))
    deletes: list[Operation] = []
    names = Names(observed)
    for spec in registry.DELETE_ORDER:
        if spec.name in same:
            continue
        want, have = desired.entries[spec.name], observed.get(spec.name, {})
        if spec.name in absent and len(have) == len(want) - absent[spec.name]:
            continue  # every kernel key is a desired one: no pass over the table for none
        gone = sorted([key for key in have if key not in want])
        if not gone:
            continue
        owner = registry.owners(spec.name, observed, names)
        for key in gone:
            old = have[key]
            drift = not stamp_ok(key, old)
            reason = "added outside bpfsync" if drift else "no longer in YAML"
            op = Operation(Action.DELETE, spec.name, key, None, old,
                           owner(key, old), reason, drift)
            # a table of every kind's entries (the names table) is pruned by its owner's kind
            kind = spec.kind or op.owner.partition("/")[0]
            (deletes if prune.allows(kind) else plan.kept).append(op)
    written = {op.owner for ops in upserts.values() for op in ops}
    written.update(op.owner for op in deletes)
    for table, fresh in (desired.refresh.items() if written else ()):
        _refresh(upserts.setdefault(table, []), table, fresh, desired, observed, written)
    for spec in registry.UPSERT_ORDER:
        plan.operations.extend(upserts.get(spec.name, ()))
    plan.operations.extend(deletes)
    return plan


def _refresh(ops: list[Operation], table: str,
             fresh: Callable[[set[str]], dict[bytes, bytes]], desired: DesiredTables,
             observed: Observed, written: set[str]) -> None:
    """Updates of the history entries (of table) of the resources the plan writes, beside
    the table's own operations."""
    have = observed.get(table, {})
    planned = {op.key for op in ops}
    for key, value in sorted(fresh(written).items()):
        if key in have and key not in planned and value != have[key]:
            ops.append(Operation(Action.UPDATE, table, key, value, have[key],
                                 desired.owners[table][key], "changed in YAML"))
