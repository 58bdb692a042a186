"""The pinned sk_lookup link: observe, create, update, remove (libbpf through ctypes)."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path

from reconciler.core.errors import KernelStateError
from reconciler.kernel import libbpf
from reconciler.kernel.netns import NETNS_DIR
from reconciler.kernel.programs import BPF_SK_LOOKUP
from reconciler.steering.links import LINK_PREFIX, SeenLink, netns_of, pin_name


def links_dir(pin_root: Path) -> Path:
    return pin_root / "links"


def _netns_path(netns: str | None) -> Path:
    return NETNS_DIR / netns if netns else Path("/proc/self/ns/net")


def netns_exists(netns: str | None) -> bool:
    return _netns_path(netns).exists()


def observe(pin_root: Path) -> list[SeenLink]:
    d = links_dir(pin_root)
    if not d.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(d)):
        if not name.startswith(LINK_PREFIX) or name.endswith("~new"):
            continue
        netns = netns_of(name)
        fd = libbpf.obj_get(str(d / name))
        try:
            info = libbpf.link_info(fd)
        finally:
            os.close(fd)
        try:
            ino = os.stat(_netns_path(netns)).st_ino
        except FileNotFoundError:
            ino = None
        out.append(SeenLink(netns, info.id, libbpf.prog_name_tag(info.prog_id)[1],
                            info.netns_ino != 0 and info.netns_ino == ino))
    return out


def create(pin_root: Path, netns: str | None, prog_fd: int) -> None:
    try:
        ns_fd = os.open(_netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelStateError(f"network namespace {netns} disappeared while applying") from None
    try:
        link_fd = libbpf.link_create(prog_fd, ns_fd, BPF_SK_LOOKUP)
    finally:
        os.close(ns_fd)
    try:
        libbpf.pin_replacing(link_fd, links_dir(pin_root) / pin_name(netns))
    finally:
        os.close(link_fd)


def update(pin_root: Path, netns: str | None, prog_fd: int) -> None:
    fd = libbpf.obj_get(str(links_dir(pin_root) / pin_name(netns)))
    try:
        libbpf.link_update(fd, prog_fd)
    finally:
        os.close(fd)


def remove(pin_root: Path, netns: str | None) -> None:
    """Unpin: the kernel detaches the program when nothing else holds the link."""
    with suppress(FileNotFoundError):
        (links_dir(pin_root) / pin_name(netns)).unlink()
