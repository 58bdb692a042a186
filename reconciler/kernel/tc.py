"""cls_bpf filters on clsact qdiscs, through pyroute2: observe, attach, replace, detach.

bpfsync's filters sit at FILTER_HANDLE with a name starting with "bpfsync:", at the priority
the Interface gives; each attached program is also pinned under <pin root>/progs/ so that the
attachment is known (and its program identifiable) from kernel state alone. A replace uses
RTM_NEWTFILTER with NLM_F_REPLACE on the same priority and handle: the kernel swaps the
program in one step, with no moment without a filter.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from reconciler.core.attachments import (
    FILTER_HANDLE,
    FILTER_PREFIX,
    Filter,
    Hook,
    Seen,
)
from reconciler.core.errors import KernelStateError
from reconciler.core.filters import TcRestore
from reconciler.kernel import libbpf, links

PARENTS = {"ingress": 0xFFFFFFF2, "egress": 0xFFFFFFF3}  # TC_H_CLSACT with MIN_INGRESS/EGRESS
ETH_P_ALL = 0x0003
NETNS_DIR = Path("/run/netns")


def _extend_pyroute2() -> None:
    """pyroute2 0.9 does not decode TCA_BPF_ID and TCA_BPF_TAG in filter dumps."""
    from pyroute2.netlink.rtnl.tcmsg import sched_bpf

    names = [n for n, _ in sched_bpf.options.nla_map]
    if "TCA_BPF_ID" not in names:
        sched_bpf.options.nla_map = (*sched_bpf.options.nla_map, ("TCA_BPF_FLAGS_GEN", "uint32"),
                                     ("TCA_BPF_TAG", "hex"), ("TCA_BPF_ID", "uint32"))


def progs_dir(pin_root: Path) -> Path:
    return pin_root / "progs"


@contextmanager
def rtnl(netns: str | None) -> Iterator[Any]:
    """An rtnetlink socket in netns (never creating it); None when the netns does not exist."""
    _extend_pyroute2()
    from pyroute2 import IPRoute

    if netns is not None and not (NETNS_DIR / netns).exists():
        yield None
        return
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _ifindex(ipr: Any, device: str) -> int | None:
    found = ipr.link_lookup(ifname=device)
    return found[0] if found else None


def _filters(ipr: Any, ifindex: int, direction: str) -> list[Filter]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        msgs = ipr.get_filters(index=ifindex, parent=PARENTS[direction])
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT):  # no clsact qdisc: no filters
            return []
        raise
    out = []
    for m in msgs:
        if not m["handle"]:  # the per-priority chain header, not a filter
            continue
        opts = m.get_attr("TCA_OPTIONS")
        name = opts.get_attr("TCA_BPF_NAME") if opts is not None else None
        tag = opts.get_attr("TCA_BPF_TAG") if opts is not None else None
        out.append(Filter(m["info"] >> 16, m["handle"], name or "",
                          opts.get_attr("TCA_BPF_ID") if opts is not None else None,
                          tag.replace(":", "") if tag else None))
    return out


def _pinned_id(path: Path) -> int | None:
    if not path.exists():
        return None
    fd = libbpf.obj_get(str(path))
    try:
        return libbpf.prog_info(fd).id
    finally:
        os.close(fd)


def pinned_hooks(pin_root: Path) -> list[Hook]:
    d = progs_dir(pin_root)
    if not d.is_dir():
        return []
    return sorted(h for h in map(Hook.from_pin_name, os.listdir(d)) if h is not None)


def observe(pin_root: Path, hooks: Iterable[Hook]) -> dict[Hook, Seen]:
    """Filters, pins and MTUs at the given hooks and at every hook bpfsync has a pin for."""
    all_hooks = set(hooks) | set(pinned_hooks(pin_root))
    by_ns: dict[str | None, list[Hook]] = {}
    for h in all_hooks:
        by_ns.setdefault(h.netns, []).append(h)
    out: dict[Hook, Seen] = {}
    for netns, group in by_ns.items():
        with rtnl(netns) as ipr:
            mtus = {} if ipr is None else {
                link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_MTU") for link in ipr.get_links()
                if link.get_attr("IFLA_IFNAME") != "lo"}
            for h in group:
                pinned = _pinned_id(progs_dir(pin_root) / h.pin_name)
                idx = None if ipr is None else _ifindex(ipr, h.device)
                if idx is None:
                    out[h] = Seen(h, False, pinned_id=pinned)
                    continue
                others = [m for name, m in mtus.items() if name != h.device and m]
                out[h] = Seen(h, True, _filters(ipr, idx, h.direction), pinned,
                              mtus.get(h.device), max(others) if others else None)
    return out


def _netlink_error(what: str, hook: Hook, exc: Exception) -> KernelStateError:
    return KernelStateError(f"{what} on {hook}: {exc}")


def attach(pin_root: Path, hook: Hook, priority: int, fd: int, replace: bool,
           function: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with rtnl(hook.netns) as ipr:
        idx = None if ipr is None else _ifindex(ipr, hook.device)
        if idx is None:
            raise KernelStateError(f"device {hook} disappeared while applying")
        if not replace:
            try:
                ipr.tc("add", "clsact", idx)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise _netlink_error("adding the clsact qdisc", hook, exc) from exc
        else:
            current = [f for f in _filters(ipr, idx, hook.direction)
                       if f.priority == priority and f.handle == FILTER_HANDLE]
            if not current or not current[0].ours:
                raise KernelStateError(f"{hook} prio {priority}: the filter to replace is not "
                                       f"bpfsync's any more; nothing changed")
        try:
            ipr.tc("replace-filter" if replace else "add-filter", "bpf", idx, FILTER_HANDLE,
                   fd=fd, name=FILTER_PREFIX + function,
                   parent=PARENTS[hook.direction], prio=priority, protocol=ETH_P_ALL,
                   direct_action=True)
        except NetlinkError as exc:
            raise _netlink_error("attaching the program", hook, exc) from exc
    libbpf.pin_replacing(fd, progs_dir(pin_root) / hook.pin_name)


def detach(pin_root: Path, hook: Hook, priority: int) -> None:
    """Remove bpfsync's filter at priority (checked again just before), and the pin once no
    filter of bpfsync's is left on the hook (priority 0: the device is gone, only the pin)."""
    from pyroute2.netlink.exceptions import NetlinkError

    remaining: list[Filter] = []
    with rtnl(hook.netns) as ipr:
        idx = None if ipr is None else _ifindex(ipr, hook.device)
        if idx is not None:
            mine = [f for f in _filters(ipr, idx, hook.direction) if f.ours]
            if priority and any(f.priority == priority for f in mine):
                try:
                    ipr.tc("del-filter", "bpf", idx, FILTER_HANDLE, parent=PARENTS[hook.direction],
                           prio=priority, protocol=ETH_P_ALL)
                except NetlinkError as exc:
                    if exc.code != errno.ENOENT:
                        raise _netlink_error("detaching the program", hook, exc) from exc
            remaining = [f for f in mine if f.priority != priority]
    if not remaining:
        with suppress(FileNotFoundError):
            (progs_dir(pin_root) / hook.pin_name).unlink()


def keep(pin_root: Path, hook: Hook, priority: int) -> TcRestore | None:
    """Pin the program bpfsync's filter at hook and priority runs now under the pin root's
    "confirm" directory, so that a revert can put that very program back; None when no
    filter of bpfsync's is there (nothing to keep)."""
    seen = observe(pin_root, [hook]).get(hook)
    mine = [f for f in (seen.ours if seen else []) if f.priority == priority]
    if not mine or mine[0].prog_id is None:
        return None
    f = mine[0]
    pin = links.keep_by_id(pin_root, f"{hook.pin_name}:{priority}", f.prog_id)
    return TcRestore(hook, priority, f.name.removeprefix(FILTER_PREFIX), pin)


def restore(pin_root: Path, kept: TcRestore, replace: bool) -> None:
    """Put a kept program back at its hook and priority (replace: over what runs there, else
    added again), then drop the pin that kept it."""
    links.put_back(pin_root, kept.pin, lambda fd: attach(
        pin_root, kept.hook, kept.priority, fd, replace, kept.function))
