"""Intercepts in the daemon's status: counters per Intercept (new connections by outcome,
SYNs assigned or dropped for want of a listener)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.capability import StatusContext
from reconciler.core.errors import BpfsyncError
from reconciler.intercept import tables as ict
from reconciler.intercept.counters import intercept_counters
from reconciler.intercept.model import Intercept


def intercept_status(context: StatusContext) -> dict[str, Any]:
    declared = context.declared(Intercept)
    if not declared:
        return {"intercepts": []}
    try:
        stats = context.read(intercept_counters)
    except (BpfsyncError, OSError):
        stats = {}
    zero = dict.fromkeys(ict.IC_STAT_NAMES, 0)
    return {"intercepts": [{"name": ic.name, "id": ic.id, "device": ic.place,
                            "rules": len(ic.rules), "counters": stats.get(ic.id, zero)}
                           for ic in sorted(declared.values(), key=lambda x: x.id)]}


def intercept_status_lines(doc: Mapping[str, Any]) -> list[str]:
    """Its sections of `bpfsync status`, from the status document."""
    lines = []
    for ic in doc.get("intercepts") or []:
        c = ic["counters"]
        lines.append(f"  intercept {ic['name']} ({ic['device']}, {ic['rules']} rules): "
                     f"{c['redirected']} redirected, {c['dropped']} dropped, {c['passed']} "
                     f"passed, {c['unmatched']} unmatched; {c['assigned']} assigned, "
                     f"{c['no_listener']} with no listener")
    return lines
