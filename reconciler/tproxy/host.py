"""The cgroup transparent proxy on this host: the facts its entries are made of (the
Proxies' namespace cookie, cgroup ids) and its pinned cgroup links, observed and changed
through the kernel shell's generic cgroups and links."""

from __future__ import annotations

import errno
from pathlib import Path

from reconciler.core.attachments import Kept
from reconciler.core.errors import KernelStateError
from reconciler.core.state import DesiredState
from reconciler.kernel import links
from reconciler.kernel.cgroups import ATTACH_TYPES, cgroup_id, fs_path, hierarchy, netns_cookie
from reconciler.steering.model import proxy_netns
from reconciler.tproxy.cgroups import (
    DATAPATH_PARENT,
    LINK_PREFIX,
    CgroupHook,
    HostFacts,
    SeenCgroup,
    datapath_cgroup,
)
from reconciler.tproxy.model import TransparentProxy


def facts(state: DesiredState, pin_root: Path, create: bool) -> HostFacts:
    """With create, the data path's cgroup is made first (apply); diff creates nothing."""
    if not state.of(TransparentProxy):
        return HostFacts()
    root = hierarchy()
    mine = datapath_cgroup(pin_root)
    if create:
        fs_path(mine, root).mkdir(parents=True, exist_ok=True)
    paths = {mine}
    for tp in state.of(TransparentProxy).values():
        paths.add(tp.cgroup)
        paths.update(tp.exclude_cgroups)
    ids = {p: i for p in sorted(paths) if (i := cgroup_id(p, root)) is not None}
    return HostFacts(netns_cookie(proxy_netns(state)), ids)


def observe(pin_root: Path) -> list[SeenCgroup]:
    root = None
    out = []
    for link in links.observe(pin_root, LINK_PREFIX, cgroup=True):
        hook = CgroupHook.from_pin_name(link.name)
        if hook is None:
            continue
        root = root or hierarchy()
        here = cgroup_id(hook.cgroup, root)
        out.append(SeenCgroup(hook, link.link_id, link.prog_name, link.tag,
                              link.target != 0 and link.target == here))
    return out


def create(pin_root: Path, hook: CgroupHook, prog_fd: int) -> None:
    links.create(pin_root, hook.pin_name, fs_path(hook.cgroup), prog_fd, ATTACH_TYPES[hook.hook],
                 f"cgroup {hook.cgroup}")


def update(pin_root: Path, hook: CgroupHook, prog_fd: int) -> None:
    links.update(pin_root, hook.pin_name, prog_fd)


def remove(pin_root: Path, hook: CgroupHook) -> None:
    links.remove(pin_root, hook.pin_name)


def keep(pin_root: Path, hook: CgroupHook) -> str | None:
    """The program hook's link runs, kept pinned for a revert (kernel/links.keep_program)."""
    return links.keep_program(pin_root, hook.pin_name, cgroup=True)


def restore(pin_root: Path, kept: Kept, again: bool) -> None:
    """A kept program back on its cgroup link: made again (again), or updated back."""
    hook = kept.of.hook
    links.put_back(pin_root, kept.pin, lambda fd: (create if again else update)(
        pin_root, hook, fd))


def destroy(pin_root: Path) -> list[str]:
    """The data path's cgroup of pin_root, and the parent all pin roots share once no other
    is left in it: removed when empty (bpfsync made both; processes in them keep them)."""
    try:
        root = hierarchy()
    except KernelStateError:
        return []  # no cgroup v2: no cgroup was ever made
    out = []
    for path in (datapath_cgroup(pin_root), DATAPATH_PARENT):
        try:
            fs_path(path, root).rmdir()
            out.append(f"cgroup {path}")
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
                break  # in use: left
            raise
    return out
