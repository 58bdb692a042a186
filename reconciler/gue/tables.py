"""The GUE data path's pinned tables (bpf/trueingress.h): specs, entry encodings, codecs."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

from reconciler.core.model import hostport
from reconciler.core.tables import (
    BPF_MAP_TYPE_PERCPU_ARRAY,
    PROTO_NAMES,
    Codec,
    Decoded,
    MapSpec,
    Owners,
    fixed_owner,
    guarded,
    stamped,
)
from reconciler.load.secrets import KEY_LEN, Secret

MAX_SERVICES = 131072
MAX_TUNNELS = 65536
MAX_DECAP = 65536

TUNNEL_FLAG_LEARN = 0x1
TUNNEL_FLAG_PING = 0x2
TUNNEL_FLAG_KEYED = 0x4
TUNNEL_FLAG_SEND_NEXT = 0x8  # pings are signed with the TI_NEXT key (the higher-ordered)
GUE_CTYPE_PING = 1
GUE_DATA_HLEN = 6
GUE_PING_HLEN = 5
GUE_OVERHEAD = 20 + 8 + 4 + 4 * GUE_DATA_HLEN  # outer IPv4 + UDP + GUE with private data
GUE_OVERHEAD6 = GUE_OVERHEAD + 20  # over an IPv6 underlay: a 40-byte outer header

TUNNEL = MapSpec("ti_tunnel", 4, 40, MAX_TUNNELS, "Tunnel", sized_by="tunnels")
DECAP = MapSpec("ti_decap", 8, 4, MAX_DECAP, "Tunnel", sized_by="tunnels")
VERIFY = MapSpec("ti_verify", 4, 32, MAX_SERVICES, "Service", sized_by="services")
ENCAP = MapSpec("ti_encap", 8, 32, MAX_SERVICES, "Service", sized_by="services")
REPLY = MapSpec("ti_reply", 8, 36, MAX_SERVICES, "Service", sized_by="services")
# Tunnels over an IPv6 underlay: a tunnel id is in TUNNEL or TUNNEL6, never both.
TUNNEL6 = MapSpec("ti_tunnel6", 4, 64, MAX_TUNNELS, "Tunnel", sized_by="tunnels")
DECAP6 = MapSpec("ti_decap6", 20, 4, MAX_DECAP, "Tunnel", sized_by="tunnels")
LEARNED6 = MapSpec("ti_learned6", 4, 32, MAX_TUNNELS, "Tunnel", owned=False,
                   sized_by="tunnels")
# IPv6 Services (IPv6 inside the tunnel): the same entries keyed by 20-byte IPv6 endpoints.
ENCAP6 = MapSpec("ti_encap6", 20, 32, MAX_SERVICES, "Service", sized_by="services")
VERIFY6 = MapSpec("ti_verify6", 4, 40, MAX_SERVICES, "Service", sized_by="services")
REPLY6 = MapSpec("ti_reply6", 20, 48, MAX_SERVICES, "Service", sized_by="services")
LEARNED = MapSpec("ti_learned", 4, 16, MAX_TUNNELS, "Tunnel", owned=False,
                   sized_by="tunnels")
# Second accepted keys while keys rotate, of Tunnels (kind 1) and Services (kind 2).
NEXT_TUNNEL, NEXT_SERVICE = 1, 2
NEXT_KEY_TABLE = MapSpec("ti_next", 8, 20, MAX_SERVICES, "Service", sized_by="services")
FRESH = MapSpec("ti_fresh", 4, 8, MAX_TUNNELS, "Tunnel", owned=False,
                   sized_by="tunnels")
PING_WINDOW_S = 60  # TI_PING_WINDOW_NS
STATS_SLOTS = 32
STATS = MapSpec("ti_stats", 4, 8, STATS_SLOTS, "Stats", owned=False,
                map_type=BPF_MAP_TYPE_PERCPU_ARRAY)

# Index -> name of the TI_STATS counters (enum ti_stat in bpf/trueingress.h).
STAT_NAMES: tuple[str, ...] = (
    "pass", "encap", "decap", "ping", "dnat", "reply_nat", "fib_redirect",
    "drop_no_tunnel", "drop_no_remote", "drop_no_service", "drop_bad_key",
    "drop_bad_version", "drop_bad_header", "drop_malformed", "drop_fragment", "drop_error",
    "ping_bad_key", "ping_fixed", "ping_stale", "ping_replay", "drop_bad_source",
    "drop_bad_inner",
)

_EP = struct.Struct("!4sHBx")
_EP6 = struct.Struct("!16sHBx")
_U32 = struct.Struct("!I")
_SID = struct.Struct("!HH")
_SERVICE = struct.Struct(f"!IHH{KEY_LEN}sI")  # + stamp
_VERIFY = struct.Struct(f"!{KEY_LEN}s8sI")  # + stamp
_VERIFY6 = struct.Struct(f"!{KEY_LEN}s20s")  # + stamp
_TUNNEL = struct.Struct(f"!4s4sHHII{KEY_LEN}s")  # + stamp
_TUNNEL6 = struct.Struct(f"!16s16sHHII{KEY_LEN}s")  # + stamp
_REPLY = struct.Struct(f"!8sIHH{KEY_LEN}s")  # + stamp
_REPLY6 = struct.Struct(f"!20sIHH{KEY_LEN}s")  # + stamp
_LEARNED = struct.Struct("!4sH2x")  # + host-order u64 updated_ns
_LEARNED6 = struct.Struct("!16sH6x")  # + host-order u64 updated_ns
_NS = struct.Struct("=Q")


def endpoint_key(address: str, port: int, proto: int) -> bytes:
    """struct ti_endpoint (8 bytes) of an IPv4 address, ti_endpoint6 (20) of an IPv6 one."""
    return (_EP6 if ":" in address else _EP).pack(_packed(address), port, proto)


def _packed(address: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)


def _text(packed: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET6 if len(packed) == 16 else socket.AF_INET, packed)


def tunnel_tables(ipv6: bool) -> tuple[MapSpec, MapSpec]:
    """A Tunnel's TUNNEL and DECAP tables: its endpoints' family chooses them."""
    return (TUNNEL6, DECAP6) if ipv6 else (TUNNEL, DECAP)


def service_tables(ipv6: bool) -> tuple[MapSpec, MapSpec, MapSpec]:
    """A Service's ENCAP, VERIFY and REPLY tables: its addresses' family chooses them."""
    return (ENCAP6, VERIFY6, REPLY6) if ipv6 else (ENCAP, VERIFY, REPLY)


def tunnel_key(tunnel_id: int) -> bytes:
    return _U32.pack(tunnel_id)


def sid_key(group_id: int, service_id: int) -> bytes:
    return _SID.pack(group_id, service_id)


def encap_value(key: bytes, tunnel_id: int, group_id: int, service_id: int, secret: Secret) -> bytes:
    return stamped(key, _SERVICE.pack(tunnel_id, group_id, service_id, secret.value, 0))


def verify_value(key: bytes, secret: Secret, backend: bytes) -> bytes:
    """ti_verify (backend an 8-byte endpoint) or ti_verify6 (a 20-byte one)."""
    if len(backend) == _EP6.size:
        return stamped(key, _VERIFY6.pack(secret.value, backend))
    return stamped(key, _VERIFY.pack(secret.value, backend, 0))


def tunnel_value(key: bytes, local: tuple[str, int], remote: tuple[str, int] | None,
                 secret: Secret | None = None, ping_interval_ms: int | None = None,
                 send_next: bool = False) -> bytes:
    flags = ((TUNNEL_FLAG_LEARN if remote is None else 0)
             | (TUNNEL_FLAG_PING if ping_interval_ms else 0)
             | (TUNNEL_FLAG_KEYED if secret is not None else 0)
             | (TUNNEL_FLAG_SEND_NEXT if send_next else 0))
    ipv6 = ":" in local[0]
    raddr, rport = remote if remote else ("::" if ipv6 else "0.0.0.0", 0)
    return stamped(key, (_TUNNEL6 if ipv6 else _TUNNEL).pack(
        _packed(local[0]), _packed(raddr), local[1], rport, flags,
        ping_interval_ms or 0, secret.value if secret is not None else bytes(KEY_LEN)))


def reply_value(key: bytes, proxy: bytes, tunnel_id: int, group_id: int, service_id: int,
                secret: Secret) -> bytes:
    layout = _REPLY6 if len(proxy) == _EP6.size else _REPLY
    return stamped(key, layout.pack(proxy, tunnel_id, group_id, service_id, secret.value))


def next_key(kind: int, ident: bytes) -> bytes:
    """TI_NEXT key: kind (NEXT_TUNNEL, NEXT_SERVICE) and the tunnel key or sid key bytes."""
    return _U32.pack(kind) + ident


def next_value(key: bytes, secret: Secret) -> bytes:
    return stamped(key, secret.value)


def decap_value(key: bytes) -> bytes:
    return stamped(key, b"")


# Decoding, for diff, get and status. Key material comes back as Secret, never as bytes.

def decode_endpoint(raw: bytes) -> dict[str, Any]:
    addr, port, proto = (_EP6 if len(raw) == _EP6.size else _EP).unpack(raw)
    return {"address": _text(addr), "port": port, "protocol": PROTO_NAMES.get(proto, str(proto))}


def endpoint_text(ep: Mapping[str, Any]) -> str:
    """An endpoint document's address:port, an IPv6 address in brackets."""
    return hostport(ep["address"], ep["port"])


