"""Entering a named network namespace (as `ip netns add` creates them), without the mount
namespace games of `ip netns exec` (which remounts /sys and hides bpffs): open pins first,
then setns."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from reconciler.core.errors import KernelStateError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def _open(name: str) -> int:
    path = NETNS_DIR / name
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelStateError(f"network namespace {name!r} does not exist ({path})") from None


def _setns(fd: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise KernelStateError(f"cannot enter network namespace {what}: {os.strerror(code)}")


def check(name: str) -> None:
    """Raise KernelStateError unless netns name exists."""
    os.close(_open(name))


def enter(name: str) -> None:
    """Move the calling thread (the whole process, if single-threaded) into netns name."""
    fd = _open(name)
    try:
        _setns(fd, repr(name))
    finally:
        os.close(fd)


@contextmanager
def inside(name: str | None) -> Iterator[None]:
    """Run the block with the calling thread in netns name (None: where it is), then return:
    sockets made inside stay in that namespace."""
    if name is None:
        yield
        return
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter(name)
        try:
            yield
        finally:
            _setns(home, "of this process")
    finally:
        os.close(home)
