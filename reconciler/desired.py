"""Desired table contents compiled from resources: the pure half of every plan."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler import proxyconf
from reconciler import tables as t
from reconciler.state import DesiredState

Entries = dict[bytes, bytes]


@dataclass
class DesiredTables:
    entries: dict[str, Entries] = field(
        default_factory=lambda: {spec.name: {} for spec in t.OWNED_TABLES})
    owners: dict[str, dict[bytes, str]] = field(
        default_factory=lambda: {spec.name: {} for spec in t.OWNED_TABLES})

    def put(self, table: t.MapSpec, key: bytes, value: bytes, owner: str) -> None:
        self.entries[table.name][key] = value
        self.owners[table.name].setdefault(key, owner)

    @property
    def total(self) -> int:
        return sum(map(len, self.entries.values()))


def compile_tables(state: DesiredState) -> DesiredTables:
    out = DesiredTables()
    for tunnel in sorted(state.tunnels.values(), key=lambda x: x.name):
        key = t.tunnel_key(tunnel.id)
        remote = (tunnel.remote.address, tunnel.remote.port) if tunnel.remote else None
        out.put(t.TUNNEL, key, t.tunnel_value(
            key, (tunnel.local.address, tunnel.local.port), remote, tunnel.key,
            tunnel.ping_interval_ms), tunnel.ref)
        dkey = t.endpoint_key(tunnel.local.address, tunnel.local.port, t.PROTO_NUMBERS["udp"])
        out.put(t.DECAP, dkey, t.decap_value(dkey), tunnel.ref)
    for svc in state.services.values():
        tunnel_id = state.tunnels[svc.tunnel].id
        proto = t.PROTO_NUMBERS[svc.protocol]
        ekey = t.endpoint_key(svc.proxy.address, svc.proxy.port, proto)
        out.put(t.ENCAP, ekey, t.encap_value(
            ekey, tunnel_id, svc.group_id, svc.service_id, svc.key), svc.ref)
        vkey = t.sid_key(svc.group_id, svc.service_id)
        backend = t.endpoint_key(svc.backend.address, svc.backend.port, proto)
        out.put(t.VERIFY, vkey, t.verify_value(vkey, svc.key, backend), svc.ref)
        if state.has_node_role:  # only a node reverse-NATs replies; a gateway needs no entry
            out.put(t.REPLY, backend, t.reply_value(
                backend, ekey, tunnel_id, svc.group_id, svc.service_id, svc.key), svc.ref)
    for proxy in sorted(state.proxies.values(), key=lambda x: x.id):
        skey = t.slot_key(proxy.id)
        out.put(t.PROXY, skey, t.proxy_value(skey, proxyconf.encode(proxy)), proxy.ref)
        for net in proxy.destinations:
            for r in proxy.ports:
                for port in range(r.first, r.last + 1):
                    key = t.steer_key(port, str(net.network_address), net.prefixlen)
                    out.put(t.STEER, key, t.steer_value(key, proxy.id), proxy.ref)
    return out
