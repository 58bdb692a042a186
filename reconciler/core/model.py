"""Resources as typed values: what a valid document means, independent of YAML and maps."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from reconciler.load.secrets import Secret

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
    next_key: Secret | None = None  # a second accepted key while keys rotate; never sent

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
    next_key: Secret | None = None  # a second accepted key while keys rotate; never sent

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


@dataclass(frozen=True, slots=True)
class HealthCheck:
    enabled: bool = True
    interval_ms: int = 2000
    timeout_ms: int = 1000
    rise: int = 2
    fall: int = 3


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


def destination_ports(destinations: tuple[ipaddress.IPv4Network, ...],
                      ports: tuple[PortRange, ...]) -> Iterator[tuple[ipaddress.IPv4Network, int]]:
    """Every (prefix, port) that destinations x port ranges stand for (port 0: "*"): the
    entries of a steering or interception trie."""
    for net in destinations:
        for r in ports:
            for port in range(r.first, r.last + 1):
                yield net, port


def destination_port_count(destinations: tuple[ipaddress.IPv4Network, ...],
                           ports: tuple[PortRange, ...]) -> int:
    return len(destinations) * sum(r.last - r.first + 1 for r in ports)


@dataclass(frozen=True, slots=True)
class Proxy(Named):
    """A port-steering TCP proxy: sk_lookup steering plus a listener of the data path."""

    name: str
    id: int  # listener slot in ps_sockets
    netns: str | None
    ports: tuple[PortRange, ...]
    destinations: tuple[ipaddress.IPv4Network, ...]
    backends: tuple[str, ...]  # "host:port" as written
    balance: str = "round-robin"
    health: HealthCheck = HealthCheck()
    connect_timeout_ms: int = 5000
    idle_timeout_ms: int = 300_000
    drain_timeout_ms: int | None = None
    max_connections: int = 10000
    resolve_ms: int = 30_000
    origin: Origin | None = None

    kind = "Proxy"


@dataclass(frozen=True, slots=True)
class TrafficMatch:
    """TCP connections to any of destinations on any of ports."""

    destinations: tuple[ipaddress.IPv4Network, ...]
    ports: tuple[PortRange, ...]


@dataclass(frozen=True, slots=True)
class TransparentProxy(Named):
    """Interception by cgroup: connect() of the cgroup's processes sent to a Proxy."""

    name: str
    id: int
    cgroup: str  # cgroup v2 path as /proc/PID/cgroup shows it ("/" is every process)
    proxy: str  # name of the Proxy that receives the connections
    intercept: tuple[TrafficMatch, ...]
    exclude: tuple[TrafficMatch, ...] = ()
    exclude_cgroups: tuple[str, ...] = ()
    fail_open: bool = False  # whenProxyDown: direct
    origin: Origin | None = None
    refuse_ipv6: bool = False  # ipv6: refuse (native IPv6 connects fail with EPERM)

    kind = "TransparentProxy"


INTERCEPT_ACTIONS = ("redirect", "drop", "pass")


@dataclass(frozen=True, slots=True)
class InterceptRule:
    """One rule of an Intercept; the lowest priority number that matches decides."""

    priority: int
    action: str  # one of INTERCEPT_ACTIONS
    destinations: tuple[ipaddress.IPv4Network, ...]
    ports: tuple[PortRange, ...]  # destination ports; (0, 0) is any
    protocols: tuple[int, ...]  # IP protocol numbers (tcp, udp)
    source_ports: tuple[PortRange, ...] = ()  # empty: any
    proxy: str | None = None  # redirect: the Proxy whose listener receives the connections


@dataclass(frozen=True, slots=True)
class Routing:
    """The host plumbing redirected packets need in the Intercept's namespace: the policy
    rule `fwmark MARK/MARK lookup TABLE` at rule_priority, `local default dev lo table TABLE`,
    net.ipv4.conf.lo.accept_local=1; the data path's own connections carry proxy_mark."""

    mark: int = 0x1
    proxy_mark: int = 0x2
    table: int = 100
    rule_priority: int = 100


@dataclass(frozen=True, slots=True)
class Intercept(Named):
    """TC interception on the egress of one device: first-match rules."""

    name: str
    id: int
    device: str
    netns: str | None
    priority: int  # tc filter priority (also lo's, the smallest of the namespace's)
    rules: tuple[InterceptRule, ...]  # sorted by priority
    routing: Routing = Routing()
    origin: Origin | None = None

    kind = "Intercept"

    @property
    def place(self) -> str:
        return f"{self.device}@{self.netns}" if self.netns else self.device


Resource = Tunnel | Service | Interface | Proxy | TransparentProxy | Intercept


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
