"""Plans: the ordered list of entry operations that turns observed tables into desired ones.

Pure: computed from two sets of bytes, printed by `diff`, executed as-is by `apply`.
Order: tunnel and decap entries are written before the services that use them; service
entries are deleted before the tunnels they used. A proxy's configuration is written before
its steering entries and deleted after them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from reconciler.attach import AttachPlan
from reconciler.core import tables as t
from reconciler.core.desired import DesiredTables, Entries

Observed = dict[str, Entries]

# A second accepted key is written before the slot it may move out of (desired.py keeps the
# two accepted keys in a fixed order, so a rotation never drops a key still in use), and
# upserts all come before deletes.
UPSERT_ORDER = (t.NEXT_KEY_TABLE, t.TUNNEL, t.DECAP, t.VERIFY, t.ENCAP, t.REPLY, t.PROXY, t.STEER,
                t.TP_CONFIG, t.TP_RULES, t.IC_RULES)
DELETE_ORDER = (t.IC_RULES, t.TP_RULES, t.TP_CONFIG, t.STEER, t.PROXY, t.REPLY, t.ENCAP,
                t.NEXT_KEY_TABLE, t.VERIFY, t.TUNNEL, t.DECAP)


class Action(Enum):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"

    @property
    def sign(self) -> str:
        return {"create": "+", "update": "~", "delete": "-"}[self.value]


@dataclass(frozen=True, slots=True)
class Operation:
    action: Action
    table: str
    key: bytes
    # Values may hold key material: kept out of repr so that no log or traceback shows them.
    value: bytes | None = field(repr=False)  # new value; None for delete
    old: bytes | None = field(repr=False)  # observed value; None for create
    resource: str  # "Kind/name" that owns the entry (synthesised for entries not in YAML)
    reason: str
    drift: bool = False  # the kernel entry was changed or added outside bpfsync


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

    def empties_everything(self) -> bool:
        """True when applying would leave every owned table empty although some are not."""
        deletes = self.count(Action.DELETE)
        return self.observed_total > 0 and self.desired_total == 0 and deletes > 0

    def batches(self) -> Iterator[tuple[str, bool, list[Operation]]]:
        """Consecutive operations grouped by (table, is_delete), in plan order."""
        group: list[Operation] = []
        for op in self.operations:
            if group and (op.table != group[0].table or (op.action is Action.DELETE) != (
                    group[0].action is Action.DELETE)):
                yield group[0].table, group[0].action is Action.DELETE, group
                group = []
            group.append(op)
        if group:
            yield group[0].table, group[0].action is Action.DELETE, group


def proxy_names(observed: Observed) -> dict[int, str]:
    """slot -> Proxy name, from the configurations the kernel holds."""
    out = {}
    for key, value in observed.get(t.PROXY.name, {}).items():
        try:
            out[t.decode_key(t.PROXY.name, key)["slot"]] = t.decode_value(
                t.PROXY.name, value)["name"]
        except Exception:  # a foreign or damaged entry names nothing
            continue
    return out


def synthetic_owner(table: str, key: bytes, value: bytes,
                    proxy_names: dict[int, str] | None = None) -> str:
    """Name under which `get` shows an entry that no YAML resource claims."""
    if table == t.IC_RULES.name:
        try:
            return f"Intercept/(id {t.decode_key(table, key)['id']})"
        except Exception:  # a foreign entry of the wrong size
            return "Intercept/(unknown)"
    if table in (t.TP_CONFIG.name, t.TP_RULES.name):
        try:
            return f"TransparentProxy/(id {t.decode_key(table, key)['id']})"
        except Exception:  # a foreign entry of the wrong size
            return "TransparentProxy/(unknown)"
    try:
        if table == t.STEER.name:
            slot = t.decode_value(table, value)["slot"]
            name = (proxy_names or {}).get(slot)
            return f"Proxy/{name}" if name else f"Proxy/(slot {slot})"
        if table == t.PROXY.name:
            return f"Proxy/{t.decode_value(table, value)['name']}"
    except Exception:  # a foreign entry of the wrong size or content; still show it
        return "Proxy/(unknown)"
    if table == t.NEXT_KEY_TABLE.name:
        try:
            k = t.decode_key(table, key)
        except Exception:  # a foreign entry of the wrong size
            return "Service/(unknown)"
        if k["nextKeyOf"] == "tunnel":
            return f"Tunnel/tunnel-{k['id']}"
        return f"Service/svc-{k['groupId']}-{k['serviceId']}"
    if table in (t.TUNNEL.name, t.DECAP.name):
        if table == t.DECAP.name:
            ep = t.decode_endpoint(key)
            return f"Tunnel/(decap {ep['address']}:{ep['port']})"
        return f"Tunnel/tunnel-{t.decode_key(table, key)['id']}"
    if table == t.VERIFY.name:
        k = t.decode_key(table, key)
        return f"Service/svc-{k['groupId']}-{k['serviceId']}"
    try:
        v = t.decode_value(table, value)
        return f"Service/svc-{v['groupId']}-{v['serviceId']}"
    except Exception:  # a foreign entry of the wrong size; still show it
        return "Service/(unknown)"


def compute_plan(desired: DesiredTables, observed: Observed,
                 prune: PrunePolicy | None = None) -> Plan:
    prune = prune or PrunePolicy()
    counts = {s.name: len(observed.get(s.name, {})) for s in t.OWNED_TABLES}
    plan = Plan(desired_total=desired.total, observed_counts=counts)
    # dict equality runs in C: the common case of a table nothing touched costs little
    same = {s.name for s in t.OWNED_TABLES
            if desired.entries[s.name] == observed.get(s.name, {})}
    for spec in UPSERT_ORDER:
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
            drift = not t.stamp_ok(key, old)
            reason = "changed outside bpfsync" if drift else "changed in YAML"
            plan.operations.append(Operation(
                Action.UPDATE, spec.name, key, want[key], old, owners[key], reason, drift))
    names = proxy_names(observed) if observed.get(t.STEER.name) else {}
    for spec in DELETE_ORDER:
        if spec.name in same:
            continue
        want, have = desired.entries[spec.name], observed.get(spec.name, {})
        for key in sorted(have.keys() - want.keys()):
            old = have[key]
            drift = not t.stamp_ok(key, old)
            reason = "added outside bpfsync" if drift else "no longer in YAML"
            op = Operation(Action.DELETE, spec.name, key, None, old,
                           synthetic_owner(spec.name, key, old, names), reason, drift)
            (plan.operations if prune.allows(spec.kind) else plan.kept).append(op)
    return plan
