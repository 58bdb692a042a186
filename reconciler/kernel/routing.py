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


def _dump(name: str | None, dump: Callable[[Any], Any]) -> list[Any]:
    """A netlink dump in the namespace; none where it has no such family (IPv6 disabled)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with rtnl(name) as ipr:
        if ipr is None:
            return []
        try:
            return list(dump(ipr))
        except NetlinkError as exc:
            if exc.code in (errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                return []
            raise


def rules(name: str | None, protocol: int, family: int = socket.AF_INET) -> list[Rule]:
    """The policy rules of one family (AF_INET, AF_INET6) of the namespace made by protocol."""
    out = []
    for r in _dump(name, lambda ipr: ipr.get_rules(family=family)):
        if r.get_attr("FRA_PROTOCOL") == protocol:
            out.append(Rule(r.get_attr("FRA_PRIORITY") or 0, r.get_attr("FRA_FWMARK") or 0,
                            r.get_attr("FRA_FWMASK") or 0, r.get_attr("FRA_TABLE") or r["table"]))
    return out


def default_routes(name: str | None, family: int = socket.AF_INET) -> list[DefaultRoute]:
    """The default routes of one family of every table of the namespace."""
    out = []
    for rt in _dump(name, lambda ipr: ipr.get_routes(family=family)):
        if rt["dst_len"] != 0:
            continue
        lo = rt["type"] == RTN_LOCAL and rt.get_attr("RTA_OIF") == LOOPBACK_IFINDEX
        out.append(DefaultRoute(rt.get_attr("RTA_TABLE") or rt["table"], rt["proto"],
                                "local dev lo" if lo else TYPES.get(rt["type"], str(rt["type"]))))
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


def change_rule(name: str | None, add: bool, rule: Rule, protocol: int, what: str,
                family: int = socket.AF_INET) -> None:
    _change(name, add, what, lambda ipr: ipr.rule(
        "add" if add else "del", fwmark=rule.mark, fwmask=rule.mask, table=rule.table,
        priority=rule.priority, protocol=protocol, family=family))


def change_local_default(name: str | None, add: bool, table: int, protocol: int,
                         what: str, family: int = socket.AF_INET) -> None:
    """`local default dev lo table TABLE`: every destination delivered locally."""
    v6 = family == socket.AF_INET6
    _change(name, add, what, lambda ipr: ipr.route(
        "add" if add else "del", dst="::/0" if v6 else "0.0.0.0/0", type="local",
        table=table, oif=LOOPBACK_IFINDEX, proto=protocol, family=family,
        **({} if v6 else {"scope": RT_SCOPE_HOST})))
