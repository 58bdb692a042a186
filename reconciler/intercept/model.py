"""The TC interception data path's kind: first-match rules on a device's egress."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from reconciler.core.model import Named, Origin, PortRange

INTERCEPT_ACTIONS = ("redirect", "drop", "pass")


@dataclass(frozen=True, slots=True)
class InterceptRule:
    """One rule of an Intercept; the lowest priority number that matches decides."""

    priority: int
    action: str  # one of INTERCEPT_ACTIONS
    destinations: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]  # IPv4 first
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


