"""Cgroups and cgroup links: find the cgroup v2 hierarchy, resolve ids, create the data
path's cgroup, observe/create/update/remove pinned links, move a process.

Cgroup paths are written as /proc/PID/cgroup shows them ("/system.slice/app.service"), so
YAML does not depend on where the hierarchy is mounted (/sys/fs/cgroup on a unified host,
/sys/fs/cgroup/unified on a hybrid one).
"""

from __future__ import annotations

import os
import socket
import struct
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from reconciler.core.errors import KernelStateError
from reconciler.core.state import DesiredState
from reconciler.kernel import libbpf, netns
from reconciler.steering.model import proxy_netns
from reconciler.tproxy.cgroups import LINK_PREFIX, CgroupHook, SeenCgroup, datapath_cgroup
from reconciler.tproxy.model import TransparentProxy

SO_NETNS_COOKIE = 71
BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET6_CONNECT = 10, 11
BPF_CGROUP_SOCK_OPS, BPF_CGROUP_GETSOCKOPT = 3, 21
ATTACH_TYPES = {"connect4": BPF_CGROUP_INET4_CONNECT, "connect6": BPF_CGROUP_INET6_CONNECT,
                "sock_ops": BPF_CGROUP_SOCK_OPS, "getsockopt": BPF_CGROUP_GETSOCKOPT}


def hierarchy() -> Path:
    """Mount point of the cgroup v2 hierarchy."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] == "cgroup2":
                return Path(left.split(" ")[4])
    raise KernelStateError("no cgroup v2 hierarchy is mounted (mount -t cgroup2 none "
                           "/sys/fs/cgroup); transparent proxies need one")


def fs_path(cgroup: str, root: Path | None = None) -> Path:
    return (root or hierarchy()) / cgroup.lstrip("/")


def cgroup_id(cgroup: str, root: Path | None = None) -> int | None:
    """The cgroup's id (its kernfs inode number), or None when it does not exist."""
    try:
        return os.stat(fs_path(cgroup, root)).st_ino
    except FileNotFoundError:
        return None


def current() -> str:
    """This process's cgroup v2 path."""
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].strip()
    return "/"


def move(pid: int, cgroup: str) -> None:
    """Move a process (all its threads) into cgroup, creating it if needed."""
    path = fs_path(cgroup)
    path.mkdir(parents=True, exist_ok=True)
    (path / "cgroup.procs").write_text(str(pid))


def netns_cookie(name: str | None) -> int | None:
    """The network namespace's cookie (what bpf_get_netns_cookie returns for its sockets), or
    None when the namespace does not exist."""
    if name is not None and not (netns.NETNS_DIR / name).exists():
        return None
    with netns.inside(name):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        return struct.unpack("=Q", s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8))[0]
    finally:
        s.close()


@dataclass(frozen=True)
class HostFacts:
    """Kernel facts the desired tables of transparent proxies depend on."""

    netns_cookie: int | None = None  # of the Proxies' namespace; None: it does not exist
    cgroup_ids: dict[str, int] = field(default_factory=dict)  # existing cgroups only


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


def links_dir(pin_root: Path) -> Path:
    return pin_root / "links"


def observe(pin_root: Path) -> list[SeenCgroup]:
    d = links_dir(pin_root)
    if not d.is_dir():
        return []
    root = None
    out = []
    for name in sorted(os.listdir(d)):
        hook = CgroupHook.from_pin_name(name) if name.startswith(LINK_PREFIX) else None
        if hook is None:
            continue
        fd = libbpf.obj_get(str(d / name))
        try:
            info = libbpf.cgroup_link_info(fd)
        finally:
            os.close(fd)
        root = root or hierarchy()
        prog_name, tag = libbpf.prog_name_tag(info.prog_id)
        here = cgroup_id(hook.cgroup, root)
        out.append(SeenCgroup(hook, info.id, prog_name, tag,
                              info.cgroup_id != 0 and info.cgroup_id == here))
    return out


def create(pin_root: Path, hook: CgroupHook, prog_fd: int) -> None:
    try:
        cg_fd = os.open(fs_path(hook.cgroup), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelStateError(f"cgroup {hook.cgroup} disappeared while applying") from None
    try:
        link_fd = libbpf.link_create(prog_fd, cg_fd, ATTACH_TYPES[hook.hook])
    finally:
        os.close(cg_fd)
    try:
        libbpf.pin_replacing(link_fd, links_dir(pin_root) / hook.pin_name)
    finally:
        os.close(link_fd)


def update(pin_root: Path, hook: CgroupHook, prog_fd: int) -> None:
    fd = libbpf.obj_get(str(links_dir(pin_root) / hook.pin_name))
    try:
        libbpf.link_update(fd, prog_fd)
    finally:
        os.close(fd)


def remove(pin_root: Path, hook: CgroupHook) -> None:
    """Unpin: the kernel detaches the program when nothing else holds the link."""
    with suppress(FileNotFoundError):
        (links_dir(pin_root) / hook.pin_name).unlink()