def _tunnel_id(raw: bytes) -> Decoded:
    return {"id": _U32.unpack(raw)[0]}


def _sid(raw: bytes) -> Decoded:
    g, s = _SID.unpack(raw)
    return {"groupId": g, "serviceId": s}


def _next_of(raw: bytes) -> Decoded:
    (kind,) = _U32.unpack_from(raw)
    if kind == NEXT_TUNNEL:
        return {"nextKeyOf": "tunnel", "id": _U32.unpack_from(raw, 4)[0]}
    g, s = _SID.unpack_from(raw, 4)
    return {"nextKeyOf": "service", "groupId": g, "serviceId": s}


def _encap(raw: bytes) -> Decoded:
    tid, g, s, secret, _ = _SERVICE.unpack_from(raw)
    return {"tunnelId": tid, "groupId": g, "serviceId": s, "key": Secret(secret)}


def _verify(raw: bytes) -> Decoded:
    secret, backend, _ = _VERIFY.unpack_from(raw)
    return {"key": Secret(secret), "backend": endpoint_text(decode_endpoint(backend))}


def _verify6(raw: bytes) -> Decoded:
    secret, backend = _VERIFY6.unpack_from(raw)
    return {"key": Secret(secret), "backend": endpoint_text(decode_endpoint(backend))}


