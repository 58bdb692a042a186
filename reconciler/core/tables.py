"""The pinned tables (TrueIngress and port steering): map specs and the byte encoding of
their entries.

Mirrors bpf/trueingress.h and bpf/steer.h (a kernel test compiles the headers with BCC and
compares layouts). Every multi-byte field is big-endian, as on the wire, except the steering
trie's prefix length and slot numbers, which the kernel and the program read in host order.
Values end with a 4-byte stamp: crc32 of the key and the rest of the value, which marks an
entry as written by bpfsync, so that an entry written by anything else (bpftool, a script)
can be told apart as drift.
"""

from __future__ import annotations

import json
import socket
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from reconciler.load.secrets import KEY_LEN, Secret

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_SK_STORAGE = 24
BPF_F_NO_PREALLOC = 1

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
PROTO_NAMES = {6: "tcp", 17: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str  # kernel map name and pin file name (<= 15 characters)
    key_size: int
    value_size: int
    max_entries: int
    kind: str  # resource kind whose entries it holds
    owned: bool = True  # False: written by the data path, never diffed or pruned
    map_type: int = BPF_MAP_TYPE_HASH
    flags: int = 0
    batch: bool = True  # the map type supports batch lookup/update/delete (LPM tries do not)


TUNNEL = MapSpec("ti_tunnel", 4, 40, MAX_TUNNELS, "Tunnel")
DECAP = MapSpec("ti_decap", 8, 4, MAX_DECAP, "Tunnel")
VERIFY = MapSpec("ti_verify", 4, 32, MAX_SERVICES, "Service")
ENCAP = MapSpec("ti_encap", 8, 32, MAX_SERVICES, "Service")
REPLY = MapSpec("ti_reply", 8, 36, MAX_SERVICES, "Service")
LEARNED = MapSpec("ti_learned", 4, 16, MAX_TUNNELS, "Tunnel", owned=False)
# Second accepted keys while keys rotate, of Tunnels (kind 1) and Services (kind 2).
NEXT_TUNNEL, NEXT_SERVICE = 1, 2
NEXT_KEY_TABLE = MapSpec("ti_next", 8, 20, MAX_SERVICES, "Service")
FRESH = MapSpec("ti_fresh", 4, 8, MAX_TUNNELS, "Tunnel", owned=False)
PING_WINDOW_S = 60  # TI_PING_WINDOW_NS
STATS_SLOTS = 32
STATS = MapSpec("ti_stats", 4, 8, STATS_SLOTS, "Stats", owned=False,
                map_type=BPF_MAP_TYPE_PERCPU_ARRAY)

# Port steering (bpf/steer.h): destination -> listener slot, slot -> proxy configuration
# (read by the data path), slot -> listening socket (registered by the data path).
MAX_STEER = 262144
MAX_PROXIES = 64
PROXY_CONFIG_SIZE = 8192
PS_COUNTERS = 4
STEER = MapSpec("ps_dest", 12, 8, MAX_STEER, "Proxy", map_type=BPF_MAP_TYPE_LPM_TRIE,
                flags=BPF_F_NO_PREALLOC, batch=False)
PROXY = MapSpec("ps_proxy", 4, PROXY_CONFIG_SIZE, MAX_PROXIES, "Proxy")
SOCKETS = MapSpec("ps_sockets", 4, 8, MAX_PROXIES, "Proxy", owned=False,
                  map_type=BPF_MAP_TYPE_SOCKMAP)
PS_STATS = MapSpec("ps_stats", 4, 8, MAX_PROXIES * PS_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
PS_STAT_NAMES = ("lookups", "steered", "no_listener", "assign_error")

# Transparent proxy by cgroup (bpf/tproxy.h): intercept/exclude rules per TransparentProxy,
# its configuration, the connections the programs track, their socket-local storage.
TP_MAX = 64
TP_MAX_RULES = 65536
TP_MAX_CONNS = 65536
TP_COUNTERS = 8
TP_EXCLUDE_CGROUPS = 4
TP_KIND_INTERCEPT, TP_KIND_EXCLUDE = 1, 2
TP_FLAG_FAIL_OPEN = 1
TP_FLAG_REFUSE_IPV6 = 2
TP_RULES = MapSpec("tp_rules", 12, 8, TP_MAX_RULES, "TransparentProxy",
                   map_type=BPF_MAP_TYPE_LPM_TRIE, flags=BPF_F_NO_PREALLOC, batch=False)
TP_CONFIG = MapSpec("tp_config", 4, 72, TP_MAX, "TransparentProxy")
TP_CONNS = MapSpec("tp_conns", 12, 8, TP_MAX_CONNS, "TransparentProxy", owned=False)
TP_STATS = MapSpec("tp_stats", 4, 8, TP_MAX * TP_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
# Socket-local storage needs BTF, which BCC writes: it is created by the first compilation of
# bpf/tproxy.c, never by open_tables, and checked like every other pin once it exists.
TP_ORIG = MapSpec("tp_orig", 4, 8, 0, "TransparentProxy", owned=False,
                  map_type=BPF_MAP_TYPE_SK_STORAGE, flags=BPF_F_NO_PREALLOC)
# IPv6 connects (connect6): a map of its own, so that TP_STATS keeps its size (pins of an
# earlier version stay valid).
TP6_COUNTERS = 2
TP6_STATS = MapSpec("tp_stats6", 4, 8, TP_MAX * TP6_COUNTERS, "Stats", owned=False,
                    map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
TP6_STAT_NAMES = ("ipv6_direct", "ipv6_refused")
TP_STAT_NAMES = ("connects", "intercepted", "excluded", "other_netns", "no_proxy",
                 "track_full", "answered", "unanswered")

# TC interception (bpf/intercept.h): compiled first-match rules per Intercept, redirected SYNs
# on their way to lo, counters, and the record of host plumbing bpfsync made per namespace.
IC_MAX = 256
IC_MAX_ENTRIES = 262144
IC_CHAIN = 8
IC_MAX_SYN = 65536
IC_COUNTERS = 16
IC_PORT_ANY = 0
IC_ACTION_PASS, IC_ACTION_DROP, IC_ACTION_REDIRECT = 1, 2, 3
IC_SYSCTL_UNTOUCHED = 0xFFFFFFFF
IC_RULES = MapSpec("ic_rules", 12, 72, IC_MAX_ENTRIES, "Intercept",
                   map_type=BPF_MAP_TYPE_LPM_TRIE, flags=BPF_F_NO_PREALLOC, batch=False)
IC_SYN = MapSpec("ic_syn", 12, 4, IC_MAX_SYN, "Intercept", owned=False,
                 map_type=BPF_MAP_TYPE_LRU_HASH)
IC_STATS = MapSpec("ic_stats", 4, 8, IC_MAX * IC_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
IC_HOST = MapSpec("ic_host", 64, 16, 256, "Intercept", owned=False)
IC_STAT_NAMES = ("new", "redirected", "dropped", "passed", "unmatched", "flow", "assigned",
                 "no_listener", "assign_error", "fragment")

# Tables of entries (read, diffed, written); STATS, SOCKETS, PS_STATS, TP_STATS and IC_STATS
# are only created (and read as counters or by the data path); TP_CONNS is read for map
# pressure; IC_HOST is read and written by the host plumbing alone.
ALL_TABLES: tuple[MapSpec, ...] = (TUNNEL, DECAP, VERIFY, ENCAP, REPLY, NEXT_KEY_TABLE, LEARNED,
                                   PROXY, STEER, TP_CONFIG, TP_RULES, IC_RULES)
PINNED: tuple[MapSpec, ...] = (*ALL_TABLES, STATS, FRESH, SOCKETS, PS_STATS, TP_CONNS, TP_STATS,
                               TP6_STATS, IC_SYN, IC_STATS, IC_HOST)
CREATED_BY_BCC: tuple[MapSpec, ...] = (TP_ORIG,)
OWNED_TABLES: tuple[MapSpec, ...] = tuple(t for t in ALL_TABLES if t.owned)
BY_NAME: dict[str, MapSpec] = {t.name: t for t in (*PINNED, *CREATED_BY_BCC)}

# Index -> name of the TI_STATS counters (enum ti_stat in bpf/trueingress.h).
STAT_NAMES: tuple[str, ...] = (
    "pass", "encap", "decap", "ping", "dnat", "reply_nat", "fib_redirect",
    "drop_no_tunnel", "drop_no_remote", "drop_no_service", "drop_bad_key",
    "drop_bad_version", "drop_bad_header", "drop_malformed", "drop_fragment", "drop_error",
    "ping_bad_key", "ping_fixed", "ping_stale", "ping_replay", "drop_bad_source",
    "drop_bad_inner",
)

_EP = struct.Struct("!4sHBx")
_U32 = struct.Struct("!I")
_SID = struct.Struct("!HH")
_SERVICE = struct.Struct(f"!IHH{KEY_LEN}sI")  # + stamp
_VERIFY = struct.Struct(f"!{KEY_LEN}s8sI")  # + stamp
_TUNNEL = struct.Struct(f"!4s4sHHII{KEY_LEN}s")  # + stamp
_REPLY = struct.Struct(f"!8sIHH{KEY_LEN}s")  # + stamp
_LEARNED = struct.Struct("!4sH2x")  # + host-order u64 updated_ns
_NS = struct.Struct("=Q")
_STEER_KEY = struct.Struct("=IBxH4s")  # prefixlen host order; port and address big-endian
_STEER_PREFIX_BITS = 32  # proto, pad and port come before the address in the trie key
_SLOT = struct.Struct("=I")
_CONFIG_LEN = struct.Struct("!I")
_TP_CONFIG = struct.Struct(f"=IIQ{TP_EXCLUDE_CGROUPS}Q{TP_EXCLUDE_CGROUPS}I4x")  # + stamp
_TP_RULE_KEY = struct.Struct("=IBBH4s")  # like the steering key, with (kind, id) for (proto, pad)
_IC_KEY = struct.Struct("=IBBH4s")  # like the steering key: (intercept, proto, port, addr)
_IC_CANDIDATE = struct.Struct("=HHBBH")
_IC_COUNT = struct.Struct("=I")
_IC_HOST = struct.Struct("=QII")


def _stamped(key: bytes, body: bytes) -> bytes:
    return body + _U32.pack(zlib.crc32(key + body))


def stamp_ok(key: bytes, value: bytes) -> bool:
    """True when the entry carries bpfsync's stamp, i.e. was written by bpfsync."""
    return len(value) >= 4 and _U32.unpack_from(value, len(value) - 4)[0] == zlib.crc32(
        key + value[:-4])


def endpoint_key(address: str, port: int, proto: int) -> bytes:
    return _EP.pack(socket.inet_aton(address), port, proto)


def tunnel_key(tunnel_id: int) -> bytes:
    return _U32.pack(tunnel_id)


def sid_key(group_id: int, service_id: int) -> bytes:
    return _SID.pack(group_id, service_id)


def encap_value(key: bytes, tunnel_id: int, group_id: int, service_id: int, secret: Secret) -> bytes:
    return _stamped(key, _SERVICE.pack(tunnel_id, group_id, service_id, secret.value, 0))


def verify_value(key: bytes, secret: Secret, backend: bytes) -> bytes:
    return _stamped(key, _VERIFY.pack(secret.value, backend, 0))


def tunnel_value(key: bytes, local: tuple[str, int], remote: tuple[str, int] | None,
                 secret: Secret | None = None, ping_interval_ms: int | None = None,
                 send_next: bool = False) -> bytes:
    flags = ((TUNNEL_FLAG_LEARN if remote is None else 0)
             | (TUNNEL_FLAG_PING if ping_interval_ms else 0)
             | (TUNNEL_FLAG_KEYED if secret is not None else 0)
             | (TUNNEL_FLAG_SEND_NEXT if send_next else 0))
    raddr, rport = remote if remote else ("0.0.0.0", 0)
    return _stamped(key, _TUNNEL.pack(
        socket.inet_aton(local[0]), socket.inet_aton(raddr), local[1], rport, flags,
        ping_interval_ms or 0, secret.value if secret is not None else bytes(KEY_LEN)))


def reply_value(key: bytes, proxy: bytes, tunnel_id: int, group_id: int, service_id: int,
                secret: Secret) -> bytes:
    return _stamped(key, _REPLY.pack(proxy, tunnel_id, group_id, service_id, secret.value))


def next_key(kind: int, ident: bytes) -> bytes:
    """TI_NEXT key: kind (NEXT_TUNNEL, NEXT_SERVICE) and the tunnel key or sid key bytes."""
    return _U32.pack(kind) + ident


def next_value(key: bytes, secret: Secret) -> bytes:
    return _stamped(key, secret.value)


def decap_value(key: bytes) -> bytes:
    return _stamped(key, b"")


def steer_key(port: int, network: str, prefixlen: int, proto: int = 6) -> bytes:
    """Trie key of (proto, port, address prefix); port 0 is the "*" wildcard."""
    return _STEER_KEY.pack(_STEER_PREFIX_BITS + prefixlen, proto, socket.htons(port),
                           socket.inet_aton(network))


def steer_value(key: bytes, slot: int) -> bytes:
    return _stamped(key, _SLOT.pack(slot))


def slot_key(slot: int) -> bytes:
    return _SLOT.pack(slot)


def proxy_value(key: bytes, config: bytes) -> bytes:
    """A Proxy's configuration (canonical JSON, see proxyconf.py) as a fixed-size value."""
    body_len = PROXY_CONFIG_SIZE - _CONFIG_LEN.size - 4
    if len(config) > body_len:
        raise ValueError(f"proxy configuration of {len(config)} bytes exceeds {body_len}")
    return _stamped(key, _CONFIG_LEN.pack(len(config)) + config.ljust(body_len, b"\0"))


def proxy_config(value: bytes) -> bytes:
    (n,) = _CONFIG_LEN.unpack_from(value)
    return value[_CONFIG_LEN.size:_CONFIG_LEN.size + n]


def tp_rule_key(tp_id: int, kind: int, port: int, network: str, prefixlen: int) -> bytes:
    """Trie key of (kind, TransparentProxy id, port, destination prefix); port 0: any."""
    return _TP_RULE_KEY.pack(_STEER_PREFIX_BITS + prefixlen, kind, tp_id, socket.htons(port),
                             socket.inet_aton(network))


def tp_rule_value(key: bytes, tp_id: int) -> bytes:
    return _stamped(key, _SLOT.pack(tp_id))


def tp_config_value(key: bytes, slot: int, fail_open: bool, netns_cookie: int,
                    cgroups: list[tuple[int, int]], refuse_ipv6: bool = False) -> bytes:
    """cgroups: (id, level) of the cgroups never intercepted (at most TP_EXCLUDE_CGROUPS)."""
    padded = (cgroups + [(0, 0)] * TP_EXCLUDE_CGROUPS)[:TP_EXCLUDE_CGROUPS]
    flags = (TP_FLAG_FAIL_OPEN if fail_open else 0) | (TP_FLAG_REFUSE_IPV6 if refuse_ipv6 else 0)
    return _stamped(key, _TP_CONFIG.pack(slot, flags,
                                         netns_cookie, *(c for c, _ in padded),
                                         *(lv for _, lv in padded)))


def ic_key(ic_id: int, proto: int, port: int, network: str, prefixlen: int) -> bytes:
    """Trie key of (Intercept id, protocol, destination port, prefix); port 0: any."""
    return _IC_KEY.pack(_STEER_PREFIX_BITS + prefixlen, ic_id, proto, socket.htons(port),
                        socket.inet_aton(network))


def ic_rule_value(key: bytes, candidates: list[tuple[int, int, int, int, int]]) -> bytes:
    """candidates: (sport first, sport last, action, slot, priority), at most IC_CHAIN."""
    body = _IC_COUNT.pack(len(candidates)) + b"".join(_IC_CANDIDATE.pack(*c) for c in candidates)
    return _stamped(key, body.ljust(_IC_COUNT.size + IC_CHAIN * _IC_CANDIDATE.size, b"\0"))


def ic_host_key(netns: str | None) -> bytes:
    return (netns or "").encode().ljust(IC_HOST.key_size, b"\0")


def ic_host_value(netns_cookie: int, accept_local_before: int) -> bytes:
    return _IC_HOST.pack(netns_cookie, accept_local_before, 0)


def decode_ic_host(key: bytes, value: bytes) -> tuple[str | None, int, int]:
    """(netns name or None, netns cookie, accept_local before or IC_SYSCTL_UNTOUCHED)."""
    cookie, before, _ = _IC_HOST.unpack(value)
    return key.rstrip(b"\0").decode() or None, cookie, before


# Decoding, for diff, get and status. Key material comes back as Secret, never as bytes.

def decode_endpoint(raw: bytes) -> dict[str, Any]:
    addr, port, proto = _EP.unpack(raw)
    return {"address": socket.inet_ntoa(addr), "port": port,
            "protocol": PROTO_NAMES.get(proto, str(proto))}


def decode_key(table: str, raw: bytes) -> dict[str, Any]:
    if table == IC_RULES.name:
        plen, ic, proto, port, addr = _IC_KEY.unpack(raw)
        return {"id": ic, "protocol": PROTO_NAMES.get(proto, proto),
                "port": socket.ntohs(port) or "*",
                "prefix": f"{socket.inet_ntoa(addr)}/{plen - _STEER_PREFIX_BITS}"}
    if table == TP_RULES.name:
        plen, kind, tp, port, addr = _TP_RULE_KEY.unpack(raw)
        return {"id": tp, "rule": "intercept" if kind == TP_KIND_INTERCEPT else "exclude",
                "port": socket.ntohs(port) or "*",
                "prefix": f"{socket.inet_ntoa(addr)}/{plen - _STEER_PREFIX_BITS}"}
    if table == TP_CONFIG.name:
        return {"id": _SLOT.unpack(raw)[0]}
    if table == STEER.name:
        plen, proto, port, addr = _STEER_KEY.unpack(raw)
        return {"port": socket.ntohs(port) or "*", "protocol": PROTO_NAMES.get(proto, proto),
                "prefix": f"{socket.inet_ntoa(addr)}/{plen - _STEER_PREFIX_BITS}"}
    if table == PROXY.name:
        return {"slot": _SLOT.unpack(raw)[0]}
    if table in (TUNNEL.name, LEARNED.name, FRESH.name):
        return {"id": _U32.unpack(raw)[0]}
    if table == NEXT_KEY_TABLE.name:
        (kind,) = _U32.unpack_from(raw)
        if kind == NEXT_TUNNEL:
            return {"nextKeyOf": "tunnel", "id": _U32.unpack_from(raw, 4)[0]}
        g, s = _SID.unpack_from(raw, 4)
        return {"nextKeyOf": "service", "groupId": g, "serviceId": s}
    if table == VERIFY.name:
        g, s = _SID.unpack(raw)
        return {"groupId": g, "serviceId": s}
    return decode_endpoint(raw)


def decode_value(table: str, raw: bytes) -> dict[str, Any]:
    if table == IC_RULES.name:
        (n,) = _IC_COUNT.unpack_from(raw)
        names = {IC_ACTION_PASS: "pass", IC_ACTION_DROP: "drop", IC_ACTION_REDIRECT: "redirect"}
        rules = []
        for i in range(min(n, IC_CHAIN)):
            first, last, action, slot, prio = _IC_CANDIDATE.unpack_from(
                raw, _IC_COUNT.size + i * _IC_CANDIDATE.size)
            rule: dict[str, Any] = {"priority": prio, "action": names.get(action, action)}
            if first:
                rule["sourcePorts"] = f"{first}-{last}" if last != first else first
            if action == IC_ACTION_REDIRECT:
                rule["proxySlot"] = slot
            rules.append(rule)
        return {"rules": rules}
    if table == TP_RULES.name:
        return {"id": _SLOT.unpack_from(raw)[0]}
    if table == TP_CONFIG.name:
        f = _TP_CONFIG.unpack_from(raw)
        ids, levels = f[3:3 + TP_EXCLUDE_CGROUPS], f[3 + TP_EXCLUDE_CGROUPS:]
        return {"proxySlot": f[0], "failOpen": bool(f[1] & TP_FLAG_FAIL_OPEN),
                "ipv6": "refuse" if f[1] & TP_FLAG_REFUSE_IPV6 else "direct",
                "netnsCookie": f[2],
                "excludedCgroups": [{"id": i, "level": lv} for i, lv in zip(ids, levels,
                                                                           strict=True) if i]}
    if table == STEER.name:
        return {"slot": _SLOT.unpack_from(raw)[0]}
    if table == PROXY.name:
        doc = json.loads(proxy_config(raw))
        doc.pop("v", None)
        return doc
    if table == ENCAP.name:
        tid, g, s, secret, _ = _SERVICE.unpack_from(raw)
        return {"tunnelId": tid, "groupId": g, "serviceId": s, "key": Secret(secret)}
    if table == VERIFY.name:
        secret, backend, _ = _VERIFY.unpack_from(raw)
        ep = decode_endpoint(backend)
        return {"key": Secret(secret), "backend": f"{ep['address']}:{ep['port']}"}
    if table == TUNNEL.name:
        laddr, raddr, lport, rport, flags, ping_ms, secret = _TUNNEL.unpack_from(raw)
        remote = "learn" if flags & TUNNEL_FLAG_LEARN else f"{socket.inet_ntoa(raddr)}:{rport}"
        out: dict[str, Any] = {"local": f"{socket.inet_ntoa(laddr)}:{lport}", "remote": remote,
                               "flags": flags}
        if flags & TUNNEL_FLAG_KEYED:
            out["key"] = Secret(secret)
        if flags & TUNNEL_FLAG_PING:
            out["pingIntervalMs"] = ping_ms
        return out
    if table == REPLY.name:
        proxy, tid, g, s, secret = _REPLY.unpack_from(raw)
        ep = decode_endpoint(proxy)
        return {"proxy": f"{ep['address']}:{ep['port']}", "tunnelId": tid, "groupId": g,
                "serviceId": s, "key": Secret(secret)}
    if table == NEXT_KEY_TABLE.name:
        return {"nextKey": Secret(raw[:KEY_LEN])}
    if table == LEARNED.name:
        addr, port = _LEARNED.unpack_from(raw)
        (updated_ns,) = _NS.unpack_from(raw, _LEARNED.size)
        return {"remote": f"{socket.inet_ntoa(addr)}:{port}", "updatedNs": updated_ns}
    return {}


def describe_key(table: str, raw: bytes) -> str:
    """Short human name of an entry's key, as shown in diff."""
    k = decode_key(table, raw)
    if table == IC_RULES.name:
        return f"{k['prefix']} port {k['port']}/{k['protocol']}"
    if table == TP_RULES.name:
        return f"{k['rule']} {k['prefix']} port {k['port']}"
    if table == TP_CONFIG.name:
        return f"id {k['id']}"
    if table == STEER.name:
        return f"{k['prefix']} port {k['port']}/{k['protocol']}"
    if table == PROXY.name:
        return f"slot {k['slot']}"
    if table == NEXT_KEY_TABLE.name:
        what = (f"tunnel {k['id']}" if "id" in k else
                f"group {k['groupId']} service {k['serviceId']}")
        return f"next key of {what}"
    if "id" in k:
        return f"tunnel {k['id']}"
    if "groupId" in k:
        return f"group {k['groupId']} service {k['serviceId']}"
    return f"{k['address']}:{k['port']}/{k['protocol']}"
