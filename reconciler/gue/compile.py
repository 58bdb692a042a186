"""The GUE data path's entries: tunnels (TI_TUNNEL, TI_DECAP), services (TI_ENCAP,
TI_VERIFY, TI_REPLY on a node) and the second accepted keys while keys rotate (TI_NEXT)."""

from __future__ import annotations

from reconciler.core.desired import CompileContext, DesiredTables, Entries
from reconciler.core.state import DesiredState, changed_names
from reconciler.core.tables import PROTO_NUMBERS, MapSpec
from reconciler.gue import tables as gt
from reconciler.gue.model import Service, Tunnel, has_node_role
from reconciler.load.secrets import Secret

Compiled = list[tuple[MapSpec, bytes, bytes]]
SERVICE_TABLES = (gt.ENCAP, gt.VERIFY, gt.REPLY, gt.ENCAP6, gt.VERIFY6, gt.REPLY6,
                  gt.NEXT_KEY_TABLE)


class ServiceMemo:
    """The Service tables of the last compile, kept by the daemon and updated by difference:
    only Services that are not the very same object as last time (the parse cache keeps
    unchanged ones) are packed again. At 100k Services a full compile costs most of a
    reconcile. Any change of tunnel ids or of the node role rebuilds them whole."""

    def __init__(self) -> None:
        self.services: dict[str, Service] = {}
        self.compiled: dict[str, Compiled] = {}
        self.context: tuple[dict[str, int], bool] | None = None
        self.state: DesiredState | None = None  # the state last compiled
        self.entries: dict[str, Entries] = {}
        self.owners: dict[str, dict[bytes, str]] = {}

    def _add(self, name: str, svc: Service, tunnel_ids: dict[str, int], node: bool) -> None:
        compiled = self.compiled[name] = _service_entries(svc, tunnel_ids[svc.tunnel], node)
        ref = svc.ref
        for spec, key, value in compiled:
            self.entries[spec.name][key] = value
            self.owners[spec.name].setdefault(key, ref)

    def service_tables(self, state: DesiredState, tunnel_ids: dict[str, int],
                       node: bool) -> tuple[dict[str, Entries], dict[str, dict[bytes, str]]]:
        services = state.of(Service)
        if self.context != (tunnel_ids, node):
            self.context = (tunnel_ids, node)
            self.state, self.services, self.compiled = None, {}, {}
            self.entries = {spec.name: {} for spec in SERVICE_TABLES}
            self.owners = {spec.name: {} for spec in SERVICE_TABLES}
        before = self.services
        changed, gone = changed_names(services, before,
                                      state.changed_since(self.state, Service.kind))
        for name in (*changed, *gone):  # replaced or removed: take their entries out
            for spec, key, _ in self.compiled.pop(name, ()):
                self.entries[spec.name].pop(key, None)
                self.owners[spec.name].pop(key, None)
        for name in changed:
            self._add(name, services[name], tunnel_ids, node)
        if changed or gone or len(services) != len(before):
            self.services = dict(services)
        self.state = state
        return self.entries, self.owners


def _service_entries(svc: Service, tunnel_id: int, node: bool) -> Compiled:
    proto = PROTO_NUMBERS[svc.protocol]
    ekey = gt.endpoint_key(svc.proxy.address, svc.proxy.port, proto)
    vkey = gt.sid_key(svc.group_id, svc.service_id)
    backend = gt.endpoint_key(svc.backend.address, svc.backend.port, proto)
    first, second = accepted_slots(svc.key, svc.next_key)
    encap, verify, reply = gt.service_tables(":" in svc.proxy.address)
    out = [(encap, ekey, gt.encap_value(ekey, tunnel_id, svc.group_id, svc.service_id,
                                        svc.key)),
           (verify, vkey, gt.verify_value(vkey, first, backend))]
    if node:  # only a node reverse-NATs replies; a gateway needs no entry
        out.append((reply, backend, gt.reply_value(backend, ekey, tunnel_id, svc.group_id,
                                                   svc.service_id, svc.key)))
    if second is not None:  # accepted beside the key while keys rotate
        nkey = gt.next_key(gt.NEXT_SERVICE, vkey)
        out.append((gt.NEXT_KEY_TABLE, nkey, gt.next_value(nkey, second)))
    return out


def accepted_slots(key: Secret, next_key: Secret | None) -> tuple[Secret, Secret | None]:
    """Where the two accepted keys go: the first slot (TI_VERIFY, TI_TUNNEL) and TI_NEXT.

    Slots follow the keys' byte order, not which one is sent: swapping key and nextKey (step
    two of a rotation) then leaves both accepted slots as they are, and adding or dropping the
    second key moves at most one key, written before the slot it leaves (core/registry.py UPSERT_ORDER).
    Two writes that swapped slots would leave a moment in which one of the keys, still in
    use by the far end, was accepted by neither."""
    if next_key is None or next_key == key:
        return key, None
    low, high = sorted((key, next_key), key=lambda s: s.value)
    return low, high


def compile_gue(out: DesiredTables, state: DesiredState, context: CompileContext) -> None:
    tunnel_seconds: list[tuple[bytes, Secret, str]] = []  # TI_NEXT entries of Tunnels
    for tunnel in sorted(state.of(Tunnel).values(), key=lambda x: x.name):
        key = gt.tunnel_key(tunnel.id)
        remote = (tunnel.remote.address, tunnel.remote.port) if tunnel.remote else None
        first, second = (accepted_slots(tunnel.key, tunnel.next_key) if tunnel.key is not None
                         else (None, None))
        if second is not None:
            tunnel_seconds.append((gt.next_key(gt.NEXT_TUNNEL, key), second, tunnel.ref))
        table, decap = gt.tunnel_tables(":" in tunnel.local.address)
        out.put(table, key, gt.tunnel_value(
            key, (tunnel.local.address, tunnel.local.port), remote, first,
            tunnel.ping_interval_ms, send_next=second is not None and second == tunnel.key),
            tunnel.ref)
        dkey = gt.endpoint_key(tunnel.local.address, tunnel.local.port, PROTO_NUMBERS["udp"])
        out.put(decap, dkey, gt.decap_value(dkey), tunnel.ref)
    node = has_node_role(state)
    tunnel_ids = {name: tunnel.id for name, tunnel in state.of(Tunnel).items()}
    if context.memo is not None:
        memo = context.memo.get("gue", ServiceMemo)
        entries, owners = memo.service_tables(state, tunnel_ids, node)
        out.entries.update(entries)  # the memo's own dicts: read-only for everyone else
        out.owners.update(owners)
    else:
        for svc in state.of(Service).values():
            ref = svc.ref
            for spec, key, value in _service_entries(svc, tunnel_ids[svc.tunnel], node):
                out.put(spec, key, value, ref)
    if tunnel_seconds:  # the Service half may be the memo's own dicts: write into copies
        name = gt.NEXT_KEY_TABLE.name
        out.entries[name], out.owners[name] = dict(out.entries[name]), dict(out.owners[name])
        for nkey, second, ref in tunnel_seconds:
            out.put(gt.NEXT_KEY_TABLE, nkey, gt.next_value(nkey, second), ref)
