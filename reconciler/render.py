"""Human and machine renderings of a plan. Key material never reaches any output: decoded
secrets are Secret objects, shown only as "(sensitive)"."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import yaml

from reconciler.core import registry
from reconciler.core.attachments import AttachAction, Step
from reconciler.core.plan import Action, Operation, Plan
from reconciler.core.state import DesiredState
from reconciler.load.secrets import Secret

SENSITIVE = "(sensitive)"
SENSITIVE_CHANGED = "(sensitive value changed)"
JSON_FORMAT_VERSION = 1
MAX_STEER_LINES = 20  # steering entries shown per resource in text diffs
MAX_RESOURCES = 50  # a text plan of more resources is summarised (--full: every line)
SHOWN_SUMMARISED = 20  # resources a summarised plan still shows line by line


def _fields(table: str, value: bytes | None) -> dict[str, Any] | None:
    if value is None:
        return None
    try:
        return registry.decode_value(table, value)
    except Exception:  # a foreign entry of another size: show its length, not its bytes
        return {"undecodable": f"{len(value)} bytes"}


def _public(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    if fields is None:
        return None
    return {k: SENSITIVE if isinstance(v, Secret) else v for k, v in fields.items()
            if k != "flags"}


_YAML_WORDS = frozenset({"null", "true", "false", "yes", "no", "on", "off", "y", "n"})


def yaml_text(value: Any) -> str:
    """A value as the YAML that declares it would write it (flow style: [a, b], {k: v},
    null, true), never as a Python repr. Numbers and plain words take the fast path: a plan
    of a port range prints thousands of them."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if (isinstance(value, str) and value[:1].isalpha() and value.lower() not in _YAML_WORDS
            and value.replace("-", "").replace(".", "").isalnum()):
        return value
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 30)
    return text.removesuffix("\n").removesuffix("\n...")


def changes(op: Operation) -> list[dict[str, Any]]:
    """Field-level changes of an update: [{"field", "from", "to"} | {"field", "sensitive"}]."""
    old, new = _fields(op.table, op.old) or {}, _fields(op.table, op.value) or {}
    out: list[dict[str, Any]] = []
    secret_fields = {k for k, v in (old | new).items() if isinstance(v, Secret)}
    for name in sorted(secret_fields):
        if old.get(name) != new.get(name):
            out.append({"field": name, "sensitive": True})
    plain_old = {k: v for k, v in old.items() if k not in secret_fields and k != "flags"}
    plain_new = {k: v for k, v in new.items() if k not in secret_fields and k != "flags"}
    from deepdiff import DeepDiff  # ~90 ms to import, needed only to show updates

    dd = DeepDiff(plain_old, plain_new, verbose_level=2)
    for kind in ("values_changed", "type_changes", "dictionary_item_added",
                 "dictionary_item_removed"):
        for level in dd.tree.get(kind, []):
            path = ".".join(str(p) for p in level.path(output_format="list"))
            before = None if kind == "dictionary_item_added" else level.t1
            after = None if kind == "dictionary_item_removed" else level.t2
            out.append({"field": path, "from": before, "to": after})
    return sorted(out, key=lambda c: c["field"])


def _summary(plan: Plan) -> str:
    c = Counter(op.action for op in plan.operations)
    text = (f"Plan: {c[Action.CREATE]:,} to create, {c[Action.UPDATE]:,} to update, "
            f"{c[Action.DELETE]:,} to delete")
    a = Counter(op.action for op in _attach_ops(plan))
    if a:
        text += (f"; {a[AttachAction.ATTACH]:,} to attach, {a[AttachAction.REPLACE]:,} to "
                 f"replace, {a[AttachAction.DETACH]:,} to detach")
    drift = len(plan.drift)
    if drift:
        text += f" ({drift:,} of them revert drift)"
    if plan.kept:
        text += f"; {len(plan.kept):,} entries no longer in YAML kept (pruning disabled)"
    return text + "."


def _op_line(op: Operation, show_resource: bool = False) -> list[str]:
    entry = registry.describe_key(op.table, op.key)
    head = f"  {op.action.sign} {op.table} {entry}"
    if show_resource:
        head += f"  [{op.owner}]"
    if op.action is Action.CREATE:
        fields = _public(_fields(op.table, op.value)) or {}
        if not fields:
            return [head]
        return [head + ": " + " ".join(f"{k}={yaml_text(v)}" for k, v in fields.items())]
    lines = [f"{head}  ({op.reason})"]
    if op.action is Action.UPDATE:
        for ch in changes(op):
            if ch.get("sensitive"):
                lines.append(f"      {ch['field']}: {SENSITIVE_CHANGED}")
            else:
                lines.append(f"      {ch['field']}: {yaml_text(ch['from'])} → "
                             f"{yaml_text(ch['to'])}")
    return lines


