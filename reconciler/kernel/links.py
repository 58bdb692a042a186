"""Pinned BPF links under <pin root>/links/: observe, create, update, remove (libbpf through
ctypes). Generic: a link attaches a program to a target — a network namespace (sk_lookup)
or a cgroup (connect4, sock_ops, ...) — and is pinned under a name its data path chooses, so
that the attachment outlives every process. Replacing the program of a pinned link
(BPF_LINK_UPDATE) leaves no moment without one."""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from reconciler.core.attachments import CONFIRM_DIR
from reconciler.core.errors import KernelStateError
from reconciler.kernel import libbpf
from reconciler.kernel.netns import NETNS_DIR


@dataclass(frozen=True, slots=True)
class PinnedLink:
    name: str  # its pin's file name
    link_id: int
    prog_name: str | None
    tag: str | None  # of the program the link runs
    target: int  # netns inode or cgroup id the link is attached to (0: detached)


def links_dir(pin_root: Path) -> Path:
    return pin_root / "links"


def netns_path(netns: str | None) -> Path:
    """A named namespace's file, or this process's (None)."""
    return NETNS_DIR / netns if netns else Path("/proc/self/ns/net")


def netns_exists(netns: str | None) -> bool:
    return netns_path(netns).exists()


def netns_inode(netns: str | None) -> int | None:
    try:
        return os.stat(netns_path(netns)).st_ino
    except FileNotFoundError:
        return None


def observe(pin_root: Path, prefix: str, cgroup: bool) -> list[PinnedLink]:
    """The links pinned under names starting with prefix (a half-made "~new" pin aside);
    cgroup: they are cgroup links (else netns links)."""
    d = links_dir(pin_root)
    if not d.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(d)):
        if not name.startswith(prefix) or name.endswith("~new"):
            continue
        fd = libbpf.obj_get(str(d / name))
        try:
            info = libbpf.cgroup_link_info(fd) if cgroup else libbpf.link_info(fd)
        finally:
            os.close(fd)
        prog_name, tag = libbpf.prog_name_tag(info.prog_id)
        target = info.cgroup_id if cgroup else info.netns_ino
        out.append(PinnedLink(name, info.id, prog_name, tag, target))
    return out


def create(pin_root: Path, name: str, target: Path, prog_fd: int, attach_type: int,
           what: str) -> None:
    """Attach prog_fd to target (a netns file or a cgroup directory) and pin the link as
    name, replacing a pin of that name; what names the target in errors."""
    try:
        target_fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelStateError(f"{what} disappeared while applying") from None
    try:
        link_fd = libbpf.link_create(prog_fd, target_fd, attach_type)
    finally:
        os.close(target_fd)
    try:
        libbpf.pin_replacing(link_fd, links_dir(pin_root) / name)
    finally:
        os.close(link_fd)


def update(pin_root: Path, name: str, prog_fd: int) -> None:
    fd = libbpf.obj_get(str(links_dir(pin_root) / name))
    try:
        libbpf.link_update(fd, prog_fd)
    finally:
        os.close(fd)


def remove(pin_root: Path, name: str) -> None:
    """Unpin: the kernel detaches the program when nothing else holds the link."""
    with suppress(FileNotFoundError):
        (links_dir(pin_root) / name).unlink()


def keep_program(pin_root: Path, name: str, cgroup: bool) -> str | None:
    """Pin the program the link pinned as name runs now under <pin root>/confirm/, so that
    a revert can put that very program back; its pin's path (None: no such link)."""
    try:
        fd = libbpf.obj_get(str(links_dir(pin_root) / name))
    except FileNotFoundError:
        return None
    try:
        info = libbpf.cgroup_link_info(fd) if cgroup else libbpf.link_info(fd)
    finally:
        os.close(fd)
    return keep_by_id(pin_root, name, info.prog_id)


def keep_by_id(pin_root: Path, name: str, prog_id: int) -> str:
    """Pin the loaded program prog_id as <pin root>/confirm/name (kept for a revert); the
    pin's path."""
    prog = libbpf.prog_fd_by_id(prog_id)
    path = pin_root / CONFIRM_DIR / name
    try:
        libbpf.pin_replacing(prog, path)
    finally:
        os.close(prog)
    return str(path)


def kept_program(pin_root: Path, pin: str) -> int:
    """The fd of a program keep_program (or tc.keep) pinned; KernelStateError for a path
    elsewhere."""
    path = Path(pin)
    if path.parent != pin_root / CONFIRM_DIR:
        raise KernelStateError(f"{pin}: not a program bpfsync kept for a revert")
    return libbpf.obj_get(pin)


def put_back(pin_root: Path, pin: str, put: Callable[[int], None]) -> None:
    """put(fd) the program kept at pin (a revert), then unpin it."""
    fd = kept_program(pin_root, pin)
    try:
        put(fd)
    finally:
        os.close(fd)
    with suppress(FileNotFoundError):
        Path(pin).unlink()
