"""Desired table contents compiled from resources: the pure half of every plan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.core import tables as t
from reconciler.core.checks import proxy_slots
from reconciler.core.model import destination_ports
from reconciler.core.state import DesiredState
from reconciler.gue.model import Service
from reconciler.intercept.compile import compile_intercept
from reconciler.load.secrets import Secret
from reconciler.steering import proxyconf
from reconciler.tproxy.cgroups import datapath_cgroup, level
from reconciler.tproxy.model import TrafficMatch, TransparentProxy

if TYPE_CHECKING:
    from pathlib import Path

    from reconciler.kernel.cgroups import HostFacts

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


Compiled = list[tuple[t.MapSpec, bytes, bytes]]
SERVICE_TABLES = (t.ENCAP, t.VERIFY, t.REPLY, t.NEXT_KEY_TABLE)


class CompileMemo:
    """The Service tables of the last compile, kept by the daemon and updated by difference:
    only Services that are not the very same object as last time (the parse cache keeps
    unchanged ones) are packed again. At 100k Services a full compile costs most of a
    reconcile. Any change of tunnel ids or of the node role rebuilds them whole."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.compiled: dict[str, Compiled] = {}
        self.context: tuple[dict[str, int], bool] | None = None
        self.entries: dict[str, Entries] = {}
        self.owners: dict[str, dict[bytes, str]] = {}

    def _add(self, name: str, svc: Service, tunnel_ids: dict[str, int], node: bool) -> None:
        compiled = self.compiled[name] = _service_entries(svc, tunnel_ids[svc.tunnel], node)
        ref = svc.ref
        for spec, key, value in compiled:
            self.entries[spec.name][key] = value
            self.owners[spec.name].setdefault(key, ref)

    def service_tables(self, services: dict[str, Service], tunnel_ids: dict[str, int],
                       node: bool) -> tuple[dict[str, Entries], dict[str, dict[bytes, str]]]:
        if self.context != (tunnel_ids, node):
            self.context = (tunnel_ids, node)
            self.services, self.compiled = {}, {}
            self.entries = {spec.name: {} for spec in SERVICE_TABLES}
            self.owners = {spec.name: {} for spec in SERVICE_TABLES}
        before = self.services
        for name, svc in before.items():  # removed or replaced: take their entries out
            if services.get(name) is not svc:
                for spec, key, _ in self.compiled.pop(name):
                    self.entries[spec.name].pop(key, None)
                    self.owners[spec.name].pop(key, None)
        for name, svc in services.items():
            if before.get(name) is not svc:
                self._add(name, svc, tunnel_ids, node)
        self.services = dict(services)
        return self.entries, self.owners


def _service_entries(svc: Service, tunnel_id: int, node: bool) -> Compiled:
    proto = t.PROTO_NUMBERS[svc.protocol]
    ekey = t.endpoint_key(svc.proxy.address, svc.proxy.port, proto)
    vkey = t.sid_key(svc.group_id, svc.service_id)
    backend = t.endpoint_key(svc.backend.address, svc.backend.port, proto)
    first, second = accepted_slots(svc.key, svc.next_key)
    out = [(t.ENCAP, ekey, t.encap_value(ekey, tunnel_id, svc.group_id, svc.service_id,
                                         svc.key)),
           (t.VERIFY, vkey, t.verify_value(vkey, first, backend))]
    if node:  # only a node reverse-NATs replies; a gateway needs no entry
        out.append((t.REPLY, backend, t.reply_value(backend, ekey, tunnel_id, svc.group_id,
                                                    svc.service_id, svc.key)))
    if second is not None:  # accepted beside the key while keys rotate
        nkey = t.next_key(t.NEXT_SERVICE, vkey)
        out.append((t.NEXT_KEY_TABLE, nkey, t.next_value(nkey, second)))
    return out


def accepted_slots(key: Secret, next_key: Secret | None) -> tuple[Secret, Secret | None]:
    """Where the two accepted keys go: the first slot (TI_VERIFY, TI_TUNNEL) and TI_NEXT.

    Slots follow the keys' byte order, not which one is sent: swapping key and nextKey (step
    two of a rotation) then leaves both accepted slots as they are, and adding or dropping the
    second key moves at most one key, written before the slot it leaves (plan.UPSERT_ORDER).
    Two writes that swapped slots would leave a moment in which one of the keys, still in
    use by the far end, was accepted by neither."""
    if next_key is None or next_key == key:
        return key, None
    low, high = sorted((key, next_key), key=lambda s: s.value)
    return low, high


def _rule_entries(out: DesiredTables, tp: TransparentProxy, kind: int,
                  matches: tuple[TrafficMatch, ...]) -> None:
    for m in matches:
        for net, port in destination_ports(m.destinations, m.ports):
            key = t.tp_rule_key(tp.id, kind, port, str(net.network_address), net.prefixlen)
            out.put(t.TP_RULES, key, t.tp_rule_value(key, tp.id), tp.ref)


