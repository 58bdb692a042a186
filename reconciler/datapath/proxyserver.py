"""One proxy of the data path: accepts on its (steered) listeners, picks a backend, relays.

The listeners are given, an IPv4 one and, where the host has IPv6, an IPv6 one (they belong
to the supervisor, which keeps them open across restarts of this process); configuration
changes arrive through update() and apply to new connections only. Health checks, name
resolution, idle and drain timeouts run as tasks of the same loop.
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
from reconciler.datapath.addresses import family, is_address, original_destination
from reconciler.datapath.balancer import Pool, Target
from reconciler.datapath.conn import Conn, Counters, report
from reconciler.datapath.fdgate import EXHAUSTED, DescriptorGate
from reconciler.datapath.shared import Shared
from reconciler.steering.model import hostport
from reconciler.steering.proxyconf import RuntimeConfig

log = logging.getLogger("bpfsync.proxy")
ACCEPT_BACKOFF = 0.1  # seconds after a failed accept (out of file descriptors, say)
ROOM_POLL = 0.1  # at maxConnections: how often another worker's ended connections are seen
ACCEPT_BATCH = 64  # accepts per readiness of a listener


class ProxyServer:
    def __init__(self, listeners: list[socket.socket], config: RuntimeConfig,
                 pool: relay.BufferPool, gate: DescriptorGate | None = None,
                 shared: Shared | None = None, exclusive: set[int] | None = None) -> None:
        self.loop = asyncio.get_running_loop()  # made on the loop it serves on (a worker's)
        self.listeners = listeners
        # the listeners' descriptors, for the worker's selector: one worker woken per
        # connection (datapath/selector.py)
        self.exclusive = exclusive if exclusive is not None else set()
        for listener in listeners:
            listener.setblocking(False)
            self.exclusive.add(listener.fileno())
        self.config = config
        self.buffers = pool
        self.gate = gate or DescriptorGate()
        self.shared = shared or Shared(None)  # maxConnections and the turn, across workers
        self.pool = Pool(config.health)
        self.counters = Counters()
        self.conns: set[Conn] = set()
        self.resolved: dict[tuple[str, int], list[str]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._checks: dict[tuple[str, int, str], asyncio.Task[None]] = {}
        # listeners watched now: swept once a second, for a wake-up that went to a worker
        # frozen or killed before it accepted (datapath/selector.py)
        self._watched: dict[int, tuple[socket.socket, asyncio.Future[tuple[str, str]]]] = {}
        self._ended = asyncio.Event()  # a connection of ours ended (its place is free)
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
                paused: asyncio.Future[tuple[str, str]] = loop.create_future()
                loop.add_reader(fd, self._accept_ready, listener, paused)
                self._watched[fd] = (listener, paused)
                why, detail = await paused
                del self._watched[fd]
                loop.remove_reader(fd)
                if why == "full":  # one of ours ends, or maybe another worker's did
                    with suppress(TimeoutError):
                        await asyncio.wait_for(self._ended.wait(), ROOM_POLL)
                elif why == "descriptors":  # wait for a connection to end, no spinning
                    self.counters.fd_exhausted += 1
                    await self.gate.pause(self.config.name, detail)
                else:
                    await asyncio.sleep(ACCEPT_BACKOFF)
        finally:
            self._watched.pop(fd, None)
            with suppress(Exception):
                loop.remove_reader(fd)

    def _accept_ready(self, listener: socket.socket,
                      paused: asyncio.Future[tuple[str, str]]) -> None:
        """Accept what the queue holds (at most ACCEPT_BATCH, so other work gets its turn),
        each after taking a place among every worker's connections (the rest wait in the
        listen queue, a shared one: another worker may take them) and its backend's turn;
        the places and the turn are locked once for all of them (datapath/shared.Cells)."""
        slot, limit = self.config.slot, self.config.max_connections
        pick = bool(self.config.backends)  # else each goes to its original destination
        with self.shared.cells(slot) as cells:
            for _ in range(ACCEPT_BATCH):
                if paused.done():
                    return
                if not self.gate.room():  # two more descriptors would not fit
                    paused.set_result(("descriptors", "two per connection"))
                    return
                if not cells.room(limit):
                    self._ended.clear()
                    paused.set_result(("full", ""))
                    return
                try:
                    client, _ = listener.accept()
                except BlockingIOError:
                    return
                except OSError as exc:  # never stop accepting
                    if exc.errno in EXHAUSTED:
                        paused.set_result(("descriptors", exc.strerror or "EMFILE"))
                        return
                    self.counters.accept_errors += 1  # ENOBUFS, an aborted handshake
                    log.warning("proxy %s: accept failed: %s", self.config.name, exc)
                    paused.set_result(("error", ""))
                    return
                cells.add()
                self.gate.resume()
                self._admit(client, cells.pick(self.pool) if pick else None)

    def _admit(self, client: socket.socket, target: Target | None = None) -> None:
        """Serve client, on target (picked at its admission) if it is given."""
        self.counters.accepted += 1
        self.gate.opened()
        client.setblocking(False)
        conn = Conn(client)
        self.conns.add(conn)
        conn.task = self.loop.create_task(self._serve(conn, target))

    def retire(self) -> int:
        """Another process's listener has taken this proxy's place in steering: serve the
        connections already queued on ours, then stop accepting. Returns how many."""
        taken = 0
        for listener in self.listeners:
            while not self._closed:
                try:
                    client, _ = listener.accept()
                except OSError:  # BlockingIOError: the queue is empty
                    break
                self.shared.admit(self.config.slot, sys.maxsize)  # counted, beyond any limit
                self._admit(client)
                taken += 1
        self.close()
        return taken

    async def _dial(self, address: tuple[str, int]) -> socket.socket | None:
        """A connected socket to address, or None (counted) after an error or the timeout.
        Out of descriptors, it waits for a connection to end (within the connect timeout)."""
        deadline = time.monotonic() + self.config.connect_timeout
        while True:
            try:
                sock = socket.socket(family(address[0]), socket.SOCK_STREAM)
                break
            except OSError as exc:
                if exc.errno not in EXHAUSTED or time.monotonic() >= deadline:
                    self.counters.connect_failed += 1
                    return None
                self.counters.fd_exhausted += 1
                await self.gate.pause(self.config.name, exc.strerror or "EMFILE")
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.config.mark is not None:  # never intercepted again (Intercept proxyMark)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.config.mark)
        try:
            await relay.connect(self.loop, sock, address, self.config.connect_timeout)
        except (OSError, TimeoutError) as exc:
            relay.close(sock)
            self.counters.connect_failed += 1
            log.debug("proxy %s: connect to %s failed: %s", self.config.name,
                      hostport(*address), exc)
            return None
        return sock

    async def _connect_original(self, conn: Conn) -> bool:
        """No backends: the connection goes where its client wanted (a TransparentProxy
        intercepted it; tp_getsockopt answers SO_ORIGINAL_DST)."""
        dest = original_destination(conn.client, [x.getsockname() for x in self.listeners])
        if dest is None:
            self.counters.no_original += 1
            log.debug("proxy %s: a connection without an original destination",
                      self.config.name)
            return False
        conn.backend = await self._dial(dest)
        if conn.backend is None:
            return False
        self.counters.original += 1
        return True

    async def _connect(self, conn: Conn, target: Target | None) -> bool:
        """Connect conn to a backend: target first (its pick at admission), then one retry
        on the next in the rotation."""
        if not self.config.backends:
            return await self._connect_original(conn)
        for attempt in range(2):
            if attempt or target is None:  # a connection admitted before the backends were
                with self.shared.turn(self.config.slot) as turn:  # exact across workers
                    target, turn[0] = self.pool.pick_at(turn[0])
            if target is None:
                return False
            sock = await self._dial((target.address, target.port))
            if sock is not None:
                conn.target, conn.backend = target, sock
                target.active += 1
                return True
        return False

    async def _serve(self, conn: Conn, target: Target | None = None) -> None:
        loop = self.loop
        reset = False
        try:
            conn.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not await self._connect(conn, target):
                if self.config.backends:
                    self.counters.no_backend += 1
                return
            self.counters.proxied += 1
            assert conn.backend is not None
            up = loop.create_task(relay.pump(loop, conn.client, conn.backend, self.buffers,
                                             conn.up))
            up.add_done_callback(lambda t: self._on_up_done(conn, t))
            try:
                await relay.pump(loop, conn.backend, conn.client, self.buffers, conn.down,
                                 try_first=False)
                await up
            finally:
                if not up.done():
                    up.cancel()
                    with suppress(asyncio.CancelledError, OSError):
                        await up
        except asyncio.CancelledError:
            reset = conn.closing_reason is not None
            if conn.closing_reason == "reset":
                self.counters.reset += 1
            elif conn.closing_reason == "idle":
                self.counters.idle_closed += 1
            elif conn.closing_reason == "drain":
                self.counters.drained += 1
        except OSError:
            reset = True
            self.counters.reset += 1
        finally:
            self.counters.bytes_in += conn.up.bytes
            self.counters.bytes_out += conn.down.bytes
            relay.close(conn.client, reset)
            if conn.backend is not None:
                relay.close(conn.backend, reset)
            if conn.target is not None:
                conn.target.active -= 1
            self.conns.discard(conn)
            self.gate.released()
            self.shared.release(self.config.slot)
            self._ended.set()

    @staticmethod
    def _on_up_done(conn: Conn, task: asyncio.Task[None]) -> None:
        """The client side failed while the backend side waits: end the connection now."""
        if task.cancelled() or task.exception() is None:
            return
        if conn.task is not None and not conn.task.done() and conn.closing_reason is None:
            conn.closing_reason = "reset"
            conn.task.cancel()

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
                if reason and conn.task is not None and conn.closing_reason is None:
                    conn.closing_reason = reason
                    conn.task.cancel()

    # ----- reporting
    def status(self) -> dict[str, Any]:
        return report(self.config.slot, self.counters, self.conns, self.pool)
