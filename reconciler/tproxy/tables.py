"""The cgroup transparent-proxy data path's pinned tables (bpf/tproxy.h): intercept/exclude
rules per TransparentProxy (one trie per address family), its configuration, the connections
the programs track and their socket-local storage (IPv4 and native IPv6 apart), counters."""

from __future__ import annotations

import ipaddress
import socket
import struct

from reconciler.core.tables import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_SK_STORAGE,
    LPM_PREFIX_BITS,
    Codec,
    Decoded,
    MapSpec,
    address_bytes,
    by_id,
    prefix_text,
    slot_key,
    slot_of,
    stamped,
)

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
TP_RULES6 = MapSpec("tp_rules6", 24, 8, TP_MAX_RULES, "TransparentProxy",
                    map_type=BPF_MAP_TYPE_LPM_TRIE, flags=BPF_F_NO_PREALLOC, batch=False)
TP_CONFIG = MapSpec("tp_config", 4, 72, TP_MAX, "TransparentProxy")
TP_CONNS = MapSpec("tp_conns", 12, 8, TP_MAX_CONNS, "TransparentProxy", owned=False)
TP_CONNS6 = MapSpec("tp_conns6", 36, 20, TP_MAX_CONNS, "TransparentProxy", owned=False)
TP_STATS = MapSpec("tp_stats", 4, 8, TP_MAX * TP_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
# Socket-local storage needs BTF, which BCC writes: it is created by the first compilation of
# bpf/tproxy.c, never by open_tables, and checked like every other pin once it exists.
TP_ORIG = MapSpec("tp_orig", 4, 8, 0, "TransparentProxy", owned=False,
                  map_type=BPF_MAP_TYPE_SK_STORAGE, flags=BPF_F_NO_PREALLOC)
TP_ORIG6 = MapSpec("tp_orig6", 4, 20, 0, "TransparentProxy", owned=False,
                   map_type=BPF_MAP_TYPE_SK_STORAGE, flags=BPF_F_NO_PREALLOC)
# IPv6 connects (connect6): a map of its own, so that TP_STATS keeps its size (pins of an
# earlier version stay valid).
TP6_COUNTERS = 2
TP6_STATS = MapSpec("tp_stats6", 4, 8, TP_MAX * TP6_COUNTERS, "Stats", owned=False,
                    map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
TP6_STAT_NAMES = ("ipv6_direct", "ipv6_refused")
TP_STAT_NAMES = ("connects", "intercepted", "excluded", "other_netns", "no_proxy",
                 "track_full", "answered", "unanswered")

_TP_CONFIG = struct.Struct(f"=IIQ{TP_EXCLUDE_CGROUPS}Q{TP_EXCLUDE_CGROUPS}I4x")  # + stamp
_TP_RULE_KEY = struct.Struct("=IBBH4s")  # like the steering key, with (kind, id) for (proto, pad)
_TP_RULE6_KEY = struct.Struct("=IBBH16s")


def tp_rules_table(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> MapSpec:
    """The trie that holds a prefix's rules: tp_rules (IPv4) or tp_rules6 (IPv6)."""
    return TP_RULES if network.version == 4 else TP_RULES6


def tp_rule_key(tp_id: int, kind: int, port: int, network: str, prefixlen: int) -> bytes:
    """Trie key of (kind, TransparentProxy id, port, destination prefix) for the prefix's
    family (a ":" in network means IPv6); port 0: any."""
    addr = address_bytes(network)
    return (_TP_RULE6_KEY if len(addr) == 16 else _TP_RULE_KEY).pack(
        LPM_PREFIX_BITS + prefixlen, kind, tp_id, socket.htons(port), addr)


def tp_rule_value(key: bytes, tp_id: int) -> bytes:
    return stamped(key, slot_key(tp_id))


def tp_config_value(key: bytes, slot: int, fail_open: bool, netns_cookie: int,
                    cgroups: list[tuple[int, int]], refuse_ipv6: bool = False) -> bytes:
    """cgroups: (id, level) of the cgroups never intercepted (at most TP_EXCLUDE_CGROUPS)."""
    padded = (cgroups + [(0, 0)] * TP_EXCLUDE_CGROUPS)[:TP_EXCLUDE_CGROUPS]
    flags = (TP_FLAG_FAIL_OPEN if fail_open else 0) | (TP_FLAG_REFUSE_IPV6 if refuse_ipv6 else 0)
    return stamped(key, _TP_CONFIG.pack(slot, flags,
                                        netns_cookie, *(c for c, _ in padded),
                                        *(lv for _, lv in padded)))


def _rule_key(raw: bytes) -> Decoded:
    shape = _TP_RULE6_KEY if len(raw) == _TP_RULE6_KEY.size else _TP_RULE_KEY
    plen, kind, tp, port, addr = shape.unpack(raw)
    return {"id": tp, "rule": "intercept" if kind == TP_KIND_INTERCEPT else "exclude",
            "port": socket.ntohs(port) or "*", "prefix": prefix_text(addr, plen)}


def _id(raw: bytes) -> Decoded:
    return {"id": slot_of(raw)}


def _config(raw: bytes) -> Decoded:
    f = _TP_CONFIG.unpack_from(raw)
    ids, levels = f[3:3 + TP_EXCLUDE_CGROUPS], f[3 + TP_EXCLUDE_CGROUPS:]
    return {"proxySlot": f[0], "failOpen": bool(f[1] & TP_FLAG_FAIL_OPEN),
            "ipv6": "refuse" if f[1] & TP_FLAG_REFUSE_IPV6 else "direct",
            "netnsCookie": f[2],
            "excludedCgroups": [{"id": i, "level": lv} for i, lv in zip(ids, levels,
                                                                       strict=True) if i]}


_RULES_CODEC = Codec(_rule_key, lambda raw: {"id": slot_of(raw)},
                     lambda k: f"{k['rule']} {k['prefix']} port {k['port']}",
                     by_id("TransparentProxy", _rule_key))
CODECS: dict[str, Codec] = {
    TP_RULES.name: _RULES_CODEC,
    TP_RULES6.name: _RULES_CODEC,
    TP_CONFIG.name: Codec(_id, _config, lambda k: f"id {k['id']}", by_id("TransparentProxy", _id)),
}