def _tunnel(raw: bytes) -> Decoded:
    layout = _TUNNEL6 if len(raw) == TUNNEL6.value_size else _TUNNEL
    laddr, raddr, lport, rport, flags, ping_ms, secret = layout.unpack_from(raw)
    remote = ("learn" if flags & TUNNEL_FLAG_LEARN else
              endpoint_text({"address": _text(raddr), "port": rport}))
    out: Decoded = {"local": endpoint_text({"address": _text(laddr), "port": lport}),
                    "remote": remote, "flags": flags}
    if flags & TUNNEL_FLAG_KEYED:
        out["key"] = Secret(secret)
    if flags & TUNNEL_FLAG_PING:
        out["pingIntervalMs"] = ping_ms
    return out


def _reply(raw: bytes) -> Decoded:
    layout = _REPLY6 if len(raw) == REPLY6.value_size else _REPLY
    proxy, tid, g, s, secret = layout.unpack_from(raw)
    return {"proxy": endpoint_text(decode_endpoint(proxy)), "tunnelId": tid, "groupId": g,
            "serviceId": s, "key": Secret(secret)}


def _learned(raw: bytes) -> Decoded:
    layout = _LEARNED6 if len(raw) == LEARNED6.value_size else _LEARNED
    addr, port = layout.unpack_from(raw)
    (updated_ns,) = _NS.unpack_from(raw, layout.size)
    return {"remote": endpoint_text({"address": _text(addr), "port": port}),
            "updatedNs": updated_ns}


