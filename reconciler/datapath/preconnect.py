"""Backend connections opened before a client needs them (a Proxy's `preconnect: N`).

A client's wait through the proxy includes the connect to its backend: a round trip, and on
the backend the accept of a new connection. With preconnect, each accepting worker keeps up
to N connections open to each healthy backend; a client admitted to that backend takes the
oldest ready one and its first bytes go out at once. Each connection serves one client and
is closed with it: it is opened ahead, never reused.

While it waits, a connection is watched like any other (reactor.Reactor), with a handler of
its own: a connect that fails, or a backend that closes it (or resets it), drops it. Bytes
a backend sends first wait in the socket for the client (a server that speaks first gets
its greeting through). Taking one looks at the socket once more (a peek): a close still on
its way in is not handed to a client.

Bounds: N per backend per worker (schema: at most 64), counted by the descriptor gate;
replacements are opened only after a connection is taken (TOP_UP_DELAY later, off the path
of the client that took it) and at the proxy's sweep (a second), so a backend that refuses
or closes them costs at most N connects per backend per second and worker. A connection
that waited MAX_AGE is replaced (a NAT or firewall on the way may forget a connection that
stays idle for long); one still connecting after the connect timeout is dropped. A worker
standing by keeps none, and neither does a backend that is unhealthy or removed.
"""

from __future__ import annotations

import functools
import select
import socket
import time
from typing import TYPE_CHECKING

from reconciler.datapath import relay
from reconciler.datapath.addresses import family

if TYPE_CHECKING:
    from reconciler.datapath.balancer import Target
    from reconciler.datapath.proxyserver import ProxyServer

MAX_AGE = 30.0
TOP_UP_DELAY = 0.001
_GONE = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR  # closed or failed (EPOLLIN: bytes)


class Spare:
    """One connection opened ahead: ready once its connect is done."""

    __slots__ = ("ready", "since", "sock")

    def __init__(self, sock: socket.socket, ready: bool, since: float) -> None:
        self.sock, self.ready, self.since = sock, ready, since


class Preconnects:
    """One proxy's connections opened ahead, per backend (Target, by identity)."""

    def __init__(self, proxy: ProxyServer) -> None:
        self.proxy = proxy
        self.spares: dict[Target, list[Spare]] = {}
        self._pending: set[Target] = set()  # a top-up is due (TOP_UP_DELAY)

    @property
    def ready(self) -> int:
        return sum(s.ready for spares in self.spares.values() for s in spares)

    def take(self, target: Target) -> tuple[socket.socket, bool] | None:
        """target's oldest ready connection, and whether bytes wait in it already; None if
        it has none. The caller watches it from now on (Reactor.hand_over)."""
        spares = self.spares.get(target)
        if not spares:
            return None
        self._top_up_soon(target)
        for spare in list(spares):
            if not spare.ready:
                continue
            try:
                waiting = bool(spare.sock.recv(1, socket.MSG_PEEK))
                if not waiting:  # b"": the backend has closed it
                    self._drop(target, spare)
                    continue
            except BlockingIOError:
                waiting = False
            except OSError:
                self._drop(target, spare)
                continue
            spares.remove(spare)
            self.proxy.gate.spares -= 1
            self.proxy.counters.preconnect_used += 1
            return spare.sock, waiting
        return None

    def sync(self, now: float | None = None) -> None:
        """Keep what the configuration, the backends' health and standing by call for: drop
        what is not wanted (or too old, or connecting too long), open what is missing."""
        proxy = self.proxy
        config = proxy.config
        now = time.monotonic() if now is None else now
        wanted = {t for t in proxy.pool.targets if t.healthy} \
            if config.preconnect and proxy.serving else set()
        for target, spares in list(self.spares.items()):
            if target not in wanted:
                for spare in list(spares):
                    self._drop(target, spare, counted=False)
                del self.spares[target]
                continue
            for spare in list(spares):
                age = now - spare.since
                if age > (MAX_AGE if spare.ready else config.connect_timeout):
                    self._drop(target, spare, counted=not spare.ready)
            for spare in spares[config.preconnect:]:  # N was lowered
                self._drop(target, spare, counted=False)
        for target in wanted:
            self.top_up(target, now)

    def top_up(self, target: Target, now: float | None = None) -> None:
        """Open connections to target until it has N (as many as descriptors allow)."""
        proxy = self.proxy
        config = proxy.config
        if not (config.preconnect and proxy.serving and target.healthy
                and target in proxy.pool.targets):
            return
        now = time.monotonic() if now is None else now
        spares = self.spares.setdefault(target, [])
        gate, reactor = proxy.gate, proxy.reactor
        while len(spares) < config.preconnect and gate.room():
            try:
                sock = socket.socket(family(target.address),
                                     socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            except OSError:
                proxy.counters.preconnect_dropped += 1
                return
            try:
                connected = relay.dial(sock, (target.address, target.port), config.mark)
                spare = Spare(sock, connected, now)
                reactor.watch(sock.fileno(), functools.partial(self._report, target, spare),
                              write=not connected)
            except OSError:
                relay.close(sock)
                proxy.counters.preconnect_dropped += 1
                return
            spares.append(spare)
            gate.spares += 1

    def clear(self) -> None:
        """Close every connection kept (standing by, or the proxy closes)."""
        for target, spares in self.spares.items():
            for spare in list(spares):
                self._drop(target, spare, counted=False)
        self.spares.clear()

    def _top_up_soon(self, target: Target) -> None:
        if target not in self._pending:
            self._pending.add(target)
            self.proxy.loop.call_later(TOP_UP_DELAY, self._top_up_due, target)

    def _top_up_due(self, target: Target) -> None:
        self._pending.discard(target)
        if not self.proxy.closed:
            self.top_up(target)

    def _report(self, target: Target, spare: Spare, events: int) -> None:
        """A waiting connection's readiness changed: connected, failed or closed."""
        if not spare.ready:
            try:
                if not relay.connect_done(spare.sock):
                    return
            except OSError:  # refused, unreachable
                self._drop(target, spare)
                return
            spare.ready = True
        if events & _GONE:
            self._drop(target, spare)

    def _drop(self, target: Target, spare: Spare, counted: bool = True) -> None:
        spares = self.spares.get(target, [])
        if spare in spares:
            spares.remove(spare)
            self.proxy.gate.spares -= 1
        self.proxy.reactor.forget(spare.sock.fileno())
        relay.close(spare.sock)
        if counted:
            self.proxy.counters.preconnect_dropped += 1
