"""One proxied connection, from its admission to its end, driven by its sockets' readiness
reports (reactor.Reactor, edge-triggered): dial its backend (its pick at admission, then one
retry on the next in the rotation; or its original destination), relay both directions
(relay.Flow), end.

Reports, not a task: a task, its futures and the loop turns between them were most of the
interpreter's time per connection (bench/RESULTS.md, issue 24). What is rare keeps a task:
waiting for a descriptor to dial with. Every end goes through _finish, once: both sockets
forgotten and closed (reset: abortively, so each peer learns that bytes were lost), the
connection's place, descriptors and backend share given back, its bytes counted.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from reconciler.datapath import relay
from reconciler.datapath.addresses import family, original_destination
from reconciler.datapath.balancer import Target
from reconciler.datapath.fdgate import EXHAUSTED
from reconciler.steering.model import hostport

if TYPE_CHECKING:
    from reconciler.datapath.proxyserver import ProxyServer

log = logging.getLogger("bpfsync.proxy")
# why a connection was ended from outside (Session.abort), and the counter that says so
ABORTS = {"reset": "reset", "idle": "idle_closed", "drain": "drained"}


class Session:
    """A proxied connection: client, the backend socket and target it got, and each
    direction's progress (up: client to backend)."""

    __slots__ = ("_attempts", "_dialing", "_finished", "_flows", "_timer", "_waiting", "backend",
                 "client", "closing_reason", "down", "proxy", "target", "up")

    def __init__(self, proxy: ProxyServer, client: socket.socket,
                 target: Target | None = None) -> None:
        self.proxy = proxy
        self.client = client
        self.backend: socket.socket | None = None
        self.target: Target | None = target  # the pick at admission, then the one we got
        self.up, self.down = relay.Stream(), relay.Stream()
        self.closing_reason: str | None = None
        self._attempts = 0
        self._flows: tuple[relay.Flow, relay.Flow] | None = None
        self._dialing: tuple[str, int] | None = None  # the address, while connecting
        self._timer: asyncio.TimerHandle | None = None  # the connect timeout, meanwhile
        self._waiting: asyncio.Task[None] | None = None  # a dial waiting for a descriptor
        self._finished = False

    def idle_for(self, now: float) -> float:
        return now - max(self.up.last, self.down.last)

    # ----- dialing
    def start(self) -> None:
        """Dial; the client is watched once connected (_connected). (TCP_NODELAY: from the
        listener, ProxyServer.)"""
        self._next()

    def _next(self) -> None:
        """Dial the next address to try, or end the connection (no backend is left)."""
        proxy = self.proxy
        config = proxy.config
        if not config.backends:  # each goes where its client wanted (intercepted)
            if self._attempts:
                self._finish(reset=False)
                return
            self._attempts = 1
            dest = original_destination(self.client, proxy.listener_addresses)
            if dest is None:
                log.debug("proxy %s: a connection without an original destination",
                          config.name)
                self._finish(reset=False, counter="no_original")
                return
            self._dial(dest)
            return
        if self._attempts == 2:
            self._finish(reset=False, counter="no_backend")
            return
        if self._attempts or self.target is None:  # a connection admitted before backends
            with proxy.shared.turn(config.slot) as turn:  # exact across workers
                self.target, turn[0] = proxy.pool.pick_at(turn[0])
        self._attempts += 1
        if self.target is None:
            self._finish(reset=False, counter="no_backend")
            return
        if config.preconnect and (spare := proxy.preconnects.take(self.target)) is not None:
            self.backend, waiting = spare  # connected already: no dial
            proxy.reactor.hand_over(self.backend.fileno(), self._on_backend)
            self._connected(reported=waiting)
            return
        self._dial((self.target.address, self.target.port))

    def _dial(self, address: tuple[str, int], deadline: float | None = None) -> None:
        """Connect to address. Out of descriptors, wait for a connection to end and try
        again, until deadline (the connect timeout from the first try)."""
        proxy = self.proxy
        try:
            # non-blocking from the start: no ioctl after socket()
            sock = socket.socket(family(address[0]), socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno not in EXHAUSTED:
                self._dial_failed(address, exc)
                return
            proxy.counters.fd_exhausted += 1
            if deadline is None:
                deadline = time.monotonic() + proxy.config.connect_timeout
            self._waiting = proxy.loop.create_task(self._dial_after_pause(
                address, deadline, exc.strerror or "EMFILE"))
            return
        self.backend = sock
        try:
            connected = relay.dial(sock, address, proxy.config.mark)
            # watched once connect() has begun (not before: an unconnected socket reports a
            # hang-up); what it says before we listen is reported at once. Its writability
            # only while connecting, or once full (relay.Flow.full)
            proxy.reactor.watch(sock.fileno(), self._on_backend, write=not connected)
        except OSError as exc:
            self._dial_failed(address, exc)
            return
        if connected:
            self._connected(reported=False)
            return
        self._dialing = address
        self._timer = proxy.loop.call_later(proxy.config.connect_timeout, self._dial_failed,
                                            address, TimeoutError("timed out"))

    async def _dial_after_pause(self, address: tuple[str, int], deadline: float,
                                why: str) -> None:
        proxy = self.proxy
        await proxy.gate.pause(proxy.config.name, why)
        self._waiting = None
        if time.monotonic() >= deadline:
            self._dial_failed(address, TimeoutError("no file descriptor"))
        else:
            self._dial(address, deadline)

    def _dial_reported(self, address: tuple[str, int]) -> None:
        """The backend socket's readiness changed while connecting: done, failed, or (a
        report meant for an earlier user of its descriptor) still in progress."""
        assert self.backend is not None
        try:
            if not relay.connect_done(self.backend):
                return
        except OSError as exc:
            self._dial_failed(address, exc)
            return
        self._stop_dialing()
        self._connected(reported=True)

    def _stop_dialing(self) -> None:
        self._dialing = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _dial_failed(self, address: tuple[str, int], exc: BaseException) -> None:
        self._stop_dialing()
        if self.backend is not None:
            self.proxy.reactor.forget(self.backend.fileno())
            relay.close(self.backend)
            self.backend = None
        self.proxy.counters.connect_failed += 1
        log.debug("proxy %s: connect to %s failed: %s", self.proxy.config.name,
                  hostport(*address), exc)
        self._next()

    # ----- relaying
    def _on_client(self, events: int) -> None:
        if self._flows is not None:  # (watched once they are)
            relay.deliver(events, *self._flows)

    def _on_backend(self, events: int) -> None:
        if self._flows is not None:
            up, down = self._flows
            relay.deliver(events, down, up)
        elif self._dialing is not None:
            self._dial_reported(self._dialing)

    def _connected(self, reported: bool) -> None:
        """reported: learnt from a report of the backend socket, which may have said that
        bytes came too (it will not say it again): the backend is read at once."""
        proxy = self.proxy
        assert self.backend is not None
        if self.target is not None:
            self.target.active += 1
        else:  # no backends: its original destination
            proxy.counters.original += 1
        proxy.counters.proxied += 1
        loop, pool, reactor = proxy.loop, proxy.buffers, proxy.reactor
        up = relay.Flow(loop, self.client, self.backend, pool, self.up, self._flow_done,
                        self._flow_failed, reactor.want_write)
        down = relay.Flow(loop, self.backend, self.client, pool, self.down, self._flow_done,
                          self._flow_failed, reactor.want_write)
        self._flows = (up, down)
        down.start(try_first=reported)
        up.start(try_first=True, watched_next=True)
        if self._finished:
            return
        # Watched after its first read: what that read took is not reported again (a turn of
        # the loop for nothing), and what came since (its EOF too) is reported at once.
        try:
            reactor.watch(self.client.fileno(), self._on_client, write=False)
        except OSError:
            self._finish(reset=True, counter="reset")

    def _flow_done(self) -> None:
        if self._flows is not None and all(f.over for f in self._flows):
            self._finish(reset=False)

    def _flow_failed(self, exc: OSError) -> None:
        self._finish(reset=True, counter="reset")

    # ----- the end
    def abort(self, reason: str) -> None:
        """End now, abortively: reason is "idle", "drain" or "reset" (ABORTS)."""
        if self._finished or self.closing_reason is not None:
            return
        self.closing_reason = reason
        self._finish(reset=True, counter=ABORTS[reason])

    def _finish(self, reset: bool, counter: str | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        proxy = self.proxy
        counters = proxy.counters
        if counter is not None:
            setattr(counters, counter, getattr(counters, counter) + 1)
        if self._waiting is not None:
            self._waiting.cancel()
        self._stop_dialing()
        if self._flows is not None:
            for flow in self._flows:
                flow.stop()
        counters.bytes_in += self.up.bytes
        counters.bytes_out += self.down.bytes
        reactor = proxy.reactor
        reactor.forget(self.client.fileno())
        relay.close(self.client, reset)
        if self.backend is not None:
            reactor.forget(self.backend.fileno())
            relay.close(self.backend, reset)
        if self._flows is not None and self.target is not None:
            self.target.active -= 1
        proxy.ended(self)