def _nothing(_raw: bytes) -> Decoded:
    return {}


def _describe_tunnel(k: Decoded) -> str:
    return f"tunnel {k['id']}"


def _describe_sid(k: Decoded) -> str:
    return f"group {k['groupId']} service {k['serviceId']}"


def _describe_endpoint(k: Decoded) -> str:
    return f"{endpoint_text(k)}/{k['protocol']}"


def _describe_next(k: Decoded) -> str:
    return f"next key of {_describe_tunnel(k) if 'id' in k else _describe_sid(k)}"


def service_ref(group: int, service: int) -> str:
    """A Service's name when nothing names it: its ids."""
    return f"Service/svc-{group}-{service}"


def tunnel_ref(tunnel_id: int) -> str:
    """A Tunnel's name when nothing names it: its id."""
    return f"Tunnel/tunnel-{tunnel_id}"


def _tunnel_owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    return guarded("Tunnel", lambda key, _v: tunnel_ref(_U32.unpack(key)[0]))


def _decap_owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    def name(key: bytes, _value: bytes) -> str:
        return f"Tunnel/(decap {endpoint_text(decode_endpoint(key))})"
    return guarded("Tunnel", name)


def _verify_owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    return guarded("Service", lambda key, _v: service_ref(*_SID.unpack(key)))


def _value_owners(decode: Callable[[bytes], Decoded]) -> Callable[
        [Mapping[str, Mapping[bytes, bytes]]], Owners]:
    """ENCAP and REPLY: the Service is named by the ids its value holds."""
    def owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
        def name(_key: bytes, value: bytes) -> str:
            v = decode(value)
            return service_ref(v["groupId"], v["serviceId"])
        return guarded("Service", name)
    return owners


def _next_owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    def name(key: bytes, _value: bytes) -> str:
        k = _next_of(key)
        if k["nextKeyOf"] == "tunnel":
            return tunnel_ref(k["id"])
        return service_ref(k["groupId"], k["serviceId"])
    return guarded("Service", name)


CODECS: dict[str, Codec] = {
    TUNNEL.name: Codec(_tunnel_id, _tunnel, _describe_tunnel, _tunnel_owners),
    DECAP.name: Codec(decode_endpoint, _nothing, _describe_endpoint, _decap_owners),
    VERIFY.name: Codec(_sid, _verify, _describe_sid, _verify_owners),
    ENCAP.name: Codec(decode_endpoint, _encap, _describe_endpoint, _value_owners(_encap)),
    REPLY.name: Codec(decode_endpoint, _reply, _describe_endpoint, _value_owners(_reply)),
    ENCAP6.name: Codec(decode_endpoint, _encap, _describe_endpoint, _value_owners(_encap)),
    VERIFY6.name: Codec(_sid, _verify6, _describe_sid, _verify_owners),
    REPLY6.name: Codec(decode_endpoint, _reply, _describe_endpoint, _value_owners(_reply)),
    NEXT_KEY_TABLE.name: Codec(_next_of, lambda raw: {"nextKey": Secret(raw[:KEY_LEN])},
                               _describe_next, _next_owners),
    LEARNED.name: Codec(_tunnel_id, _learned, _describe_tunnel, fixed_owner("Tunnel/(learned)")),
    TUNNEL6.name: Codec(_tunnel_id, _tunnel, _describe_tunnel, _tunnel_owners),
    DECAP6.name: Codec(decode_endpoint, _nothing, _describe_endpoint, _decap_owners),
    LEARNED6.name: Codec(_tunnel_id, _learned, _describe_tunnel, fixed_owner("Tunnel/(learned)")),
    FRESH.name: Codec(_tunnel_id, _nothing, _describe_tunnel, fixed_owner("Tunnel/(fresh)")),
}
