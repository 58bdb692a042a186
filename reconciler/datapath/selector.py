"""The worker's epoll selector: its listeners are registered with EPOLLEXCLUSIVE.

Every accepting worker (standby.py) watches the same listening sockets (one accept queue,
shared). With plain epoll a new connection wakes every idle worker, and all but one find the
queue empty: wake-ups, accepts that fail and a lock taken for nothing, on cores the serving
worker, clients and backends need. EPOLLEXCLUSIVE (Linux 4.5) wakes one worker of those
waiting in epoll_wait.
A worker that is not waiting (busy, stopped by SIGSTOP, killed) does not count as woken
(fs/eventpoll.c, ep_poll_callback: a wake-up is reported only when the epoll has a waiter),
so the wake-up goes on to the next worker and a frozen one holds nobody back. A worker
woken and then frozen before it accepts is the one gap: the proxy's sweep accepts what is
queued once a second (proxyserver._sweep_loop).

Everything else (pipes, the control socket) is registered as asyncio's own EpollSelector
does. EPOLLEXCLUSIVE can be given only when a descriptor is added (EPOLL_CTL_MOD refuses
it), so a change to or from such a registration is a removal and an add.

The proxied connections' sockets are a guest's (reactor.Reactor), on the same epoll: their
reports are handed to the guest from select(), so a connection's event costs one
epoll_wait, not one for the loop and another for a nested epoll (bench/RESULTS.md).
"""

from __future__ import annotations

import math
import select
import selectors
from typing import Any, Protocol

EXCLUSIVE_READ = select.EPOLLIN | select.EPOLLEXCLUSIVE
GUEST_BATCH = 256  # a guest's reports taken per select(), at most (the rest: the next one)


class Guest(Protocol):
    """Descriptors registered on the selector's epoll by someone else (watched: how many):
    reports for them go to deliver() (which must not raise), from select()."""

    @property
    def watched(self) -> int: ...

    def deliver(self, reports: list[tuple[int, int]]) -> None: ...


class ExclusiveEpollSelector(selectors.EpollSelector):
    """EpollSelector; a descriptor in `exclusive` watched for reading alone is registered
    with EPOLLEXCLUSIVE. The set is the caller's: it adds its listeners before it watches
    them and removes them before it closes them."""

    def __init__(self, exclusive: set[int]) -> None:
        super().__init__()
        self.exclusive = exclusive
        self._registered: set[int] = set()  # registered with EPOLLEXCLUSIVE now
        self.guest: Guest | None = None

    @property
    def epoll(self) -> select.epoll:
        """The epoll (a guest registers its descriptors on it)."""
        return self._selector  # type: ignore[attr-defined,no-any-return]

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """As EpollSelector.select; the guest's reports are delivered to it first. (A copy,
        not a call of it: asyncio's takes no more reports per epoll_wait than it has keys
        of its own, a handful, and the guest's would wait for turns of the loop.)"""
        guest = self.guest
        if guest is None or not guest.watched:
            return super().select(timeout)
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:  # epoll_wait() counts milliseconds: at least timeout
            timeout = math.ceil(timeout * 1e3) * 1e-3
        keys = self._fd_to_key  # type: ignore[attr-defined]
        try:
            reports = self.epoll.poll(timeout, len(keys) + GUEST_BATCH)
        except InterruptedError:
            return []
        ready, theirs = [], []
        for fd, event in reports:
            key = keys.get(fd)
            if key is None:
                theirs.append((fd, event))
                continue
            events = 0
            if event & ~select.EPOLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.EPOLLOUT:
                events |= selectors.EVENT_READ
            ready.append((key, events & key.events))
        if theirs:
            guest.deliver(theirs)
        return ready

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = super().register(fileobj, events, data)
        if key.fd in self.exclusive and events == selectors.EVENT_READ:
            try:
                self._selector.unregister(key.fd)  # type: ignore[attr-defined]
                self._selector.register(key.fd, EXCLUSIVE_READ)  # type: ignore[attr-defined]
            except OSError:
                super().unregister(fileobj)  # not watched at all: say so, as asyncio's does
                raise
            self._registered.add(key.fd)
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        key = super().unregister(fileobj)
        self._registered.discard(key.fd)
        return key

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self.get_key(fileobj)
        if events != key.events and (key.fd in self._registered or (
                key.fd in self.exclusive and events == selectors.EVENT_READ)):
            self.unregister(fileobj)
            return self.register(fileobj, events, data)
        return super().modify(fileobj, events, data)