def _attach_ops(plan: Plan) -> list[Step]:
    return plan.attachments.changes()


def _attach_line(op: Step) -> str:
    line = f"  {op.action.sign} {op.describe()}"
    return line if op.action is AttachAction.ATTACH else f"{line}  ({op.reason})"


def notices(plan: Plan) -> list[str]:
    """Conflicts, devices waited for and MTU warnings, one line each."""
    a = plan.attachments
    return ([f"error: {c}" for c in a.conflicts] + [f"warning: {w}" for w in a.waiting]
            + [f"warning: {w}" for w in a.warnings])


def summary_text(plan: Plan, directory: str) -> str:
    """The one line that sums a plan up (diff -q)."""
    return plan_text(plan, directory).splitlines()[0] if plan.in_sync else _summary(plan)


def plan_text(plan: Plan, directory: str, state: DesiredState | None = None,
              full: bool = False) -> str:
    """The plan as diff and apply print it, resource by resource. A plan of more than
    MAX_RESOURCES resources is summarised unless full: the first SHOWN_SUMMARISED resources
    line by line, then counts per kind (-o json lists every change)."""
    if plan.in_sync:
        text = (f"No changes: the kernel is in sync with {directory} "
                f"({plan.desired_total:,} entries")
        if plan.attachments.in_place:
            text += f", {plan.attachments.in_place} attachments"
        text += ")."
        if plan.kept:
            text += f"\n{len(plan.kept)} entries no longer in YAML kept (pruning disabled)."
        return text
    files = _origins(state)
    lines: list[str] = []
    ops_by: dict[str, list[Operation]] = {}
    drift: list[Operation] = []  # shown apart, with their owners
    for op in plan.operations:
        if op.drift:
            drift.append(op)
        else:
            ops_by.setdefault(op.owner, []).append(op)
    steps_by: dict[str, list[Step]] = {}
    for step in _attach_ops(plan):
        steps_by.setdefault(step.owner, []).append(step)
    # resources in the order of their first data-path entry (the names table's, written
    # first, are sorted by kernel ref: svc-0-10 before svc-0-2)
    owners = list(dict.fromkeys([*(op.owner for op in plan.operations
                                   if not op.drift and registry.BY_NAME[op.table].kind),
                                 *ops_by, *steps_by]))
    shown = owners if full or len(owners) <= MAX_RESOURCES else owners[:SHOWN_SUMMARISED]
    for resource in shown:
        lines.append(f"{resource}" + (f"  ({files[resource]})" if resource in files else ""))
        lines.extend(_resource_lines(ops_by.get(resource, []), steps_by.get(resource, [])))
    rest = owners[len(shown):]
    if rest:
        lines.append(f"... and {len(rest):,} more resources (--full prints every one; -o json "
                     f"lists every change):")
        lines.extend(_kind_counts(rest, ops_by, steps_by))
    if drift:
        if lines:
            lines.append("")
        lines.append("Drift (entries changed outside bpfsync; apply reverts them):")
        shown_drift = drift if full else drift[:MAX_RESOURCES]
        for op in shown_drift:
            lines.extend(_op_line(op, show_resource=True))
        if len(drift) > len(shown_drift):
            lines.append(f"  ... and {len(drift) - len(shown_drift):,} more (--full)")
    lines.append("")
    lines.append(_summary(plan))
    return "\n".join(lines)


def _resource_lines(ops: list[Operation], steps: list[Step]) -> list[str]:
    lines: list[str] = []
    expanded: dict[str, int] = {}
    for op in ops:
        if op.table in registry.SUMMARIZED:  # a port range is thousands of entries
            n = expanded[op.table] = expanded.get(op.table, 0) + 1
            if n > MAX_STEER_LINES:
                continue
        lines.extend(_op_line(op))
    for table, n in expanded.items():
        if n > MAX_STEER_LINES:
            lines.append(f"  ... and {n - MAX_STEER_LINES} more {table} entries (-o json "
                         f"lists all)")
    return lines + [_attach_line(step) for step in steps]


