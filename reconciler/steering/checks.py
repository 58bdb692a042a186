"""Checks across Proxies: slots, one namespace, overlapping steering, descriptors, sizes."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.core.checks import order, over_capacity, unique
from reconciler.core.errors import Severity
from reconciler.core.findings import Finding
from reconciler.core.model import destination_port_count
from reconciler.core.state import DesiredState
from reconciler.steering import proxyconf
from reconciler.steering.model import Proxy
from reconciler.steering.tables import PROXY_CONFIG_SIZE, STEER, STEER6


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
    out = unique(proxies, lambda p: p.id, ("spec", "id"), lambda p: f"proxy id {p.id}")
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
    for p in proxies:
        size = len(proxyconf.encode(p))
        if size > PROXY_CONFIG_SIZE - 8:
            out.append(Finding(p.origin, ("spec", "backends"),
                               f"the proxy's configuration takes {size} bytes, more than the "
                               f"{PROXY_CONFIG_SIZE - 8} a ps_proxy entry holds; use fewer or "
                               f"shorter backend names", p.ref))
    for version, table in ((4, STEER), (6, STEER6)):
        out += over_capacity(proxies, lambda p, v=version: destination_port_count(
                                 p.destinations, p.ports, v), table.max_entries,
                             ("spec", "ports"),
                             lambda total, v=version, t=table:
                                 f"ports x IPv{v} destinations of all Proxies make {total} "
                                 f"steering entries, more than {t.name}'s {t.max_entries}; use "
                                 f"\"*\" or wider prefixes")
    return out




def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    return _proxy_checks(sorted(state.of(Proxy).values(), key=order))
