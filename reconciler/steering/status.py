"""Proxies in the daemon's status, from the data path's last report: connections and
backend health."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.capability import StatusContext
from reconciler.steering.model import Proxy


def steering_status(context: StatusContext) -> dict[str, Any]:
    declared = context.declared(Proxy)
    proxies = []
    for name, p in sorted(context.worker.get("proxies", {}).items()):
        backends = p.get("backends", [])
        proxies.append({"name": name, "slot": p.get("slot"), "active": p.get("active", 0),
                        "accepted": p.get("accepted", 0), "bytesIn": p.get("bytesIn", 0),
                        "bytesOut": p.get("bytesOut", 0),
                        "preconnected": p.get("preconnected", 0),
                        "preconnectUsed": p.get("preconnectUsed", 0),
                        "preconnectDropped": p.get("preconnectDropped", 0),
                        "backends": backends,
                        "originalDestinations": name in declared and not declared[
                            name].backends,
                        "healthy": sum(1 for b in backends if b["healthy"]),
                        "declared": name in declared})
    return {"proxies": proxies}


def steering_status_lines(doc: Mapping[str, Any]) -> list[str]:
    """Its sections of `bpfsync status`, from the status document."""
    lines = []
    for p in doc.get("proxies") or []:
        to = ("to original destinations" if p.get("originalDestinations") else
              f"{p['healthy']}/{len(p['backends'])} backends healthy")
        ahead = (f", {p['preconnected']} opened ahead" if p.get("preconnected")
                 or p.get("preconnectUsed") else "")
        lines.append(f"  proxy {p['name']}: {to}, {p['active']} connections{ahead}")
    return lines
