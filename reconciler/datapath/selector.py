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

Everything else (connections, pipes, the control socket) is registered as asyncio's own
EpollSelector does. EPOLLEXCLUSIVE can be given only when a descriptor is added
(EPOLL_CTL_MOD refuses it), so a change to or from such a registration is a removal and
an add.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

EXCLUSIVE_READ = select.EPOLLIN | select.EPOLLEXCLUSIVE


class ExclusiveEpollSelector(selectors.EpollSelector):
    """EpollSelector; a descriptor in `exclusive` watched for reading alone is registered
    with EPOLLEXCLUSIVE. The set is the caller's: it adds its listeners before it watches
    them and removes them before it closes them."""

    def __init__(self, exclusive: set[int]) -> None:
        super().__init__()
        self.exclusive = exclusive
        self._registered: set[int] = set()  # registered with EPOLLEXCLUSIVE now

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
