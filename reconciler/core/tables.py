"""What every pinned table shares: its spec (kernel map parameters), its codec (how `diff`,
`get` and `status` read its entries) and the stamp that marks an entry as bpfsync's.

Each data path's tables, with their byte layouts, live in its package
(reconciler/<data path>/tables.py), mirroring its header in bpf/ (a kernel test compiles the
headers with BCC and compares layouts). Every multi-byte field is big-endian, as on the wire,
except LPM trie prefix lengths and slot numbers, which the kernel and the programs read in
host order. Values of owned tables end with a 4-byte stamp: crc32 of the key and the rest of
the value, which marks an entry as written by bpfsync, so that an entry written by anything
else (bpftool, a script) can be told apart as drift.
"""

from __future__ import annotations

import socket
import struct
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_HASH = 9
BPF_MAP_TYPE_LPM_TRIE = 11
BPF_MAP_TYPE_SOCKMAP = 15
BPF_MAP_TYPE_SK_STORAGE = 24
BPF_F_NO_PREALLOC = 1

PROTO_NAMES = {6: "tcp", 17: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}
# LPM trie keys of the steering, transparent-proxy and interception tables put 32 bits of
# (protocol or kind, id, port) before the address: the prefix length counts them too.
LPM_PREFIX_BITS = 32


def address_bytes(address: str) -> bytes:
    """A literal address in network order: 4 bytes (IPv4) or 16 (a ":" in it: IPv6); the
    address part of a trie key, whose length says its family."""
    if ":" in address:
        return socket.inet_pton(socket.AF_INET6, address)
    return socket.inet_aton(address)


def prefix_text(addr: bytes, prefixlen: int) -> str:
    """A trie key's address prefix (4 bytes: IPv4, 16: IPv6; prefixlen counts the key's
    LPM_PREFIX_BITS too) as CIDR text."""
    text = socket.inet_ntoa(addr) if len(addr) == 4 else socket.inet_ntop(socket.AF_INET6, addr)
    return f"{text}/{prefixlen - LPM_PREFIX_BITS}"


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
    sized_by: str | None = None  # capacity group: max_entries is the pin root's (core/capacity.py)


Entries = dict[bytes, bytes]  # one table's content: key -> value
Observed = dict[str, Entries]  # tables by name, as read from the kernel
Decoded = dict[str, Any]
Owners = Callable[[bytes, bytes], str]  # (key, value) -> "Kind/name" of an unclaimed entry


@dataclass(frozen=True, slots=True)
class Codec:
    """How one table's entries read back, for diff, get and status. Key material comes back
    as Secret, never as bytes.

    owners(observed) is called once per plan with every table's observed entries and returns
    the function that names an entry no YAML resource claims (a deletion, drift): the kernel
    holds no names, so names are derived from ids, or from another table (a Proxy's slot);
    the names table (reconciler/names) then puts the declared ones in."""

    decode_key: Callable[[bytes], Decoded]
    decode_value: Callable[[bytes], Decoded]
    describe: Callable[[Decoded], str]  # short name of a decoded key, as diff shows it
    owners: Callable[[Mapping[str, Mapping[bytes, bytes]]], Owners]


def fixed_owner(name: str) -> Callable[[Mapping[str, Mapping[bytes, bytes]]], Owners]:
    """owners for a table whose unclaimed entries all get one name."""
    return lambda _observed: lambda _key, _value: name


def guarded(kind: str, name: Callable[[bytes, bytes], str]) -> Owners:
    """name(key, value), or "Kind/(unknown)" for a foreign entry it cannot decode."""
    def owner(key: bytes, value: bytes) -> str:
        try:
            return name(key, value)
        except Exception:  # a foreign entry of the wrong size or content; still show it
            return f"{kind}/(unknown)"
    return owner


def id_ref(kind: str, ident: int) -> str:
    """The name of a resource known by its id alone: "Kind/(id N)"."""
    return f"{kind}/(id {ident})"


def by_id(kind: str, decode_key: Callable[[bytes], Decoded]) -> Callable[
        [Mapping[str, Mapping[bytes, bytes]]], Owners]:
    """owners for a table keyed by a resource id: "Kind/(id N)"."""
    return lambda _observed: guarded(kind, lambda key, _v: id_ref(kind, decode_key(key)["id"]))


_U32 = struct.Struct("!I")
_SLOT = struct.Struct("=I")


def stamped(key: bytes, body: bytes) -> bytes:
    """body with bpfsync's stamp appended."""
    return body + _U32.pack(zlib.crc32(key + body))


def stamp_ok(key: bytes, value: bytes) -> bool:
    """True when the entry carries bpfsync's stamp, i.e. was written by bpfsync."""
    return len(value) >= 4 and _U32.unpack_from(value, len(value) - 4)[0] == zlib.crc32(
        key + value[:-4])


def slot_key(slot: int) -> bytes:
    """Key of the tables indexed by a host-order u32 (a Proxy's slot, an id)."""
    return _SLOT.pack(slot)


def slot_of(raw: bytes) -> int:
    return _SLOT.unpack_from(raw)[0]
