"""Checks across the GUE data path's resources: ids and endpoints claimed twice, services of
tunnels that do not exist."""

from __future__ import annotations

from operator import attrgetter

from reconciler.core.checks import order, unique, unique_of, unknown
from reconciler.core.findings import Finding
from reconciler.core.state import DesiredState
from reconciler.gue.model import Interface, Service, Tunnel, has_node_role


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    # Services are not sorted up front: at 100k that alone costs a tenth of a second in every
    # reconcile. Keys are C-level attrgetters; Endpoint's generated __hash__ costs seconds.
    tunnels = sorted(state.of(Tunnel).values(), key=order)
    services = list(state.of(Service).values())
    out: list[Finding] = []
    out += unique(tunnels, attrgetter("id"), ("spec", "id"), lambda t: f"tunnel id {t.id}")
    out += unique_of(state, Service, attrgetter("group_id", "service_id"),
                     ("spec", "serviceId"),
                     lambda s: f"(groupId {s.group_id}, serviceId {s.service_id})", "gue.ids")
    out += unique_of(state, Service, attrgetter("proxy.address", "proxy.port", "protocol"),
                     ("spec", "proxy"), lambda s: f"proxy endpoint {s.proxy}/{s.protocol}",
                     "gue.proxies")
    interfaces = sorted(state.of(Interface).values(), key=order)
    out += unique(interfaces, lambda i: (i.netns, i.device), ("spec", "device"),
                   lambda i: f"device {i.place}")
    if has_node_role(state):  # replies are mapped back to a proxy endpoint by their source
        out += unique_of(state, Service,
                         attrgetter("backend.address", "backend.port", "protocol"),
                         ("spec", "backend"),
                         lambda s: f"backend {s.backend}/{s.protocol} (on a node, replies "
                                   f"from it must map back to one proxy endpoint)",
                         "gue.backends")
    by_name = state.of(Tunnel)
    dangling = [s for s in services if s.tunnel not in by_name]
    for s in sorted(dangling, key=order):
        out += unknown("Tunnel", s.tunnel, by_name, invalid, s, ("spec", "tunnel"))
    return out  # (how many fit the tables: load/directory.py, by the pin root's capacities)