def _transparent(out: DesiredTables, state: DesiredState, facts: HostFacts,
                 pin_root: Path) -> None:
    """A TransparentProxy's configuration needs its Proxy's namespace (its cookie): without
    it nothing is written, and the attach plan says what is waited for."""
    if facts.netns_cookie is None:
        return
    mine = datapath_cgroup(pin_root)
    for tp in sorted(state.transparent.values(), key=lambda x: x.id):
        proxy = state.proxies[tp.proxy]
        excluded = [(facts.cgroup_ids[c], level(c)) for c in (mine, *tp.exclude_cgroups)
                    if c in facts.cgroup_ids]
        key = t.slot_key(tp.id)
        out.put(t.TP_CONFIG, key, t.tp_config_value(key, proxy.id, tp.fail_open,
                                                    facts.netns_cookie, excluded,
                                                    tp.refuse_ipv6), tp.ref)
        _rule_entries(out, tp, t.TP_KIND_INTERCEPT, tp.intercept)
        _rule_entries(out, tp, t.TP_KIND_EXCLUDE, tp.exclude)


def compile_tables(state: DesiredState, memo: CompileMemo | None = None,
                   facts: HostFacts | None = None, pin_root: Path | None = None) -> DesiredTables:
    """facts and pin_root are needed when the state has TransparentProxies."""
    out = DesiredTables()
    tunnel_seconds: list[tuple[bytes, Secret, str]] = []  # TI_NEXT entries of Tunnels
    for tunnel in sorted(state.tunnels.values(), key=lambda x: x.name):
        key = t.tunnel_key(tunnel.id)
        remote = (tunnel.remote.address, tunnel.remote.port) if tunnel.remote else None
        first, second = (accepted_slots(tunnel.key, tunnel.next_key) if tunnel.key is not None
                         else (None, None))
        if second is not None:
            tunnel_seconds.append((t.next_key(t.NEXT_TUNNEL, key), second, tunnel.ref))
        out.put(t.TUNNEL, key, t.tunnel_value(
            key, (tunnel.local.address, tunnel.local.port), remote, first,
            tunnel.ping_interval_ms, send_next=second is not None and second == tunnel.key),
            tunnel.ref)
        dkey = t.endpoint_key(tunnel.local.address, tunnel.local.port, t.PROTO_NUMBERS["udp"])
        out.put(t.DECAP, dkey, t.decap_value(dkey), tunnel.ref)
    node = state.has_node_role
    tunnel_ids = {name: tunnel.id for name, tunnel in state.tunnels.items()}
    if memo is not None:
        entries, owners = memo.service_tables(state.services, tunnel_ids, node)
        out.entries.update(entries)  # the memo's own dicts: read-only for everyone else
        out.owners.update(owners)
    else:
        for svc in state.services.values():
            ref = svc.ref
            for spec, key, value in _service_entries(svc, tunnel_ids[svc.tunnel], node):
                out.put(spec, key, value, ref)
    if tunnel_seconds:  # the Service half may be the memo's own dicts: write into copies
        name = t.NEXT_KEY_TABLE.name
        out.entries[name], out.owners[name] = dict(out.entries[name]), dict(out.owners[name])
        for nkey, second, ref in tunnel_seconds:
            out.put(t.NEXT_KEY_TABLE, nkey, t.next_value(nkey, second), ref)
    marks = proxy_marks(state)
    for proxy in sorted(state.proxies.values(), key=lambda x: x.id):
        skey = t.slot_key(proxy.id)
        out.put(t.PROXY, skey, t.proxy_value(skey, proxyconf.encode(proxy, marks.get(proxy.name))),
                proxy.ref)
        for net, port in destination_ports(proxy.destinations, proxy.ports):
            key = t.steer_key(port, str(net.network_address), net.prefixlen)
            out.put(t.STEER, key, t.steer_value(key, proxy.id), proxy.ref)
    if state.transparent and facts is not None and pin_root is not None:
        _transparent(out, state, facts, pin_root)
    for ic in sorted(state.intercepts.values(), key=lambda x: x.id):
        for key, value in compile_intercept(ic, proxy_slots(state, ic)).entries.items():
            out.put(t.IC_RULES, key, value, ic.ref)
    return out


def proxy_marks(state: DesiredState) -> dict[str, int]:
    """SO_MARK of the connections of Proxies that Intercepts redirect to (never intercepted
    themselves): the proxyMark of their namespace's Intercepts."""
    return {r.proxy: ic.routing.proxy_mark for ic in state.intercepts.values()
            for r in ic.rules if r.proxy}
