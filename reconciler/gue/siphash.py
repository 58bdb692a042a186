"""SipHash-2-4 (Aumasson and Bernstein, 2012): the MAC of GUE pings.

The same function runs in bpf/trueingress.c (siphash16) on the receiving end; the unit tests
check this one against the reference test vectors and a kernel test checks that the program
accepts what this one signs. Pure Python, for a handful of pings a second.
"""

from __future__ import annotations

import struct

_MASK = (1 << 64) - 1
_WORDS = struct.Struct("<QQ")


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(key: bytes, message: bytes) -> int:
    """The 64-bit SipHash-2-4 of message under a 16-byte key (written little-endian on the
    wire, as the reference implementation outputs it)."""
    if len(key) != 16:
        raise ValueError("SipHash takes a 16-byte key")
    k0, k1 = _WORDS.unpack(key)
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    whole = len(message) - len(message) % 8
    for (m,) in struct.iter_unpack("<Q", message[:whole]):
        v3 ^= m
        rounds(2)
        v0 ^= m
    last = (len(message) & 0xFF) << 56 | int.from_bytes(message[whole:], "little")
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3
