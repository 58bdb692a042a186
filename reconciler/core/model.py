"""What every kind shares: where a resource was declared, its "Kind/name", endpoints, port
ranges. Each data path's kinds live in its own package (reconciler/<data path>/model.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

PROTOCOLS: dict[str, int] = {"tcp": 6, "udp": 17}


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource was declared; line numbers are looked up only when needed."""

    file: str
    index: int  # document index in the file


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    address: str
    port: int

    def __str__(self) -> str:
        return hostport(self.address, self.port)


def hostport(host: str, port: int) -> str:
    """host:port as YAML writes it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Named:
    """A resource's "Kind/name" reference, as every message and plan shows it."""

    __slots__ = ()
    kind: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """Inclusive destination port range; (0, 0) is the "*" wildcard."""

    first: int
    last: int

    @property
    def wildcard(self) -> bool:
        return self.first == 0

    def __str__(self) -> str:
        if self.wildcard:
            return "*"
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_order(net: Network) -> tuple[int, int, int]:
    """Sort key of networks of both families: IPv4 first, then by address and length."""
    return net.version, int(net.network_address), net.prefixlen


def destination_ports(destinations: tuple[Network, ...],
                      ports: tuple[PortRange, ...]) -> Iterator[tuple[Network, int]]:
    """Every (prefix, port) that destinations x port ranges stand for (port 0: "*"): the
    entries of a steering or interception trie."""
    for net in destinations:
        for r in ports:
            for port in range(r.first, r.last + 1):
                yield net, port


def destination_port_count(destinations: tuple[Network, ...], ports: tuple[PortRange, ...],
                           version: int | None = None) -> int:
    """Trie entries destinations x ports stand for; with version (4 or 6), those of that
    family's trie only."""
    n = sum(1 for d in destinations if version is None or d.version == version)
    return n * sum(r.last - r.first + 1 for r in ports)


class Resource(Protocol):
    """What the core needs of any kind's resource: its name, kind and origin (frozen
    dataclasses deriving from Named satisfy it)."""

    kind: str
    name: str

    @property
    def origin(self) -> Origin | None: ...

    @property
    def ref(self) -> str: ...


@lru_cache(maxsize=65536)
def unicast_problem(address: str, ipv6: bool = False) -> str | None:
    """Why address cannot be a tunnel or service endpoint, or None; IPv6 addresses only where
    ipv6. Cached: addresses repeat across thousands of services."""
    try:
        ip = ipaddress.ip_address(address) if ipv6 else ipaddress.IPv4Address(address)
    except ValueError:
        return f"{address[:48]!r} is not an IPv4{' or IPv6' if ipv6 else ''} address"
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is not a unicast address"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"{address} is IPv4-mapped: such packets travel as IPv4; write {ip.ipv4_mapped}"
        if ip.is_link_local:
            return f"{address} is link-local: it needs an interface scope, which endpoints lack"
    return None
