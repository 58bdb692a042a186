"""Checks across resources that one document's schema cannot express."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from operator import attrgetter
from typing import Any

from reconciler.core.errors import Severity
from reconciler.core.findings import Finding
from reconciler.core.model import PortRange, Resource, destination_port_count
from reconciler.core.state import DesiredState
from reconciler.core.tables import (
    IC_CHAIN,
    IC_MAX_ENTRIES,
    MAX_SERVICES,
    MAX_STEER,
    MAX_TUNNELS,
    PROXY_CONFIG_SIZE,
    TP_MAX_RULES,
)
from reconciler.intercept.compile import compile_intercept, entry_count
from reconciler.intercept.model import Intercept
from reconciler.load.locate import PathItem
from reconciler.steering import proxyconf
from reconciler.steering.model import Proxy
from reconciler.tproxy.model import TrafficMatch


def _unique(resources: Iterable[Resource], key: Callable[[Any], Hashable],
            path: tuple[PathItem, ...], what: Callable[[Any], str]) -> list[Finding]:
    """A finding for every resource whose key an earlier one (in file order) claims."""
    resources = list(resources)
    keys = list(map(key, resources))
    if len(set(keys)) == len(keys):  # the common case, decided in C: nothing to report
        return []
    first: dict[Hashable, Resource] = {}
    out = []
    for r in sorted(resources, key=_order):
        k = key(r)
        if k in first:
            other = first[k]
            out.append(Finding(
                r.origin, path, f"{what(r)} is also claimed by {other.ref}", r.ref,
                related=((other.origin, path),) if other.origin else ()))
        else:
            first[k] = r
    return out


def _unknown(kind: str, name: str, known: dict[str, Any], invalid: set[str], by: Resource,
             path: tuple[PathItem, ...]) -> list[Finding]:
    """A reference to a resource the state does not declare (none when the resource exists
    but is invalid: its own errors say why)."""
    if name in known or f"{kind}/{name}" in invalid:
        return []
    names = ", ".join(sorted(known)[:10]) or "none"
    return [Finding(by.origin, path, f"no {kind} named {name!r} (defined: {names})", by.ref)]


def _order(r: Resource) -> tuple[str, int]:
    return (r.origin.file, r.origin.index) if r.origin else ("", 0)


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    # Services are not sorted up front: at 100k that alone costs a tenth of a second in every
    # reconcile. Keys are C-level attrgetters; Endpoint's generated __hash__ costs seconds.
    tunnels = sorted(state.tunnels.values(), key=_order)
    services = list(state.services.values())
    out: list[Finding] = []
    out += _unique(tunnels, attrgetter("id"), ("spec", "id"), lambda t: f"tunnel id {t.id}")
    out += _unique(services, attrgetter("group_id", "service_id"), ("spec", "serviceId"),
                   lambda s: f"(groupId {s.group_id}, serviceId {s.service_id})")
    out += _unique(services, attrgetter("proxy.address", "proxy.port", "protocol"),
                   ("spec", "proxy"),
                   lambda s: f"proxy endpoint {s.proxy}/{s.protocol}")
    interfaces = sorted(state.interfaces.values(), key=_order)
    out += _unique(interfaces, lambda i: (i.netns, i.device), ("spec", "device"),
                   lambda i: f"device {i.place}")
    if state.has_node_role:  # replies are mapped back to a proxy endpoint by their source
        out += _unique(services, attrgetter("backend.address", "backend.port", "protocol"),
                       ("spec", "backend"),
                       lambda s: f"backend {s.backend}/{s.protocol} (on a node, replies "
                                 f"from it must map back to one proxy endpoint)")
    dangling = [s for s in services if s.tunnel not in state.tunnels]
    for s in sorted(dangling, key=_order):
        out += _unknown("Tunnel", s.tunnel, state.tunnels, invalid, s, ("spec", "tunnel"))
    out += _proxy_checks(sorted(state.proxies.values(), key=_order))
    out += _transparent_checks(state, invalid)
    out += _intercept_checks(state, invalid)
    for items, limit, kind in ((services, MAX_SERVICES, "Services"),
                               (tunnels, MAX_TUNNELS, "Tunnels")):
        if len(items) > limit:
            beyond = sorted(items, key=_order)[limit]
            out.append(Finding(beyond.origin, (),
                               f"{len(items)} {kind} exceed the table capacity of {limit}",
                               beyond.ref))
    return out


def _ports(proxy: Proxy) -> set[int]:
    out: set[int] = set()
    for r in proxy.ports:
        if not r.wildcard:
            out.update(range(r.first, r.last + 1))
    return out


# The data path's descriptor limit the systemd unit grants (LimitNOFILE; the worker raises its
# soft limit to it), and what a worker holds besides its connections (listeners, maps, health
# checks, the resolver, Python itself).
DESCRIPTOR_LIMIT = 1048576
DESCRIPTOR_RESERVE = 1024


def descriptors_needed(proxies: Iterable[Proxy]) -> int:
    """Descriptors the data path needs with every Proxy at maxConnections: two per connection
    (client and backend)."""
    return 2 * sum(p.max_connections for p in proxies) + DESCRIPTOR_RESERVE


def _proxy_checks(proxies: list[Proxy]) -> list[Finding]:
    out = _unique(proxies, lambda p: p.id, ("spec", "id"), lambda p: f"proxy id {p.id}")
    if proxies:
        first = proxies[0]
        for p in proxies[1:]:
            if p.netns != first.netns:
                out.append(Finding(p.origin, ("spec", "netns"),
                                   f"netns {p.netns or '(bpfsync own)'} differs from "
                                   f"{first.ref}'s {first.netns or '(bpfsync own)'}: all Proxies "
                                   f"of one pin root steer in one namespace (use another "
                                   f"--pin-root for another namespace)", p.ref,
                                   related=((first.origin, ("spec", "netns")),)
                                   if first.origin else ()))
    ports = {p.name: _ports(p) for p in proxies}
    for i, a in enumerate(proxies):
        for b in proxies[:i]:
            shared = ports[a.name] & ports[b.name]
            if not shared or not any(x.overlaps(y) for x in a.destinations
                                     for y in b.destinations):
                continue
            sample = ", ".join(map(str, sorted(shared)[:5])) + (" ..." if len(shared) > 5 else "")
            out.append(Finding(a.origin, ("spec", "ports"),
                               f"ports {sample} on overlapping destinations are also steered by "
                               f"{b.ref}: a connection could belong to either", a.ref,
                               related=((b.origin, ("spec", "ports")),) if b.origin else ()))
    need = descriptors_needed(proxies)
    if proxies and need > DESCRIPTOR_LIMIT:
        big = max(proxies, key=lambda p: p.max_connections)
        out.append(Finding(big.origin, ("spec", "maxConnections"),
                           f"the Proxies' maxConnections add up to {need:,} file descriptors "
                           f"(two per connection), more than the {DESCRIPTOR_LIMIT:,} the "
                           f"bpfsync unit grants (LimitNOFILE): at that point new clients wait "
                           f"in the listen queue", big.ref, Severity.WARNING))
    total = 0
    for p in proxies:
        size = len(proxyconf.encode(p))
        if size > PROXY_CONFIG_SIZE - 8:
            out.append(Finding(p.origin, ("spec", "backends"),
                               f"the proxy's configuration takes {size} bytes, more than the "
                               f"{PROXY_CONFIG_SIZE - 8} a ps_proxy entry holds; use fewer or "
                               f"shorter backend names", p.ref))
        total += destination_port_count(p.destinations, p.ports)
        if total > MAX_STEER:
            out.append(Finding(p.origin, ("spec", "ports"),
                               f"ports x destinations of all Proxies make {total} steering "
                               f"entries, more than the table's {MAX_STEER}; use \"*\" or "
                               f"wider prefixes", p.ref))
            break
    return out


def rule_entry_count(matches: tuple[TrafficMatch, ...]) -> int:
    return sum(destination_port_count(m.destinations, m.ports) for m in matches)


def _transparent_checks(state: DesiredState, invalid: set[str]) -> list[Finding]:
    tps = sorted(state.transparent.values(), key=_order)
    out = _unique(tps, attrgetter("id"), ("spec", "id"), lambda x: f"id {x.id}")
    out += _unique(tps, attrgetter("cgroup"), ("spec", "cgroup"),
                   lambda x: f"cgroup {x.cgroup} (one TransparentProxy per cgroup)")
    total = 0
    for tp in tps:
        out += _unknown("Proxy", tp.proxy, state.proxies, invalid, tp, ("spec", "proxy"))
        for i, c in enumerate(tp.exclude_cgroups):
            if c == tp.cgroup:
                out.append(Finding(tp.origin, ("spec", "excludeCgroups", i),
                                   f"{c} is the intercepted cgroup itself: nothing would be "
                                   f"intercepted", tp.ref))
        total += rule_entry_count(tp.intercept) + rule_entry_count(tp.exclude)
        if total > TP_MAX_RULES:
            out.append(Finding(tp.origin, ("spec", "intercept"),
                               f"ports x destinations of all TransparentProxies make {total} "
                               f"rule entries, more than the table's {TP_MAX_RULES}; use \"*\" "
                               f"or wider prefixes", tp.ref))
            break
    return out


def proxy_slots(state: DesiredState, ic: Intercept) -> tuple[tuple[str, int], ...]:
    """(name, listener slot) of the Proxies ic's redirect rules name and the state declares."""
    names = sorted({r.proxy for r in ic.rules if r.proxy and r.proxy in state.proxies})
    return tuple((n, state.proxies[n].id) for n in names)


