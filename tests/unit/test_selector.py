"""The worker's selector registers its listeners with EPOLLEXCLUSIVE (one worker woken per
connection) and everything else as asyncio's own EpollSelector does; read back from the
kernel's view of the epoll (/proc/self/fdinfo)."""

from __future__ import annotations

import select
import selectors
import socket
from pathlib import Path

from reconciler.datapath.selector import ExclusiveEpollSelector


def _registered(sel: selectors.EpollSelector) -> dict[int, int]:
    """{descriptor: epoll events} as the kernel holds them."""
    out = {}
    for line in Path(f"/proc/self/fdinfo/{sel.fileno()}").read_text().splitlines():
        if line.startswith("tfd:"):
            f = line.split()
            out[int(f[1])] = int(f[3], 16)
    return out


def test_listeners_are_exclusive_other_descriptors_are_not_and_changes_still_work() -> None:
    other, peer = socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener, other, peer:
        sel = ExclusiveEpollSelector({listener.fileno()})
        try:
            sel.register(listener.fileno(), selectors.EVENT_READ, "accept")
            sel.register(other.fileno(), selectors.EVENT_READ, "read")
            held = _registered(sel)
            assert held[listener.fileno()] & select.EPOLLEXCLUSIVE
            assert not held[other.fileno()] & select.EPOLLEXCLUSIVE
            # a connection waiting makes the listener readable, for this selector too
            with socket.create_connection(listener.getsockname()):
                ready = sel.select(5)
                assert [key.data for key, _ in ready] == ["accept"]
            # EPOLL_CTL_MOD refuses EPOLLEXCLUSIVE: a change is a removal and an add
            sel.modify(listener.fileno(), selectors.EVENT_READ | selectors.EVENT_WRITE, "x")
            held = _registered(sel)[listener.fileno()]
            assert held & select.EPOLLOUT and not held & select.EPOLLEXCLUSIVE
            sel.modify(listener.fileno(), selectors.EVENT_READ, "accept")
            assert _registered(sel)[listener.fileno()] & select.EPOLLEXCLUSIVE
            sel.modify(listener.fileno(), selectors.EVENT_READ, "again")  # data only
            assert sel.get_key(listener.fileno()).data == "again"
            sel.unregister(listener.fileno())
            assert listener.fileno() not in _registered(sel)
        finally:
            sel.close()
