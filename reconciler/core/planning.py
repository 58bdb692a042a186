"""Computing a plan: the entry operations that turn observed tables into desired ones, in
the registry's order (upserts, then deletes). Pure: two sets of bytes in, a Plan out."""

from __future__ import annotations

from reconciler.core import registry
from reconciler.core.desired import DesiredTables
from reconciler.core.plan import Action, Operation, Plan, PrunePolicy
from reconciler.core.tables import Observed, stamp_ok


def compute_plan(desired: DesiredTables, observed: Observed,
                 prune: PrunePolicy | None = None) -> Plan:
    prune = prune or PrunePolicy()
    counts = {s.name: len(observed.get(s.name, {})) for s in registry.OWNED_TABLES}
    plan = Plan(desired_total=desired.total, observed_counts=counts)
    # dict equality runs in C: the common case of a table nothing touched costs little
    same = {s.name for s in registry.OWNED_TABLES
            if desired.entries[s.name] == observed.get(s.name, {})}
    for spec in registry.UPSERT_ORDER:
        if spec.name in same:
            continue
        want, have = desired.entries[spec.name], observed.get(spec.name, {})
        owners = desired.owners[spec.name]
        # set difference of the item views runs in C too; the few differences are sorted
        creates, updates = [], []
        for key, _ in want.items() - have.items():
            (updates if key in have else creates).append(key)
        for key in sorted(creates):
            plan.operations.append(Operation(
                Action.CREATE, spec.name, key, want[key], None, owners[key], "declared in YAML"))
        for key in sorted(updates):
            old = have[key]
            drift = not stamp_ok(key, old)
            reason = "changed outside bpfsync" if drift else "changed in YAML"
            plan.operations.append(Operation(
                Action.UPDATE, spec.name, key, want[key], old, owners[key], reason, drift))
    for spec in registry.DELETE_ORDER:
        if spec.name in same:
            continue
        want, have = desired.entries[spec.name], observed.get(spec.name, {})
        gone = sorted(have.keys() - want.keys())
        if not gone:
            continue
        owner = registry.owners(spec.name, observed)
        for key in gone:
            old = have[key]
            drift = not stamp_ok(key, old)
            reason = "added outside bpfsync" if drift else "no longer in YAML"
            op = Operation(Action.DELETE, spec.name, key, None, old,
                           owner(key, old), reason, drift)
            (plan.operations if prune.allows(spec.kind) else plan.kept).append(op)
    return plan
