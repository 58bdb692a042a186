"""Addresses as the proxy server meets them: resolver results, literal IPv4 and IPv6
addresses, and where an intercepted connection was going."""

from __future__ import annotations

import socket
import struct
from typing import Any

SO_ORIGINAL_DST = 80  # SOL_IP; IP6T_SO_ORIGINAL_DST is the same number at SOL_IPV6
_SOCKADDR_IN = struct.Struct("!2xH4s8x")
_SOCKADDR_IN6 = struct.Struct("!2xH4x16s4x")


def addresses(infos: list[Any]) -> list[str]:
    return list(dict.fromkeys(info[4][0] for info in infos))


def is_address(host: str) -> bool:
    """host is a literal IPv4 (dotted quad) or IPv6 address, not a name to resolve."""
    if ":" in host:
        try:
            socket.inet_pton(socket.AF_INET6, host)
        except OSError:
            return False
        return True
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


def family(address: str) -> socket.AddressFamily:
    """The socket family that connects to a literal address."""
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def original_destination(sock: socket.socket,
                         listeners: list[tuple[Any, ...]]) -> tuple[str, int] | None:
    """Where an intercepted connection was going: getsockopt(SOL_IP, SO_ORIGINAL_DST), or
    (SOL_IPV6, IP6T_SO_ORIGINAL_DST) on an IPv6 socket, when a TransparentProxy rewrote its
    connect(); its own local address when an Intercept had it
    assigned to the (transparent) listener by TC; None when it came to a listener itself
    (listeners: their getsockname())."""
    v6 = sock.family == socket.AF_INET6
    level, shape = (socket.IPPROTO_IPV6, _SOCKADDR_IN6) if v6 else (socket.SOL_IP, _SOCKADDR_IN)
    try:
        raw = sock.getsockopt(level, SO_ORIGINAL_DST, shape.size)
    except OSError:
        raw = b""
    if len(raw) >= (24 if v6 else 8):
        port, addr = shape.unpack(raw.ljust(shape.size, b"\0"))
        return (socket.inet_ntop(socket.AF_INET6, addr) if v6 else socket.inet_ntoa(addr)), port
    try:
        local = sock.getsockname()
    except OSError:
        return None
    mine = {(x[0], x[1]) for x in listeners}
    return None if (local[0], local[1]) in mine else (local[0], local[1])
