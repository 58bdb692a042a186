"""Intercepts in the daemon's status: counters per Intercept (new connections by outcome,
SYNs assigned or dropped for want of a listener)."""

from __future__ import annotations

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
