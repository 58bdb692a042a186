"""The proxied connections' sockets on one edge-triggered epoll, nested in the worker's loop.

asyncio's loop watches a socket level-triggered, and every change of what is watched is a
selector call and an epoll_ctl; every report is a Handle run by the loop. For the sockets of
proxied connections that was a third of the interpreter's time per connection (bench/
RESULTS.md, issue 24). Here each socket is added once, for reading and writing, edge-
triggered (EPOLLET): its owner is told when something changed and keeps its own state
(relay.Flow reads until EAGAIN, or asks for another turn). Nothing is ever modified, and
nothing removed: closing a socket removes it from the epoll (it is never duplicated), and
forget() drops its handler before that, so a reused descriptor never reaches a stale one.

The epoll's own descriptor is one reader of the loop: the loop sleeps in one epoll_wait for
everything, and a turn with connection events costs one more, non-blocking, epoll_wait.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable

log = logging.getLogger("bpfsync.proxy")

EVENTS = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
READ = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
WRITE = select.EPOLLOUT | select.EPOLLHUP | select.EPOLLERR
BATCH = 256  # events taken per turn of the loop, at most (more: the next turn)

Handler = Callable[[int], None]


class Reactor:
    """One worker's connection sockets. watch(fd, handler): handler(events) on every change
    of fd's readiness (events: EPOLL* bits; READ and WRITE say which side may have
    changed); spurious reports are possible (a handler tries and finds EAGAIN)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._handlers: dict[int, Handler] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def watch(self, fd: int, handler: Handler) -> None:
        """Report fd's readiness to handler from now on (an fd that is ready now is
        reported at once)."""
        self._handlers[fd] = handler
        try:
            self._epoll.register(fd, EVENTS)
        except BaseException:
            del self._handlers[fd]
            raise

    def forget(self, fd: int) -> None:
        """fd is about to be closed (which removes it from the epoll): report nothing more,
        even what this turn already took."""
        self._handlers.pop(fd, None)

    @property
    def watched(self) -> int:
        """How many sockets are watched now."""
        return len(self._handlers)

    def _dispatch(self) -> None:
        handlers = self._handlers
        for fd, events in self._epoll.poll(0, BATCH):
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:  # a bug: the rest of this turn's reports are not lost with it
                log.exception("connection handler failed (descriptor %d)", fd)

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
        self._handlers.clear()
