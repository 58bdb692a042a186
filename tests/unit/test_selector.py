"""The worker's selector registers its listeners with EPOLLEXCLUSIVE (one worker woken per
connection) and everything else as asyncio's own EpollSelector does; read back from the
kernel's view of the epoll (/proc/self/fdinfo)."""

from __future__ import annotations

import select
import selectors
import socket

from reconciler.datapath.selector import GUEST_BATCH, ExclusiveEpollSelector
from tests.unit.helpers import epoll_registrations


def test_listeners_are_exclusive_other_descriptors_are_not_and_changes_still_work() -> None:
    other, peer = socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener, other, peer:
        sel = ExclusiveEpollSelector({listener.fileno()})
        try:
            sel.register(listener.fileno(), selectors.EVENT_READ, "accept")
            sel.register(other.fileno(), selectors.EVENT_READ, "read")
            held = epoll_registrations(sel.fileno())
            assert held[listener.fileno()] & select.EPOLLEXCLUSIVE
            assert not held[other.fileno()] & select.EPOLLEXCLUSIVE
            # a connection waiting makes the listener readable, for this selector too
            with socket.create_connection(listener.getsockname()):
                ready = sel.select(5)
                assert [key.data for key, _ in ready] == ["accept"]
            # EPOLL_CTL_MOD refuses EPOLLEXCLUSIVE: a change is a removal and an add
            sel.modify(listener.fileno(), selectors.EVENT_READ | selectors.EVENT_WRITE, "x")
            held = epoll_registrations(sel.fileno())[listener.fileno()]
            assert held & select.EPOLLOUT and not held & select.EPOLLEXCLUSIVE
            sel.modify(listener.fileno(), selectors.EVENT_READ, "accept")
            assert epoll_registrations(sel.fileno())[listener.fileno()] & select.EPOLLEXCLUSIVE
            sel.modify(listener.fileno(), selectors.EVENT_READ, "again")  # data only
            assert sel.get_key(listener.fileno()).data == "again"
            sel.unregister(listener.fileno())
            assert listener.fileno() not in epoll_registrations(sel.fileno())
        finally:
            sel.close()


class _Guest:
    """What reactor.Reactor is to the selector: descriptors of its own on the epoll."""

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds
        self.got: list[int] = []

    @property
    def watched(self) -> int:
        return len(self.fds)

    def deliver(self, reports: list[tuple[int, int]]) -> None:
        self.got += [fd for fd, _ in reports]


def test_a_guests_reports_are_delivered_to_it_and_the_loops_keys_still_selected() -> None:
    """More of the guest's descriptors ready than one select() takes (GUEST_BATCH): each is
    delivered once, across selects; the selector's own registrations are returned as
    asyncio's own selector returns them."""
    pairs = [socket.socketpair() for _ in range(GUEST_BATCH + 44)]
    mine, peer = socket.socketpair()
    sel = ExclusiveEpollSelector(set())
    try:
        guest = _Guest([a.fileno() for a, _ in pairs])
        sel.guest = guest
        for fd in guest.fds:  # edge-triggered, as the reactor watches
            sel.epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        sel.register(mine.fileno(), selectors.EVENT_READ, "mine")
        for _, b in pairs:
            b.send(b"x")
        peer.send(b"y")
        selected = []
        for _ in range(10):  # bounded: two selects take it all
            selected += [key.data for key, _ in sel.select(0)]
            if len(guest.got) == len(guest.fds):
                break
        assert sorted(guest.got) == sorted(guest.fds)  # each once
        assert selected[:1] == ["mine"]
        assert sel.select(0) == [(sel.get_key(mine.fileno()), selectors.EVENT_READ)]
    finally:
        sel.close()
        for a, b in [*pairs, (mine, peer)]:
            a.close()
            b.close()
