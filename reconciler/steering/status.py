"""Proxies in the daemon's status, from the data path's last report: connections and
backend health."""

from __future__ import annotations

from typing import Any

from reconciler.core.capability import StatusContext
from reconciler.steering.model import Proxy


def steering_status(context: StatusContext) -> dict[str, Any]:
    declared = context.declared(Proxy)
    proxies = []
    for name, p in sorted(context.worker.get("proxies", {}).items()):
        backends = p.get("backends", [])
        proxies.append({"name": name, "slot": p.get("slot"), "active": p.get("active", 0),
                        "backends": backends,
                        "originalDestinations": name in declared and not declared[
                            name].backends,
                        "healthy": sum(1 for b in backends if b["healthy"]),
                        "declared": name in declared})
    return {"proxies": proxies}