def _rule_path(ic: Intercept, priority: int) -> tuple[PathItem, ...]:
    """Rules are kept sorted by priority; the document's order may differ."""
    return ("spec", "rules", [r.priority for r in ic.rules].index(priority))


def _ports_overlap(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    return any(x.wildcard or y.wildcard or (x.first <= y.last and y.first <= x.last)
               for x in a for y in b)


def _intercept_rules(state: DesiredState, ic: Intercept, invalid: set[str]) -> list[Finding]:
    out = []
    for r in ic.rules:
        if r.proxy is None:
            continue
        proxy = state.proxies.get(r.proxy)
        if proxy is None:
            out += _unknown("Proxy", r.proxy, state.proxies, invalid, ic,
                            (*_rule_path(ic, r.priority), "proxy"))
        elif proxy.netns != ic.netns:
            out.append(Finding(ic.origin, ("spec", "netns"),
                               f"netns {ic.netns or '(bpfsync own)'} is not the namespace of "
                               f"{proxy.ref} ({proxy.netns or '(bpfsync own)'}): redirected "
                               f"connections are assigned to its listener, which lives there",
                               ic.ref))
    compiled = compile_intercept(ic, proxy_slots(state, ic))
    for where in compiled.too_long[:3]:
        out.append(Finding(ic.origin, ("spec", "rules"),
                           f"more than {IC_CHAIN} rules with sourcePorts overlap at {where}; "
                           f"the program checks at most {IC_CHAIN} per destination", ic.ref))
    for r in compiled.shadowed(ic):
        before = [o.priority for o in ic.rules if o.priority < r.priority
                  and set(o.protocols) & set(r.protocols) and _ports_overlap(o.ports, r.ports)
                  and any(a.overlaps(b) for a in o.destinations for b in r.destinations)]
        out.append(Finding(ic.origin, (*_rule_path(ic, r.priority), "priority"),
                           f"rule {r.priority} ({r.action}) can never match: every packet it "
                           f"matches is decided first by the rules before it (overlapping it: "
                           f"{', '.join(map(str, before[:5])) or 'none'}); give it a lower "
                           f"priority or remove it", ic.ref))
    return out


def _intercept_checks(state: DesiredState, invalid: set[str]) -> list[Finding]:
    ics = sorted(state.intercepts.values(), key=_order)
    out = _unique(ics, attrgetter("id"), ("spec", "id"), lambda x: f"id {x.id}")
    out += _unique(ics, lambda i: (i.netns, i.device), ("spec", "device"),
                   lambda i: f"device {i.place} (one Intercept per device)")
    egress = {(i.netns, i.device): i for i in state.interfaces.values() if i.egress}
    routing: dict[str | None, Intercept] = {}
    total = 0
    for ic in ics:
        iface = egress.get((ic.netns, ic.device))
        if iface is not None:
            out.append(Finding(ic.origin, ("spec", "device"),
                               f"{iface.ref} runs its egress program on {ic.place}; one device "
                               f"takes one of them (set egress: false there, or intercept "
                               f"another device)", ic.ref))
        first = routing.setdefault(ic.netns, ic)
        if first.routing != ic.routing:
            out.append(Finding(ic.origin, ("spec", "routing"),
                               f"routing differs from {first.ref}'s: the Intercepts of one "
                               f"namespace share its policy rule, table and marks",
                               ic.ref, related=((first.origin, ("spec", "routing")),)
                               if first.origin else ()))
        total += entry_count(ic)
        if total > IC_MAX_ENTRIES:
            out.append(Finding(ic.origin, ("spec", "rules"),
                               f"the rules of all Intercepts compile to more than "
                               f"{IC_MAX_ENTRIES} entries (destinations x ports); use \"*\", "
                               f"wider prefixes or fewer port ranges", ic.ref))
            break
        out += _intercept_rules(state, ic, invalid)
    return out
