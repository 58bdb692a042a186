"""Computing a plan: the entry operations that turn observed tables into desired ones, in
the registry's order (upserts, then deletes). Pure: two sets of bytes in, a Plan out (the
kernel's may be read as they are compared, through a function the caller hands in)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from reconciler.core import registry
from reconciler.core.desired import DesiredTables
from reconciler.core.plan import Action, Operation, Plan, PrunePolicy
from reconciler.core.tables import Observed, stamp_ok
from reconciler.names.tables import Names

Entries = Callable[[str], Iterable[tuple[bytes, bytes]]]


@dataclass
class _Compared:
    """How one table's kernel entries differ from the desired ones."""

    held: int = 0  # entries the kernel holds
    creates: list[bytes] = field(default_factory=list)  # desired keys the kernel lacks
    updates: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, kernel value)
    gone: list[tuple[bytes, bytes]] = field(default_factory=list)  # undesired (key, value)


def _compare(want: Mapping[bytes, bytes], have: Mapping[bytes, bytes]) -> _Compared:
    """A table held whole: dict equality runs in C, so a table nothing touched costs little;
    otherwise one pass in a comprehension (a set difference of the item views, in C but
    hashing every pair into a new set, measured twice as slow at 100k entries)."""
    out = _Compared(len(have))
    if want == have:
        return out
    get = have.get
    for key in [key for key, value in want.items() if get(key) != value]:
        if key in have:
            out.updates.append((key, have[key]))
        else:
            out.creates.append(key)
    if len(have) != len(want) - len(out.creates):  # else every kernel key is desired
        out.gone = [(key, value) for key, value in have.items() if key not in want]
    return out


def _compare_read(want: Mapping[bytes, bytes], read: Callable[[], Iterable[tuple[bytes, bytes]]]
                  ) -> _Compared:
    """A table read as it is compared (read() gives its entries, a batch at a time): only
    the differences are held, never a copy of the table (1M entries read whole cost about
    170 bytes each). Desired keys the kernel lacks need a second read, of the keys only,
    and only when the counts say there are some."""
    out = _Compared()
    get = want.get
    matched = 0
    for key, value in read():
        out.held += 1
        wanted = get(key)
        if wanted is None:
            out.gone.append((key, value))
        elif wanted != value:
            out.updates.append((key, value))
        else:
            matched += 1
    if matched + len(out.updates) < len(want):
        held = {key for key, _ in read()}
        out.creates = [key for key in want if key not in held]
    return out


def compute_plan(desired: DesiredTables, observed: Observed,
                 prune: PrunePolicy | None = None, entries: Entries | None = None) -> Plan:
    """Entries that record history (desired.refresh: the names table's file and revision)
    are written with fresh values when another entry of their resource is written; the
    compiled ones keep what the kernel records, so a new commit that leaves a resource as
    it was writes nothing for it. entries(table): the table's kernel entries as they are
    read, for the tables not in observed; observed then reads a table only when it is asked
    for (the names table, owners of deleted entries)."""
    prune = prune or PrunePolicy()
    compared: dict[str, _Compared] = {}
    for spec in registry.OWNED_TABLES:
        want = desired.entries[spec.name]
        compared[spec.name] = (_compare(want, observed.get(spec.name, {})) if entries is None
                               else _compare_read(want, partial(entries, spec.name)))
    plan = Plan(desired_total=desired.total,
                observed_counts={name: c.held for name, c in compared.items()},
                capacities={s.name: s.max_entries for s in registry.OWNED_TABLES})
    upserts: dict[str, list[Operation]] = {}
    for spec in registry.UPSERT_ORDER:
        c = compared[spec.name]
        if not (c.creates or c.updates):
            continue
        want, owners = desired.entries[spec.name], desired.owners[spec.name]
        kept = desired.kept.get(spec.name)
        ops = upserts[spec.name] = [
            Operation(Action.CREATE, spec.name, key, want[key], None, owners[key],
                      "declared in YAML") for key in sorted(c.creates)]
        for key, old in sorted(c.updates):
            drift = not stamp_ok(key, old)
            if kept is not None and not drift and kept(key, old, want[key]):
                continue  # refreshed below if its resource is written
            reason = "changed outside bpfsync" if drift else "changed in YAML"
            ops.append(Operation(Action.UPDATE, spec.name, key, want[key], old, owners[key],
                                 reason, drift))
    deletes: list[Operation] = []
    names = Names(observed) if any(c.gone for c in compared.values()) else None
    for spec in registry.DELETE_ORDER:
        gone = compared[spec.name].gone
        if not gone:
            continue
        owner = registry.owners(spec.name, observed, names)
        for key, old in sorted(gone):
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
    if not have:  # a first apply: every entry is created with its fresh value already,
        return    # and refreshing them all would hold a second copy of the table
    planned = {op.key for op in ops}
    for key, value in sorted(fresh(written).items()):
        if key in have and key not in planned and value != have[key]:
            ops.append(Operation(Action.UPDATE, table, key, value, have[key],
                                 desired.owners[table][key], "changed in YAML"))
