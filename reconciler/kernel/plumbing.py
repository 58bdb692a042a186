"""Host plumbing of Intercepts through pyroute2 and /proc/sys: observe, create, remove.

Namespaces are entered per call (netns.inside for the sysctl, pyroute2's netns for
rtnetlink); ic_host (a pinned map, so the record lives exactly as long as the kernel state
it describes) keeps the namespace cookie and accept_local's previous value.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reconciler.core.attachments import AttachAction
from reconciler.core.errors import KernelStateError
from reconciler.intercept import tables as ict
from reconciler.intercept.plumbing import (
    RTPROT_BPFSYNC,
    PlumbingOperation,
    PolicyRule,
    Record,
    SeenPlumbing,
)
from reconciler.kernel import libbpf, netns
from reconciler.kernel.cgroups import netns_cookie
from reconciler.kernel.tc import rtnl

ACCEPT_LOCAL = "/proc/sys/net/ipv4/conf/lo/accept_local"
RTN_LOCAL = 2
RT_SCOPE_HOST = 254
LOOPBACK_IFINDEX = 1
TYPES = {1: "unicast", 2: "local", 3: "broadcast", 6: "blackhole", 7: "unreachable",
         8: "prohibit"}


def _host_map(pin_root: Path) -> int | None:
    path = pin_root / "maps" / ict.IC_HOST.name
    return libbpf.obj_get(str(path)) if path.exists() else None


def records(pin_root: Path) -> dict[str | None, Record]:
    fd = _host_map(pin_root)
    if fd is None:
        return {}
    try:
        rows = libbpf.lookup_each(fd, ict.IC_HOST.key_size, ict.IC_HOST.value_size)
    finally:
        os.close(fd)
    out = {}
    for key, value in rows.items():
        name, cookie, before = ict.decode_ic_host(key, value)
        out[name] = Record(cookie, before)
    return out


def _read_sysctl(name: str | None) -> int:
    with netns.inside(name), open(ACCEPT_LOCAL) as f:
        return int(f.read().strip())


def _write_sysctl(name: str | None, value: int) -> None:
    with netns.inside(name), open(ACCEPT_LOCAL, "w") as f:
        f.write(f"{value}\n")


def _observe_one(name: str | None, record: Record | None) -> SeenPlumbing:
    cookie = netns_cookie(name)
    if cookie is None:
        return SeenPlumbing(name, False, record=record)
    seen = SeenPlumbing(name, True, cookie, record=record)
    with rtnl(name) as ipr:
        for r in ipr.get_rules(family=socket.AF_INET):
            if r.get_attr("FRA_PROTOCOL") == RTPROT_BPFSYNC:
                seen.rules.append(PolicyRule(r.get_attr("FRA_PRIORITY") or 0,
                                             r.get_attr("FRA_FWMARK") or 0,
                                             r.get_attr("FRA_FWMASK") or 0,
                                             r.get_attr("FRA_TABLE") or r["table"]))
        for rt in ipr.get_routes(family=socket.AF_INET):
            if rt["dst_len"] != 0:
                continue
            table = rt.get_attr("RTA_TABLE") or rt["table"]
            if rt["proto"] == RTPROT_BPFSYNC:
                seen.routes.append(table)
            else:
                lo = rt["type"] == RTN_LOCAL and rt.get_attr("RTA_OIF") == LOOPBACK_IFINDEX
                seen.other_defaults[table] = ("local dev lo" if lo else
                                              TYPES.get(rt["type"], str(rt["type"])))
    seen.accept_local = _read_sysctl(name)
    return seen


def observe(pin_root: Path, names: Iterable[str | None]) -> dict[str | None, SeenPlumbing]:
    """The plumbing of the given namespaces and of every namespace ic_host has a record of."""
    recs = records(pin_root)
    return {n: _observe_one(n, recs.get(n)) for n in set(names) | set(recs)}


def _set_record(pin_root: Path, name: str | None, record: Record | None) -> None:
    fd = _host_map(pin_root)
    if fd is None:
        raise KernelStateError(f"{pin_root}/maps/{ict.IC_HOST.name} is missing")
    try:
        key = ict.ic_host_key(name)
        if record is None:
            libbpf.delete_elem(fd, key)
        else:
            libbpf.update_elem(fd, key, ict.ic_host_value(record.cookie,
                                                        record.accept_local_before))
    finally:
        os.close(fd)


def _rule(ipr: Any, command: str, rule: PolicyRule) -> None:
    ipr.rule(command, fwmark=rule.mark, fwmask=rule.mask, table=rule.table,
             priority=rule.priority, protocol=RTPROT_BPFSYNC)


def _route(ipr: Any, command: str, table: int) -> None:
    ipr.route(command, dst="0.0.0.0/0", type="local", table=table, oif=LOOPBACK_IFINDEX,
              proto=RTPROT_BPFSYNC, scope=RT_SCOPE_HOST)


def execute(pin_root: Path, ops: list[PlumbingOperation], forget: list[str | None]) -> None:
    """Run the operations in order. Before the first change in a namespace its record is
    written (the sysctl's previous value with it), so that an interrupted apply can still be
    undone exactly; records of namespaces left behind are dropped at the end."""
    from pyroute2.netlink.exceptions import NetlinkError

    recorded: set[str | None] = set()
    seen_records = records(pin_root) if ops else {}
    for op in ops:
        if op.action is not AttachAction.DETACH and op.netns not in recorded:
            cookie = netns_cookie(op.netns)
            if cookie is None:
                raise KernelStateError(f"network namespace {op.netns} disappeared while "
                                       f"applying")
            rec = seen_records.get(op.netns)
            if rec is None or rec.cookie != cookie:
                sysctl = next((o for o in ops if o.netns == op.netns and o.item == "sysctl"
                               and o.action is not AttachAction.DETACH), None)
                before = sysctl.before if sysctl and sysctl.before is not None else (
                    ict.IC_SYSCTL_UNTOUCHED)
                _set_record(pin_root, op.netns, Record(cookie, before))
            recorded.add(op.netns)
        try:
            if op.item == "sysctl":
                _write_sysctl(op.netns, op.value)
                continue
            with rtnl(op.netns) as ipr:
                if ipr is None:
                    raise KernelStateError(f"network namespace {op.netns} disappeared")
                add = op.action is not AttachAction.DETACH
                if op.item == "rule":
                    assert op.rule is not None
                    _rule(ipr, "add" if add else "del", op.rule)
                else:
                    _route(ipr, "add" if add else "del", op.table)
        except NetlinkError as exc:
            if not (exc.code == errno.EEXIST and op.action is not AttachAction.DETACH) and not (
                    exc.code in (errno.ENOENT, errno.ESRCH) and op.action is AttachAction.DETACH):
                raise KernelStateError(f"{op.describe()}: {exc}") from exc
        except OSError as exc:
            raise KernelStateError(f"{op.describe()}: {exc}") from exc
    for name in forget:
        _set_record(pin_root, name, None)
