"""TransparentProxies in the daemon's status: counters per TransparentProxy and
tracking-map pressure (a full tp_conns means intercepted connections whose destination the
proxy cannot learn)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from reconciler.core.capability import StatusContext
from reconciler.core.errors import BpfsyncError
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.counters import tproxy_counters, tracked
from reconciler.tproxy.model import TransparentProxy


def tproxy_status(context: StatusContext) -> dict[str, Any]:
    declared = context.declared(TransparentProxy)
    if not declared:
        return {"transparentProxies": {}}
    try:
        stats, n = context.read(lambda tables: (tproxy_counters(tables), tracked(tables)))
    except (BpfsyncError, OSError):
        stats, n = {}, (0, 0)
    zero = dict.fromkeys((*tpt.TP_STAT_NAMES, *tpt.TP6_STAT_NAMES), 0)
    return {"transparentProxies": {
        "tracking": {"entries": n[0], "capacity": tpt.TP_CONNS.max_entries},
        "tracking6": {"entries": n[1], "capacity": tpt.TP_CONNS6.max_entries},
        "unanswered": stats.get(0, zero)["unanswered"],
        "resources": [{"name": tp.name, "id": tp.id, "cgroup": tp.cgroup, "proxy": tp.proxy,
                       "ipv6": "refuse" if tp.refuse_ipv6 else "direct",
                       "whenProxyDown": "direct" if tp.fail_open else "refuse",
                       "counters": stats.get(tp.id, zero)}
                      for tp in sorted(declared.values(), key=lambda x: x.id)]}}


def tproxy_status_lines(doc: Mapping[str, Any]) -> list[str]:
    """Its sections of `bpfsync status`, from the status document."""
    lines = []
    tps = doc.get("transparentProxies") or {}
    for tp in tps.get("resources", []):
        c = tp["counters"]
        lines.append(f"  transparent proxy {tp['name']} (cgroup {tp['cgroup']} -> proxy "
                     f"{tp['proxy']}): {c['intercepted']} intercepted, {c['excluded']} excluded, "
                     f"{c['no_proxy']} with no proxy, {c['track_full']} untracked")
    if tps:
        tr, tr6 = tps["tracking"], tps.get("tracking6") or {"entries": 0}
        lines.append(f"  intercepted connections tracked: {tr['entries']}/{tr['capacity']} "
                     f"IPv4, {tr6['entries']} IPv6")
    return lines
