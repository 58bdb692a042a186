"""Out of file descriptors: accepting pauses, and resumes as soon as a connection ends.

Shared by every proxy of a worker (they share one descriptor table). Every proxied connection
holds two descriptors (client and backend). The gate admits a connection only while both fit
below the limit with HEADROOM to spare for the worker's housekeeping (listeners, its status
file, reading its pins, health checks, the resolver): running the table full would fail
those too. When no room is left — or an accept fails with EMFILE/ENFILE anyway, descriptors
being used elsewhere — accepting pauses instead of retrying (the listener stays readable, so
retrying would spin) and resumes as soon as a proxied connection ends, or after PAUSE_MAX_S.
Clients wait in the listen queue meanwhile, never refused. Logged once per episode (from the
first wait until connections hold half the descriptors left for them), counted always.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from contextlib import suppress

log = logging.getLogger("bpfsync.proxy")
PAUSE_MAX_S = 1.0
HEADROOM = 64
EXHAUSTED = (errno.EMFILE, errno.ENFILE)


class DescriptorGate:
    def __init__(self, limit: int | None = None, base: int = 0) -> None:
        self.limit = limit  # the soft limit; None: not enforced here
        self.base = base  # descriptors held before any connection
        self.conns = 0  # proxied connections of every proxy of the worker
        self.pipes = 0  # the relay's pipes (relay.BufferPool), lent or kept
        self.spares = 0  # backend connections opened ahead (preconnect.py): one each
        self.pauses = 0  # accepts (or dials) that waited for descriptors
        self.episodes = 0
        self.paused = False
        self._freed = asyncio.Event()

    @property
    def held(self) -> int:
        """Descriptors held as the gate counts them: the start's, two per connection and
        per pipe, one per connection opened ahead."""
        return self.base + 2 * (self.conns + self.pipes) + self.spares

    def room(self) -> bool:
        """Two more descriptors fit, with the housekeeping headroom left."""
        return self.limit is None or self.held + 2 + HEADROOM <= self.limit

    def opened(self) -> None:
        self.conns += 1

    def released(self) -> None:
        """A connection ended: its two descriptors are free."""
        self.conns -= 1
        self._freed.set()
        self.resume()

    async def pause(self, proxy: str, why: str) -> None:
        self.pauses += 1
        if not self.paused:
            self.paused = True
            self.episodes += 1
            log.warning("proxy %s: out of file descriptors (%s; limit %s, %d connections): "
                        "not accepting until connections end; new clients wait in the listen "
                        "queue", proxy, why, self.limit if self.limit is not None else "?",
                        self.conns)
        self._freed.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._freed.wait(), PAUSE_MAX_S)
        # the connections may all have ended before the pause began (they end within a
        # turn of the loop): then no later end or accept would say that the episode is over
        self.resume()

    def resume(self) -> None:
        """An accept succeeded or a connection ended. The episode ends (logged) once the
        connections hold at most half the descriptors left for them: at the edge, and while a
        backlog of queued clients drains, every connection that ends lets one more in, which
        is not worth a log line each."""
        if self.paused and (self.limit is None or 2 * (self.conns + self.pipes) <= max(
                0, self.limit - self.base - HEADROOM) // 2):
            self.paused = False
            log.info("descriptors free again: accepting (%d waits so far)", self.pauses)
