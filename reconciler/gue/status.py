"""Tunnels in the daemon's status: each tunnel's remote, learned or fixed, and whether a
learned one is fresh."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.capability import StatusContext
from reconciler.core.errors import BpfsyncError
from reconciler.gue import tables as gt
from reconciler.gue.inventory import tunnels
from reconciler.gue.model import Tunnel

STALE_TUNNEL = 60.0  # seconds without a ping after which a learned remote is not fresh


def gue_status(context: StatusContext) -> dict[str, Any]:
    try:
        observed = context.read(lambda tables: tables.read((gt.TUNNEL, gt.LEARNED, gt.TUNNEL6,
                                                                 gt.LEARNED6)))
    except (BpfsyncError, OSError):
        observed = {}
    names = {x.id: x.name for x in context.declared(Tunnel).values()}
    out = []
    for doc in tunnels(observed):
        learned = doc["status"].get("learned")
        remote = doc["spec"]["remote"]
        healthy = remote != "learn" or bool(learned and learned["ageSeconds"] < STALE_TUNNEL)
        out.append({"name": names.get(doc["spec"]["id"], doc["metadata"]["name"]),
                    "id": doc["spec"]["id"], "remote": remote, "learned": learned,
                    "healthy": healthy})
    return {"tunnels": out}


def gue_status_lines(doc: Mapping[str, Any]) -> list[str]:
    """Its sections of `bpfsync status`, from the status document."""
    lines = []
    for tun in doc.get("tunnels") or []:
        learned = tun["learned"]
        how = ("fixed remote" if tun["remote"] != "learn" else
               f"learned {gt.endpoint_text(learned)} {learned['ageSeconds']}s ago"
               if learned else "remote not learned yet")
        lines.append(f"  tunnel {tun['name']}: {how}"
                     + ("" if tun["healthy"] else " (not fresh)"))
    return lines
