"""The TC interception data path's pinned tables (bpf/intercept.h): compiled first-match rules
per Intercept and redirected SYNs on their way to lo (one table of each per address family),
counters, and the record of host plumbing bpfsync made per namespace."""

from __future__ import annotations

import socket
import struct
from typing import Any

from reconciler.core.tables import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_LRU_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    LPM_PREFIX_BITS,
    PROTO_NAMES,
    Codec,
    Decoded,
    MapSpec,
    address_bytes,
    by_id,
    prefix_text,
    stamped,
)

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
IC_RULES6 = MapSpec("ic_rules6", 24, 72, IC_MAX_ENTRIES, "Intercept",
                    map_type=BPF_MAP_TYPE_LPM_TRIE, flags=BPF_F_NO_PREALLOC, batch=False)
IC_SYN6 = MapSpec("ic_syn6", 36, 4, IC_MAX_SYN, "Intercept", owned=False,
                  map_type=BPF_MAP_TYPE_LRU_HASH)
IC_STATS = MapSpec("ic_stats", 4, 8, IC_MAX * IC_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
IC_HOST = MapSpec("ic_host", 64, 16, 256, "Intercept", owned=False)
IC_STAT_NAMES = ("new", "redirected", "dropped", "passed", "unmatched", "flow", "assigned",
                 "no_listener", "assign_error", "fragment", "headers")

_IC_KEY = struct.Struct("=IBBH4s")  # like the steering key: (intercept, proto, port, addr)
_IC_KEY6 = struct.Struct("=IBBH16s")
_IC_CANDIDATE = struct.Struct("=HHBBH")
_IC_COUNT = struct.Struct("=I")
_IC_HOST = struct.Struct("=QII")


def ic_rules_table(key: bytes) -> MapSpec:
    """The trie a compiled key belongs in: ic_rules (IPv4) or ic_rules6 (IPv6)."""
    return IC_RULES6 if len(key) == _IC_KEY6.size else IC_RULES


def ic_key(ic_id: int, proto: int, port: int, network: str, prefixlen: int) -> bytes:
    """Trie key of (Intercept id, protocol, destination port, prefix) for the prefix's family
    (a ":" in network means IPv6); port 0: any."""
    addr = address_bytes(network)
    return (_IC_KEY6 if len(addr) == 16 else _IC_KEY).pack(
        LPM_PREFIX_BITS + prefixlen, ic_id, proto, socket.htons(port), addr)


def ic_rule_value(key: bytes, candidates: list[tuple[int, int, int, int, int]]) -> bytes:
    """candidates: (sport first, sport last, action, slot, priority), at most IC_CHAIN."""
    body = _IC_COUNT.pack(len(candidates)) + b"".join(_IC_CANDIDATE.pack(*c) for c in candidates)
    return stamped(key, body.ljust(_IC_COUNT.size + IC_CHAIN * _IC_CANDIDATE.size, b"\0"))


def ic_host_key(netns: str | None) -> bytes:
    return (netns or "").encode().ljust(IC_HOST.key_size, b"\0")


def ic_host_value(netns_cookie: int, accept_local_before: int) -> bytes:
    return _IC_HOST.pack(netns_cookie, accept_local_before, 0)


def decode_ic_host(key: bytes, value: bytes) -> tuple[str | None, int, int]:
    """(netns name or None, netns cookie, accept_local before or IC_SYSCTL_UNTOUCHED)."""
    cookie, before, _ = _IC_HOST.unpack(value)
    return key.rstrip(b"\0").decode() or None, cookie, before


def _rule_key(raw: bytes) -> Decoded:
    plen, ic, proto, port, addr = (_IC_KEY6 if len(raw) == _IC_KEY6.size else _IC_KEY).unpack(raw)
    return {"id": ic, "protocol": PROTO_NAMES.get(proto, proto),
            "port": socket.ntohs(port) or "*", "prefix": prefix_text(addr, plen)}


def _rules(raw: bytes) -> Decoded:
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


_RULES_CODEC = Codec(_rule_key, _rules, lambda k: f"{k['prefix']} port {k['port']}/{k['protocol']}",
                     by_id("Intercept", _rule_key))
CODECS: dict[str, Codec] = {IC_RULES.name: _RULES_CODEC, IC_RULES6.name: _RULES_CODEC}
