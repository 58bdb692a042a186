"""One proxy of the data path: accepts on its (steered) listeners, picks a backend, relays.

The listeners are given, an IPv4 one and, where the host has IPv6, an IPv6 one (they belong
to the supervisor, which keeps them open across restarts of this process); configuration
changes arrive through update() and apply to new connections only. Each connection is a
session.Session on readiness callbacks; health checks, name resolution, idle and drain
timeouts run as tasks of the same loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from contextlib import suppress
from typing import Any

from reconciler.datapath import health, relay
from reconciler.datapath.addresses import is_address
from reconciler.datapath.balancer import Pool, Target
from reconciler.datapath.conn import Counters, report
from reconciler.datapath.fdgate import EXHAUSTED, DescriptorGate
from reconciler.datapath.preconnect import Preconnects
from reconciler.datapath.reactor import Reactor
from reconciler.datapath.session import Session
from reconciler.datapath.shared import Shared
from reconciler.steering.proxyconf import RuntimeConfig

log = logging.getLogger("bpfsync.proxy")
ACCEPT_BACKOFF = 0.1  # seconds after a failed accept (out of file descriptors, say)
ROOM_POLL = 0.1  # at maxConnections: how often another worker's ended connections are seen
ACCEPT_BATCH = 64  # accepts per readiness of a listener


class ProxyServer:
    def __init__(self, listeners: list[socket.socket], config: RuntimeConfig,
                 pool: relay.BufferPool, gate: DescriptorGate | None = None,
                 shared: Shared | None = None, exclusive: set[int] | None = None,
                 reactor: Reactor | None = None) -> None:
        self.loop = asyncio.get_running_loop()  # made on the loop it serves on (a worker's)
        self.listeners = listeners
        self.listener_addresses = [x.getsockname() for x in listeners]
        # the connections' sockets (the worker's, for all its proxies)
        self.reactor = Reactor(self.loop) if reactor is None else reactor
        # the listeners' descriptors, for the worker's selector: one worker woken per
        # connection (datapath/selector.py)
        self.exclusive = exclusive if exclusive is not None else set()
        for listener in listeners:
            listener.setblocking(False)
            # accepted sockets inherit it (Linux clones the listener's tcp_sock): no
            # setsockopt per connection
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.exclusive.add(listener.fileno())
        self.config = config
        self.buffers = pool
        self.gate = gate or DescriptorGate()
        self.shared = shared or Shared(None)  # maxConnections and the turn, across workers
        self.pool = Pool(config.health)
        self.counters = Counters()
        self.preconnects = Preconnects(self)  # backend connections opened ahead
        self.conns: set[Session] = set()
        self.resolved: dict[tuple[str, int], list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._checks: dict[tuple[str, int, str], asyncio.Task[None]] = {}
        # listeners watched now: swept once a second, for a wake-up that went to a worker
        # frozen or killed before it accepted (datapath/selector.py)
        self._watched: dict[int, tuple[socket.socket, asyncio.Future[tuple[str, str]]]] = {}
        self._ended = asyncio.Event()  # a connection of ours ended (its place is free)
        self._parked: list[socket.socket] = []  # accepted; admitted once there is room
        self._serving = asyncio.Event()  # clear: standing by, the listeners unwatched
        self._serving.set()
        self._closed = False

    # ----- life cycle
    def start(self) -> None:
        self._tasks = [self.loop.create_task(self._run())]

    async def _run(self) -> None:
        await self._resolve_all()  # before accepting: hostnames need their first answer
        self._set_targets()
        log.info("proxy %s (slot %d) serving, backends: %s", self.config.name, self.config.slot,
                 ", ".join(map(str, self.pool.targets)) or (
                     "none resolved" if self.config.backends else "none (original destinations)"))
        await asyncio.gather(*map(self._accept_loop, self.listeners), self._resolve_loop(),
                             self._sweep_loop())

    @property
    def serving(self) -> bool:
        """Accepting (not standing by, not closed)."""
        return self._serving.is_set() and not self._closed

    @property
    def closed(self) -> bool:
        return self._closed

    def stand_by(self, on: bool) -> None:
        """on: stop watching the listeners (other workers accept; datapath/standby.py);
        off: watch them again. Connections already accepted are served either way;
        connections opened ahead are kept only while accepting."""
        if on == (not self._serving.is_set()):
            return
        if not on:
            self._serving.set()
            self.preconnects.sync()
            return
        self._serving.clear()
        self.preconnects.clear()
        for _, paused in self._watched.values():
            if not paused.done():
                paused.set_result(("standby", ""))

    def update(self, config: RuntimeConfig) -> None:
        """New settings for new connections; established ones keep their backend."""
        if config == self.config:
            return
        old = self.config
        self.config = config
        self.pool.health = config.health
        if old.backends != config.backends:
            self._tasks.append(self.loop.create_task(self._re_resolve()))
        else:
            self._set_targets()
        log.info("proxy %s: configuration changed", config.name)

    async def _re_resolve(self) -> None:
        await self._resolve_all()
        self._set_targets()

    def close(self) -> None:
        """Stop accepting and close our copies of the listeners; established connections run
        on until they end."""
        self._closed = True
        self.preconnects.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._checks.values():
            task.cancel()
        loop = self.loop
        for listener in self.listeners:
            with suppress(Exception):
                loop.remove_reader(listener.fileno())
            self.exclusive.discard(listener.fileno())
            relay.close(listener)
        for client in self._parked:  # as the listen queue's: reset
            relay.close(client, reset=True)
            self.gate.released()
        self._parked = []

    # ----- backends
    async def _resolve_all(self) -> None:
        await health.resolve(self.config.name, self.config.backends, self.resolved)

    def _set_targets(self) -> None:
        wanted = [(h, p, a) for h, p in self.config.backends
                  for a in self.resolved.get((h, p), [])]
        now = time.monotonic()
        removed = self.pool.set_targets(wanted, now)
        for t in removed:
            log.info("proxy %s: backend %s removed (%d connections draining)", self.config.name,
                     t, t.active)
        live = {t.key for t in self.pool.targets} if self.config.health.enabled else set()
        for key in list(self._checks):
            if key not in live:
                self._checks.pop(key).cancel()
        if self.config.health.enabled and not self._closed:
            loop = self.loop
            for t in self.pool.targets:
                if t.key not in self._checks:
                    self._checks[t.key] = loop.create_task(health.check_loop(self, t))
        if not self._closed:
            self.preconnects.sync(now)

    async def _resolve_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.resolve_interval)
            if any(not is_address(h) for h, _ in self.config.backends):
                await self._re_resolve()

    # ----- connections
    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept whenever listener is readable, from a callback (one registration with the
        loop for as long as there is room, not one per empty queue); when the callback finds
        no room or an error, watching stops until there is room again."""
        loop = self.loop
        fd = listener.fileno()
        try:
            while True:
                if not self._parked:  # (those are served even while standing by)
                    await self._serving.wait()
                paused: asyncio.Future[tuple[str, str]] = loop.create_future()
                loop.add_reader(fd, self._accept_ready, listener, paused)
                self._watched[fd] = (listener, paused)
                if self._parked:  # they need no report from the listener
                    loop.call_soon(self._accept_ready, listener, paused)
                why, detail = await paused
                del self._watched[fd]
                loop.remove_reader(fd)
                if why == "full":  # one of ours ends, or maybe another worker's did
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._ended.wait(), ROOM_POLL)
                elif why == "standby":
                    continue
                elif why == "descriptors":  # wait for a connection to end, no spinning
                    self.counters.fd_exhausted += 1
                    await self.gate.pause(self.config.name, detail)
                else:
                    await asyncio.sleep(ACCEPT_BACKOFF)
        finally:
            self._watched.pop(fd, None)
            if listener.fileno() == fd:  # still ours: once closed, fd may be another's
                with suppress(Exception):
                    loop.remove_reader(fd)

    def _accept_ready(self, listener: socket.socket,
                      paused: asyncio.Future[tuple[str, str]]) -> None:
        """Accept what the queue holds (at most ACCEPT_BATCH, so other work gets its turn,
        and no more than every worker's connections left room for at the last look), then
        admit them: each takes a place among every worker's connections and its backend's
        turn, locked once for the batch (datapath/shared.Cells) and only after the accepts
        (held across them, the lock kept the other workers waiting, and a wake-up that found
        the queue empty took it for nothing). A connection accepted as another worker took
        the last place waits here, unserved and uncounted as it would in the listen queue,
        and goes first once there is room (_parked)."""
        if self._closed:  # a turn asked for before close()
            return
        config = self.config
        limit = config.max_connections
        batch, self._parked = self._parked, []
        room = limit - self.shared.total(config.slot) - len(batch)
        if not self._serving.is_set():  # standing by: the parked only
            room = min(room, 0)
        for _ in range(min(ACCEPT_BATCH, room)):
            if paused.done():
                break
            if not self.gate.room():  # two more descriptors would not fit
                paused.set_result(("descriptors", "two per connection"))
                break
            try:
                client, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError as exc:  # never stop accepting
                if exc.errno in EXHAUSTED:
                    paused.set_result(("descriptors", exc.strerror or "EMFILE"))
                    break
                self.counters.accept_errors += 1  # ENOBUFS, an aborted handshake
                log.warning("proxy %s: accept failed: %s", config.name, exc)
                paused.set_result(("error", ""))
                break
            self.gate.opened()
            self.gate.resume()
            batch.append(client)
        admitted: list[Session] = []
        if batch:
            pick = bool(config.backends)  # else each goes to its original destination
            with self.shared.cells(config.slot) as cells:
                for i, client in enumerate(batch):
                    if not cells.room(limit):
                        self._parked = batch[i:]
                        break
                    cells.add()
                    admitted.append(self._admit(client, cells.pick(self.pool) if pick else None))
        if (room <= 0 or self._parked) and not paused.done():
            self._ended.clear()  # one of ours ends, or maybe another worker's did
            paused.set_result(("full", ""))
        for session in admitted:
            session.start()

    def _admit(self, client: socket.socket, target: Target | None = None) -> Session:
        """client's session (its descriptors counted by the gate already), on target (picked
        at its admission) if it is given; counted among the connections, to be started."""
        self.counters.accepted += 1
        client.setblocking(False)
        session = Session(self, client, target)
        self.conns.add(session)
        return session

    def retire(self) -> int:
        """Another process's listener has taken this proxy's place in steering: serve the
        connections already queued on ours, then stop accepting. Returns how many."""
        waiting, self._parked = self._parked, []
        for listener in self.listeners:
            while not self._closed:
                try:
                    client, _ = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                self.gate.opened()
                waiting.append(client)
        for client in waiting:
            self.shared.admit(self.config.slot, sys.maxsize)  # counted, beyond any limit
            self._admit(client).start()
        self.close()
        return len(waiting)

    def ended(self, session: Session) -> None:
        """session has ended (session.py): its place, its descriptors are free."""
        self.conns.discard(session)
        self.gate.released()
        self.shared.release(self.config.slot)
        self._ended.set()

    async def _sweep_loop(self) -> None:
        """Idle and drain timeouts: one pass a second over all connections, not a timer each;
        and what waits in a watched listener's queue is accepted."""
        while True:
            await asyncio.sleep(min(1.0, self.config.idle_timeout / 4))
            for listener, paused in list(self._watched.values()):
                if not paused.done():
                    self._accept_ready(listener, paused)
            now = time.monotonic()
            drain = self.config.drain_timeout
            for conn in list(self.conns):
                reason = None
                if conn.idle_for(now) > self.config.idle_timeout:
                    reason = "idle"
                elif (drain is not None and conn.target is not None
                      and conn.target.removed_at is not None
                      and now - conn.target.removed_at >= drain):
                    reason = "drain"
                if reason:
                    conn.abort(reason)
            self.preconnects.sync(now)

    # ----- reporting
    def status(self) -> dict[str, Any]:
        return report(self.config.slot, self.counters, self.conns, self.pool,
                      self.preconnects.ready)
