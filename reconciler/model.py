"""Resources as typed values: what a valid document means, independent of YAML and maps."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from reconciler.secrets import Secret

DEFAULT_GUE_PORT = 6080
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
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class KeySource:
    """How a Service's key is given; resolved to a Secret when loading."""

    kind: Literal["inline", "file", "env"]
    ref: str | None = None  # file path or env name; None for inline


class Named:
    """A resource's "Kind/name" reference, as every message and plan shows it."""

    __slots__ = ()
    kind: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True, slots=True)
class Tunnel(Named):
    name: str
    id: int
    local: Endpoint
    remote: Endpoint | None  # None: learned from GUE pings, owned by the data path
    origin: Origin | None = None
    key: Secret | None = None  # authenticates pings; required to learn or to send pings
    key_source: KeySource | None = None
    ping_interval_ms: int | None = None  # this end sends pings to remote (node / PureGW)

    kind = "Tunnel"


@dataclass(frozen=True, slots=True)
class Service(Named):
    name: str
    group_id: int
    service_id: int
    protocol: str
    proxy: Endpoint
    backend: Endpoint
    tunnel: str
    key: Secret
    key_source: KeySource
    origin: Origin | None = None

    kind = "Service"


ROLES = ("gateway", "node")


@dataclass(frozen=True, slots=True)
class Interface(Named):
    """Where the TC programs are attached, and how they behave there (TABLE-CONFIG)."""

    name: str
    device: str
    netns: str | None  # named network namespace (/run/netns/NAME); None: bpfsync's own
    role: str  # "gateway": encapsulate by destination; "node": decapsulate to the backend
    replies_tunnel: bool  # node: replies encapsulated back (standard) or sent direct (DSO)
    ingress: bool
    egress: bool
    fib_lookup: bool
    priority: int
    origin: Origin | None = None

    kind = "Interface"

    @property
    def place(self) -> str:
        return f"{self.device}@{self.netns}" if self.netns else self.device


Resource = Tunnel | Service | Interface


@lru_cache(maxsize=65536)
def unicast_problem(address: str) -> str | None:
    """Why address cannot be a tunnel or service endpoint, or None. Cached: addresses repeat
    across thousands of services."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return f"{address!r} is not an IPv4 address"
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return f"{address} is not a unicast address"
    return None
