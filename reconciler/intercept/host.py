"""Intercepts' host plumbing on this host: observe and change it through the kernel shell's
generic routing (kernel/routing.py), and keep its record in ic_host — a pinned map, so the
record lives exactly as long as the kernel state it describes — with the namespace's cookie
and accept_local's previous value, so that an interrupted apply can still be undone exactly.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path

from reconciler.core.attachments import AttachAction, Step
from reconciler.core.errors import KernelStateError
from reconciler.intercept import tables as ict
from reconciler.intercept.plumbing import (
    RTPROT_BPFSYNC,
    Plumbing,
    PolicyRule,
    Record,
    SeenPlumbing,
)
from reconciler.kernel import libbpf, routing
from reconciler.kernel.cgroups import netns_cookie

ACCEPT_LOCAL = "/proc/sys/net/ipv4/conf/lo/accept_local"
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


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


def _observe_one(name: str | None, record: Record | None) -> SeenPlumbing:
    cookie = netns_cookie(name)
    if cookie is None:
        return SeenPlumbing(name, False, record=record)
    seen = SeenPlumbing(name, True, cookie, record=record)
    for family, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
        seen.rules += [PolicyRule(r.priority, r.mark, r.mask, r.table, family)
                       for r in routing.rules(name, RTPROT_BPFSYNC, af)]
        routes, others = ((seen.routes, seen.other_defaults) if family == 4
                          else (seen.routes6, seen.other_defaults6))
        for route in routing.default_routes(name, af):
            if route.protocol == RTPROT_BPFSYNC:
                routes.append(route.table)
            else:
                others[route.table] = route.what
    seen.accept_local = routing.read_sysctl(name, ACCEPT_LOCAL)
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


def _record_first(pin_root: Path, netns: str | None, steps: list[Step],
                  seen: dict[str | None, Record]) -> None:
    """The namespace's record, written before its first change (with the sysctl's value
    before it, when a sysctl is among the changes)."""
    cookie = netns_cookie(netns)
    if cookie is None:
        raise KernelStateError(f"network namespace {netns} disappeared while applying")
    rec = seen.get(netns)
    if rec is None or rec.cookie != cookie:
        sysctl = next((s.target for s in steps if s.target.netns == netns
                       and s.target.item == "sysctl" and s.action is not AttachAction.DETACH),
                      None)
        before = sysctl.before if sysctl and sysctl.before is not None else (
            ict.IC_SYSCTL_UNTOUCHED)
        _set_record(pin_root, netns, Record(cookie, before))


def execute(pin_root: Path, steps: list[Step]) -> None:
    """Run the steps (their targets: Plumbing) in order. Before the first change in a
    namespace its record is written, so that an interrupted apply can still be undone
    exactly; a "record" step drops the record of a namespace left behind."""
    recorded: set[str | None] = set()
    seen_records = records(pin_root) if steps else {}
    for step in steps:
        p: Plumbing = step.target
        add = step.action is not AttachAction.DETACH
        if add and p.netns not in recorded:
            _record_first(pin_root, p.netns, steps, seen_records)
            recorded.add(p.netns)
        if p.item == "record":
            _set_record(pin_root, p.netns, None)
        elif p.item == "sysctl":
            try:
                routing.write_sysctl(p.netns, ACCEPT_LOCAL, p.value)
            except OSError as exc:
                raise KernelStateError(f"{p.describe()}: {exc}") from exc
        elif p.item == "rule":
            assert p.rule is not None
            r = p.rule
            routing.change_rule(p.netns, add, routing.Rule(r.priority, r.mark, r.mask, r.table),
                                RTPROT_BPFSYNC, p.describe(), _AF[r.family])
        else:
            routing.change_local_default(p.netns, add, p.table, RTPROT_BPFSYNC, p.describe(),
                                         _AF[p.family])
