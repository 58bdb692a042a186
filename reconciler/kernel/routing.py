"""Routing state of a network namespace through pyroute2 and /proc/sys: policy rules and
default routes tagged with a routing protocol number (who made them), sysctls. Generic:
what to make and why is the caller's (intercept/host.py).

Namespaces are entered per call (netns.inside for a sysctl, pyroute2's netns for
rtnetlink). Changes are idempotent: adding what is there, deleting what is gone succeed.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.core.errors import KernelStateError
from reconciler.kernel import netns
from reconciler.kernel.tc import rtnl

RTN_LOCAL = 2
RT_SCOPE_HOST = 254
LOOPBACK_IFINDEX = 1
TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
         8: "prohibit"}


@dataclass(frozen=True, slots=True)
class Rule:
    """`ip rule` fwmark MARK/MASK lookup TABLE at PRIORITY."""

    priority: int
    mark: int
    mask: int
    table: int


@dataclass(frozen=True, slots=True)
class DefaultRoute:
    table: int
    protocol: int
    what: str  # "local dev lo", or the route's type ("unicast", "blackhole", ...)


def read_sysctl(name: str | None, path: str) -> int:
    with netns.inside(name), open(path) as f:
        return int(f.read().strip())


def write_sysctl(name: str | None, path: str, value: int) -> None:
    with netns.inside(name), open(path, "w") as f:
        f.write(f"{value}\n")


def rules(name: str | None, protocol: int) -> list[Rule]:
    """The IPv4 policy rules of the namespace made by protocol."""
    out = []
    with rtnl(name) as ipr:
        if ipr is None:
            return []
        for r in ipr.get_rules(family=socket.AF_INET):
            if r.get_attr("FRA_PROTOCOL") == protocol:
                out.append(Rule(r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_FWMARK") or 0,
                                r.get_attr("FRA_FWMASK") or 0,
                                r.get_attr("FRA_TABLE") or r["table"]))
    return out


def default_routes(name: str | None) -> list[DefaultRoute]:
    """The IPv4 default routes of every table of the namespace."""
    out = []
    with rtnl(name) as ipr:
        if ipr is None:
            return []
        for rt in ipr.get_routes(family=socket.AF_INET):
            if rt["dst_len"] != 0:
                continue
            lo = rt["type"] == RTN_LOCAL and rt.get_attr("RTA_OIF") == LOOPBACK_IFINDEX
            out.append(DefaultRoute(rt.get_attr("RTA_TABLE") or rt["table"], rt["proto"],
                                    "local dev lo" if lo else
                                    TYPES.get(rt["type"], str(rt["type"]))))
    return out


def _change(name: str | None, add: bool, what: str, change: Callable[[Any], object]) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with rtnl(name) as ipr:
            if ipr is None:
                raise KernelStateError(f"network namespace {name} disappeared")
            change(ipr)
    except NetlinkError as exc:
        if not (exc.code == errno.EEXIST and add) and not (
                exc.code in (errno.ENOENT, errno.ESRCH) and not add):
            raise KernelStateError(f"{what}: {exc}") from exc
    except OSError as exc:
        raise KernelStateError(f"{what}: {exc}") from exc


def change_rule(name: str | None, add: bool, rule: Rule, protocol: int, what: str) -> None:
    _change(name, add, what, lambda ipr: ipr.rule(
        "add" if add else "del", fwmark=rule.mark, fwmask=rule.mask, table=rule.table,
        priority=rule.priority, protocol=protocol))


def change_local_default(name: str | None, add: bool, table: int, protocol: int,
                         what: str) -> None:
    """`local default dev lo table TABLE`: every destination delivered locally."""
    _change(name, add, what, lambda ipr: ipr.route(
        "add" if add else "del", dst="0.0.0.0/0", type="local", table=table,
        oif=LOOPBACK_IFINDEX, proto=protocol, scope=RT_SCOPE_HOST))
