"""Checks across resources that one document's schema cannot express."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from reconciler.findings import Finding
from reconciler.locate import PathItem
from reconciler.model import Resource
from reconciler.state import DesiredState
from reconciler.tables import MAX_SERVICES, MAX_TUNNELS


def _unique(resources: Iterable[Resource], key: Callable[[Any], Hashable],
            path: tuple[PathItem, ...], what: Callable[[Any], str]) -> list[Finding]:
    first: dict[Hashable, Resource] = {}
    out = []
    for r in resources:
        k = key(r)
        if k in first:
            other = first[k]
            out.append(Finding(
                r.origin, path, f"{what(r)} is also claimed by {other.ref}", r.ref,
                related=((other.origin, path),) if other.origin else ()))
        else:
            first[k] = r
    return out


def _order(r: Resource) -> tuple[str, int]:
    return (r.origin.file, r.origin.index) if r.origin else ("", 0)


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    tunnels = sorted(state.tunnels.values(), key=_order)
    services = sorted(state.services.values(), key=_order)
    out: list[Finding] = []
    out += _unique(tunnels, lambda t: t.id, ("spec", "id"), lambda t: f"tunnel id {t.id}")
    out += _unique(services, lambda s: (s.group_id, s.service_id), ("spec", "serviceId"),
                   lambda s: f"(groupId {s.group_id}, serviceId {s.service_id})")
    out += _unique(services, lambda s: (s.proxy, s.protocol), ("spec", "proxy"),
                   lambda s: f"proxy endpoint {s.proxy}/{s.protocol}")
    interfaces = sorted(state.interfaces.values(), key=_order)
    out += _unique(interfaces, lambda i: (i.netns, i.device), ("spec", "device"),
                   lambda i: f"device {i.place}")
    if state.has_node_role:  # replies are mapped back to a proxy endpoint by their source
        out += _unique(services, lambda s: (s.backend, s.protocol), ("spec", "backend"),
                       lambda s: f"backend {s.backend}/{s.protocol} (on a node, replies "
                                 f"from it must map back to one proxy endpoint)")
    for s in services:
        if s.tunnel not in state.tunnels and f"Tunnel/{s.tunnel}" not in invalid:
            known = ", ".join(sorted(state.tunnels)[:10]) or "none"
            out.append(Finding(s.origin, ("spec", "tunnel"),
                               f"no Tunnel named {s.tunnel!r} (defined: {known})", s.ref))
    for items, limit, kind in ((services, MAX_SERVICES, "Services"),
                               (tunnels, MAX_TUNNELS, "Tunnels")):
        if len(items) > limit:
            out.append(Finding(items[limit].origin, (),
                               f"{len(items)} {kind} exceed the table capacity of {limit}",
                               items[limit].ref))
    return out
