"""The port-steering data path's pinned tables (bpf/steer.h): destination -> listener slot
(one trie per address family), slot -> proxy configuration (read by the data path), slot ->
listening socket of each family (registered by the data path), counters."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from collections.abc import Mapping

from reconciler.core.tables import (
    BPF_F_NO_PREALLOC,
    BPF_MAP_TYPE_LPM_TRIE,
    BPF_MAP_TYPE_PERCPU_ARRAY,
    BPF_MAP_TYPE_SOCKMAP,
    LPM_PREFIX_BITS,
    PROTO_NAMES,
    Codec,
    Decoded,
    MapSpec,
    Owners,
    address_bytes,
    guarded,
    prefix_text,
    slot_key,
    slot_of,
    stamped,
)

MAX_STEER = 262144
MAX_PROXIES = 64
PROXY_CONFIG_SIZE = 8192
PS_COUNTERS = 4
STEER = MapSpec("ps_dest", 12, 8, MAX_STEER, "Proxy", map_type=BPF_MAP_TYPE_LPM_TRIE,
                flags=BPF_F_NO_PREALLOC, batch=False)
STEER6 = MapSpec("ps_dest6", 24, 8, MAX_STEER, "Proxy", map_type=BPF_MAP_TYPE_LPM_TRIE,
                 flags=BPF_F_NO_PREALLOC, batch=False)
PROXY = MapSpec("ps_proxy", 4, PROXY_CONFIG_SIZE, MAX_PROXIES, "Proxy")
SOCKETS = MapSpec("ps_sockets", 4, 8, MAX_PROXIES, "Proxy", owned=False,
                  map_type=BPF_MAP_TYPE_SOCKMAP)
SOCKETS6 = MapSpec("ps_sockets6", 4, 8, MAX_PROXIES, "Proxy", owned=False,
                   map_type=BPF_MAP_TYPE_SOCKMAP)
PS_STATS = MapSpec("ps_stats", 4, 8, MAX_PROXIES * PS_COUNTERS, "Stats", owned=False,
                   map_type=BPF_MAP_TYPE_PERCPU_ARRAY)
PS_STAT_NAMES = ("lookups", "steered", "no_listener", "assign_error")

_STEER_KEY = struct.Struct("=IBxH4s")  # prefixlen host order; port and address big-endian
_STEER6_KEY = struct.Struct("=IBxH16s")
_CONFIG_LEN = struct.Struct("!I")


def steer_table(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> MapSpec:
    """The trie that holds a prefix's entries: ps_dest (IPv4) or ps_dest6 (IPv6)."""
    return STEER if network.version == 4 else STEER6


def steer_key(port: int, network: str, prefixlen: int, proto: int = 6) -> bytes:
    """Trie key of (proto, port, address prefix) for the prefix's family (a ":" in network
    means IPv6); port 0 is the "*" wildcard."""
    addr = address_bytes(network)
    return (_STEER6_KEY if len(addr) == 16 else _STEER_KEY).pack(
        LPM_PREFIX_BITS + prefixlen, proto, socket.htons(port), addr)


def steer_value(key: bytes, slot: int) -> bytes:
    return stamped(key, slot_key(slot))


def proxy_value(key: bytes, config: bytes) -> bytes:
    """A Proxy's configuration (canonical JSON, see proxyconf.py) as a fixed-size value."""
    body_len = PROXY_CONFIG_SIZE - _CONFIG_LEN.size - 4
    if len(config) > body_len:
        raise ValueError(f"proxy configuration of {len(config)} bytes exceeds {body_len}")
    return stamped(key, _CONFIG_LEN.pack(len(config)) + config.ljust(body_len, b"\0"))


def proxy_config(value: bytes) -> bytes:
    (n,) = _CONFIG_LEN.unpack_from(value)
    return value[_CONFIG_LEN.size:_CONFIG_LEN.size + n]


def _steer_key(raw: bytes) -> Decoded:
    plen, proto, port, addr = (_STEER6_KEY if len(raw) == _STEER6_KEY.size
                               else _STEER_KEY).unpack(raw)
    return {"port": socket.ntohs(port) or "*", "protocol": PROTO_NAMES.get(proto, proto),
            "prefix": prefix_text(addr, plen)}


def _proxy_value(raw: bytes) -> Decoded:
    doc = json.loads(proxy_config(raw))
    doc.pop("v", None)
    return doc


def proxy_names(observed: Mapping[str, Mapping[bytes, bytes]]) -> dict[int, str]:
    """slot -> Proxy name, from the configurations the kernel holds."""
    out = {}
    for key, value in observed.get(PROXY.name, {}).items():
        try:
            out[slot_of(key)] = _proxy_value(value)["name"]
        except Exception:  # a foreign or damaged entry names nothing
            continue
    return out


def _steer_owners(observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    names = proxy_names(observed) if observed.get(STEER.name) or observed.get(
        STEER6.name) else {}

    def name(_key: bytes, value: bytes) -> str:
        slot = slot_of(value)
        return f"Proxy/{names[slot]}" if slot in names else f"Proxy/(slot {slot})"
    return guarded("Proxy", name)


def _proxy_owners(_observed: Mapping[str, Mapping[bytes, bytes]]) -> Owners:
    return guarded("Proxy", lambda _key, value: f"Proxy/{_proxy_value(value)['name']}")


_STEER_CODEC = Codec(_steer_key, lambda raw: {"slot": slot_of(raw)},
                     lambda k: f"{k['prefix']} port {k['port']}/{k['protocol']}", _steer_owners)
CODECS: dict[str, Codec] = {
    STEER.name: _STEER_CODEC,
    STEER6.name: _STEER_CODEC,
    PROXY.name: Codec(lambda raw: {"slot": slot_of(raw)}, _proxy_value,
                      lambda k: f"slot {k['slot']}", _proxy_owners),
}