def _kind_counts(owners: list[str], ops_by: dict[str, list[Operation]],
                 steps_by: dict[str, list[Step]]) -> list[str]:
    """One line per kind: how many resources, and their changes by action."""
    resources: Counter[str] = Counter()
    actions: dict[str, Counter[str]] = {}
    for owner in owners:
        kind = owner.partition("/")[0]
        resources[kind] += 1
        c = actions.setdefault(kind, Counter())
        c.update(op.action.value for op in ops_by.get(owner, ()))
        c.update(step.action.value for step in steps_by.get(owner, ()))
    out = []
    for kind, n in resources.items():
        c = actions[kind]
        parts = [f"{c[a.value]:,} entries to {a.value}" for a in Action if c[a.value]]
        parts += [f"{c[a.value]:,} to {a.value}" for a in AttachAction if c[a.value]]
        out.append(f"  {kind}: {n:,} resources; {', '.join(parts)}")
    return out


def _origins(state: DesiredState | None) -> dict[str, str]:
    if state is None:
        return {}
    out = {}
    for r in (r for by_name in state.resources.values() for r in by_name.values()):
        if r.origin:
            out[r.ref] = r.origin.file
    return out


def _op_json(op: Operation) -> dict[str, Any]:
    return {
        "action": op.action.value,
        "resource": op.owner,
        "table": op.table,
        "entry": registry.describe_key(op.table, op.key),
        "key": registry.decode_key(op.table, op.key),
        "before": _public(_fields(op.table, op.old)),
        "after": _public(_fields(op.table, op.value)),
        "changes": changes(op) if op.action is Action.UPDATE else [],
        "reason": op.reason,
        "drift": op.drift,
    }


def _attach_json(op: Step) -> dict[str, Any]:
    return {"action": op.action.value, "resource": op.owner, **op.target.to_json(),
            "reason": op.reason, "drift": op.drift}


def plan_json(plan: Plan, state: DesiredState | None = None) -> str:
    files = _origins(state)
    resources: dict[str, dict[str, Any]] = {}

    def entry(resource: str) -> dict[str, Any]:
        kind, _, name = resource.partition("/")
        return resources.setdefault(resource, {
            "resource": resource, "kind": kind, "name": name,
            "file": files.get(resource), "actions": []})

    for op in plan.operations:
        if not op.drift:
            entry(op.owner)["actions"].append(_op_json(op))
    for aop in _attach_ops(plan):
        entry(aop.owner)["actions"].append(_attach_json(aop))
    c = Counter(op.action.value for op in plan.operations)
    doc = {
        "formatVersion": JSON_FORMAT_VERSION,
        "inSync": plan.in_sync,
        "summary": {"create": c["create"], "update": c["update"], "delete": c["delete"],
                    "attach": sum(1 for o in _attach_ops(plan)
                                  if o.action is not AttachAction.DETACH),
                    "detach": sum(1 for o in _attach_ops(plan)
                                  if o.action is AttachAction.DETACH),
                    "drift": len(plan.drift), "kept": len(plan.kept),
                    "desiredEntries": plan.desired_total, "observedEntries": plan.observed_total},
        "resources": list(resources.values()),
        "drift": [_op_json(op) for op in plan.drift],
        "kept": [_op_json(op) for op in plan.kept],
        "errors": plan.attachments.conflicts,
        "warnings": plan.attachments.waiting + plan.attachments.warnings,
    }
    return json.dumps(doc, indent=2, sort_keys=False)


def applied_text(plan: Plan, written: int, attached: int = 0) -> str:
    if plan.in_sync:
        extra = (f" and {plan.attachments.in_place} attachments" if plan.attachments.in_place
                 else "")
        return f"Nothing to do: {plan.desired_total:,} entries{extra} already in sync (0 writes)."
    c = Counter(op.action for op in plan.operations)
    text = (f"Applied: {c[Action.CREATE]:,} created, {c[Action.UPDATE]:,} updated, "
            f"{c[Action.DELETE]:,} deleted ({written:,} map writes")
    if attached:
        text += f", {attached} attachment changes"
    if plan.drift:
        text += f", {len(plan.drift)} drift reverted"
    return text + ")."


def columns(rows: list[tuple[str, ...]]) -> str:
    """Rows as left-aligned columns, two spaces apart (the first row is the header)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)
