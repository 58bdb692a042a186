"""Building the GUE data path's kinds from schema-valid documents, and their compact rows for
the parallel loader."""

from __future__ import annotations

import ipaddress
from typing import Any

from reconciler.core.interner import Interner
from reconciler.core.model import Endpoint, Origin
from reconciler.gue.model import DEFAULT_GUE_PORT, Interface, Service, Tunnel
from reconciler.load.build import DEFAULT_PRIORITY, Spec
from reconciler.load.secrets import KeySource, Secret


def build_tunnel(spec: Spec) -> Tunnel | None:
    local = spec.endpoint(spec["local"], DEFAULT_GUE_PORT)
    if spec.unicast(("local", "address"), local.address, ipv6=True):
        local = _canonical(local)
    remote = None
    if spec["remote"] != "learn":
        remote = spec.endpoint(spec["remote"], DEFAULT_GUE_PORT)
        if spec.unicast(("remote", "address"), remote.address, ipv6=True):
            remote = _canonical(remote)
            if (":" in remote.address) != (":" in local.address):
                spec.problem(("remote", "address"), f"remote {remote.address} and local "
                                                    f"{local.address} are of different families")
    if ":" in local.address and not spec.get("zeroChecksum", False):
        spec.problem(("local", "address"),
                     "an IPv6 underlay sends GUE with UDP checksum 0 (RFC 6935): allow it with "
                     "zeroChecksum: true on both ends of the tunnel")
    ping_ms = None
    if "ping" in spec:
        ping_ms = round(1000 * spec["ping"].get("intervalSeconds", 10))
        if remote is None:
            spec.problem(("ping",), "a tunnel that learns its remote cannot send pings; ping "
                                    "needs a fixed remote")
    key, source = None, None
    if "key" in spec or "keyFrom" in spec:
        key, source = spec.key()
    elif remote is None or ping_ms is not None:
        why = "learn its remote" if remote is None else "send pings"
        spec.problem((), f"a tunnel must have a key (keyFrom) to {why}: pings are "
                         f"authenticated with it")
    nxt = spec.next_key(key)
    if spec.bad:
        return None
    return Tunnel(spec.name, spec["id"], local, remote, spec.origin, key, source, ping_ms, nxt)


def build_service(spec: Spec) -> Service | None:
    proxy, backend = spec.endpoint(spec["proxy"]), spec.endpoint(spec["backend"])
    ok = (spec.unicast(("proxy", "address"), proxy.address, ipv6=True)
          & spec.unicast(("backend", "address"), backend.address, ipv6=True))
    if ok:  # one spelling per address: uniqueness is checked on the text
        proxy, backend = _canonical(proxy), _canonical(backend)
        if (":" in proxy.address) != (":" in backend.address):
            spec.problem(("backend", "address"),
                         f"backend {backend.address} and proxy {proxy.address} are of different "
                         f"families: the node rewrites the inner packet's destination, it does "
                         f"not translate between IPv4 and IPv6")
    key, source = spec.key()
    nxt = spec.next_key(key)
    if spec.bad or key is None:
        return None
    share = spec.share  # what Services repeat: one object each (a proxy endpoint is unique)
    return Service(spec.name, spec["groupId"], spec["serviceId"],
                   share(spec.get("protocol", "tcp")), Endpoint(share(proxy.address), proxy.port),
                   share(backend), share(spec["tunnel"]), share(key), share(source),
                   spec.origin, share(nxt))


def _canonical(ep: Endpoint) -> Endpoint:
    """An IPv6 endpoint's address in its compressed lower-case form (2001:DB8:0::1 is
    2001:db8::1); IPv4 addresses have one form already."""
    if ":" not in ep.address:
        return ep
    return Endpoint(str(ipaddress.IPv6Address(ep.address)), ep.port)


def build_interface(spec: Spec) -> Interface:
    return Interface(spec.name, spec["device"], spec.get("netns"), spec["role"],
                     spec.get("replies", "tunnel") == "tunnel", spec.get("ingress", True),
                     spec.get("egress", True), spec.get("fibLookup", False),
                     spec.get("priority", DEFAULT_PRIORITY), spec.origin)


# Rows: plain tuples for the parallel loader (load/parallel.py); at 100k Services pickling
# dataclasses costs more than loading in parallel saves.

def tunnel_row(r: Tunnel) -> tuple[Any, ...]:
    remote = (r.remote.address, r.remote.port) if r.remote else None
    key = (r.key.value, r.key_source.kind, r.key_source.ref) if (
        r.key is not None and r.key_source is not None) else None
    return (r.name, r.id, r.local.address, r.local.port, remote, key, r.ping_interval_ms,
            r.next_key.value if r.next_key is not None else None)


def tunnel_unrow(row: tuple[Any, ...], origin: Origin, share: Interner) -> Tunnel:
    name, tid, laddr, lport, remote, key, ping_ms, nxt = row
    return Tunnel(name, tid, Endpoint(laddr, lport), Endpoint(*remote) if remote else None,
                  origin, share(Secret(key[0])) if key else None,
                  share(KeySource(key[1], key[2])) if key else None, ping_ms,
                  share(Secret(nxt)) if nxt is not None else None)


def service_row(r: Service) -> tuple[Any, ...]:
    return (r.name, r.group_id, r.service_id, r.protocol, r.proxy.address, r.proxy.port,
            r.backend.address, r.backend.port, r.tunnel, r.key.value, r.key_source.kind,
            r.key_source.ref, r.next_key.value if r.next_key is not None else None)


def service_unrow(row: tuple[Any, ...], origin: Origin, share: Interner) -> Service:
    (name, group, sid, proto, paddr, pport, baddr, bport, tunnel, key, kkind, kref, nxt) = row
    return Service(name, group, sid, share(proto), Endpoint(share(paddr), pport),
                   share(Endpoint(baddr, bport)), share(tunnel), share(Secret(key)),
                   share(KeySource(kkind, kref)), origin,
                   share(Secret(nxt)) if nxt is not None else None)


def interface_row(r: Interface) -> tuple[Any, ...]:
    return (r.name, r.device, r.netns, r.role, r.replies_tunnel, r.ingress, r.egress,
            r.fib_lookup, r.priority)


def interface_unrow(row: tuple[Any, ...], origin: Origin, share: Interner) -> Interface:
    return Interface(*row, origin=origin)
