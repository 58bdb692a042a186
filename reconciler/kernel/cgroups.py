"""Cgroups: find the cgroup v2 hierarchy, resolve ids, move a process; a network namespace's
cookie; the cgroup attach types (links themselves are kernel/links.py's).

Cgroup paths are written as /proc/PID/cgroup shows them ("/system.slice/app.service"), so
YAML does not depend on where the hierarchy is mounted (/sys/fs/cgroup on a unified host,
/sys/fs/cgroup/unified on a hybrid one).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from reconciler.core.errors import KernelStateError
from reconciler.kernel import netns

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
