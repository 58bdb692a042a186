"""The proxied connections' sockets on one edge-triggered epoll: the worker loop's own, or
one nested in another loop.

asyncio's loop watches a socket level-triggered, and every change of what is watched is a
selector call and an epoll_ctl; every report is a Handle run by the loop. For the sockets of
proxied connections that was a third of the interpreter's time per connection (bench/
RESULTS.md, issue 24). Here each socket is added once, edge-triggered (EPOLLET): its owner
is told when something changed and keeps its own state (relay.Flow reads until EAGAIN, or
asks for another turn). Nothing is removed: closing a socket removes it from the epoll (it
is never duplicated), and forget() drops its handler before that, so a reused descriptor
never reaches a stale one.

Writability is watched only where it is awaited: a connect in progress, or a destination
that was full (want_write: one EPOLL_CTL_MOD, kept from then on). A socket added for
writing reports at once that it is writable, and each such report of a connection's two
sockets cost a turn of the loop for nothing, after the connection's first bytes and before
the worker slept (bench/RESULTS.md).

On a worker's loop (selector.ExclusiveEpollSelector) the sockets are on the loop's own
epoll, and the selector hands their reports over from its select(): one epoll_wait for
everything. On another loop (asyncio's default, uvloop) the reactor has an epoll of its
own, one reader of the loop: a turn with connection events costs one more, non-blocking,
epoll_wait.
"""

from __future__ import annotations

import asyncio
import logging
import select
from collections.abc import Callable

from reconciler.datapath.selector import ExclusiveEpollSelector

log = logging.getLogger("bpfsync.proxy")

READING = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET  # what is watched, at least
EVENTS = READING | select.EPOLLOUT  # and for writing
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
        self._handlers: dict[int, Handler] = {}
        self._writers: set[int] = set()  # watched (or to be) for writing too
        host = getattr(loop, "_selector", None)  # (asyncio's selector loops keep it there)
        self._host = host if isinstance(host, ExclusiveEpollSelector) and host.guest is None \
            else None
        if self._host is not None:  # its reports come from the loop's select()
            self._epoll = self._host.epoll
            self._host.guest = self
        else:
            self._epoll = select.epoll()
            loop.add_reader(self._epoll.fileno(), self._dispatch)

    def watch(self, fd: int, handler: Handler, write: bool = True) -> None:
        """Report fd's readiness to handler from now on (an fd that is ready now is
        reported at once). write=False: its writability only once want_write(fd) asks."""
        if write:
            self._writers.add(fd)
        self._handlers[fd] = handler
        try:
            self._epoll.register(fd, EVENTS if fd in self._writers else READING)
        except BaseException:
            del self._handlers[fd]
            self._writers.discard(fd)
            raise

    def want_write(self, fd: int) -> None:
        """Report fd's writability from now on too (at once if it is writable now: nothing
        is missed between a send's EAGAIN and this). For an fd not watched yet: once it is."""
        if fd in self._writers:
            return
        self._writers.add(fd)
        if fd in self._handlers:
            self._epoll.modify(fd, EVENTS)

    def hand_over(self, fd: int, handler: Handler) -> None:
        """fd's reports go to handler from now on (fd is watched already: a connection kept
        ready by preconnect.Preconnects goes to its session). What was reported before is
        not reported again."""
        assert fd in self._handlers
        self._handlers[fd] = handler

    def forget(self, fd: int) -> None:
        """fd is about to be closed (which removes it from the epoll): report nothing more,
        even what this turn already took."""
        self._handlers.pop(fd, None)
        self._writers.discard(fd)

    def fileno(self) -> int:
        """The epoll's descriptor (its registrations: /proc/self/fdinfo/FD)."""
        return self._epoll.fileno()

    @property
    def watched(self) -> int:
        """How many sockets are watched now."""
        return len(self._handlers)

    def _dispatch(self) -> None:
        """Its own epoll is readable (not on a worker's loop): take its reports."""
        self.deliver(self._epoll.poll(0, BATCH))

    def deliver(self, reports: list[tuple[int, int]]) -> None:
        """Each report to its descriptor's handler; one that was forgotten meanwhile is
        dropped. (From the worker's selector, or _dispatch.)"""
        handlers = self._handlers
        for fd, events in reports:
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:  # a bug: the rest of this turn's reports are not lost with it
                log.exception("connection handler failed (descriptor %d)", fd)

    def close(self) -> None:
        """Stop watching; the sockets are their owners' to close."""
        if self._host is not None:
            self._host.guest = None
        else:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self._handlers.clear()
        self._writers.clear()
