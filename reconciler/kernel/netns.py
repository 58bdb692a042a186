"""Entering a named network namespace (as `ip netns add` creates them), without the mount
namespace games of `ip netns exec` (which remounts /sys and hides bpffs): open pins first,
then setns."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from reconciler.errors import KernelStateError

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")


def enter(name: str) -> None:
    """Move the calling thread (the whole process, if single-threaded) into netns name."""
    path = NETNS_DIR / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KernelStateError(f"network namespace {name!r} does not exist ({path})") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise KernelStateError(f"cannot enter network namespace {name!r}: "
                                   f"{os.strerror(code)}")
    finally:
        os.close(fd)
