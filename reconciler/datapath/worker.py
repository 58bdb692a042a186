"""The data-path worker started by `bpfsync datapath` (supervisor.py): it proxies the
connections that port steering hands to the listeners its supervisor passes it, and sends
GUE pings for every tunnel that asks for them. It reads its configuration from the pinned
tables (ps_proxy, ti_tunnel) at every tick, so it needs no file of its own and follows
changes without a restart. It never writes a map. If its supervisor dies, it keeps serving
its proxies until a new supervisor's listeners take their place in steering, then drains
and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.datapath import pinger, relay, supervisor
from reconciler.datapath.fdgate import DescriptorGate
from reconciler.datapath.listeners import IP_FREEBIND, IPV6_FREEBIND
from reconciler.datapath.proxyserver import ProxyServer
from reconciler.datapath.reactor import Reactor
from reconciler.datapath.selector import ExclusiveEpollSelector
from reconciler.datapath.shared import Shared
from reconciler.datapath.standby import CHECK_EVERY, Standby, host_idle
from reconciler.gue import tables as gt
from reconciler.kernel import fdlimit, netns
from reconciler.kernel.maps import read_pin
from reconciler.steering import proxyconf
from reconciler.steering import tables as st

MAX_SLEEP = 1.0  # table changes are noticed within this
STATUS_EVERY = 0.25  # seconds between reports in <run dir>/datapath.json
DRAIN_ON_EXIT = 10.0  # seconds established connections get when the worker stops
log = logging.getLogger("bpfsync.datapath")


class Pinger:
    def __init__(self, pin_root: Path) -> None:
        self.pin_root = pin_root
        self.schedule = pinger.Schedule({})
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.current: dict[int, pinger.PingTarget] = {}
        self.sent = 0
        self._missing_logged = False
        self._errors_logged: set[tuple[int, int]] = set()

    def read(self) -> dict[int, pinger.PingTarget]:
        raw = read_pin(self.pin_root, gt.TUNNEL)
        raw6 = read_pin(self.pin_root, gt.TUNNEL6)  # not pinned before an IPv6-aware apply
        if raw is None:
            if not self._missing_logged:
                log.info("waiting for %s (created by the first bpfsync apply)",
                         self.pin_root / "maps" / gt.TUNNEL.name)
                self._missing_logged = True
            return {}
        return pinger.targets({**raw, **(raw6 or {})},
                              lambda: read_pin(self.pin_root, gt.NEXT_KEY_TABLE) or {})

    def _socket(self, local: tuple[str, int]) -> socket.socket:
        sock = self.sockets.get(local)
        if sock is None:
            ipv6 = ":" in local[0]
            sock = socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ipv6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
            sock.setblocking(False)
            sock.bind(local)
            self.sockets[local] = sock
        return sock

    def tick(self, now: float) -> float:
        """Send what is due; returns seconds until the next tick."""
        targets = self.read()
        if targets != self.current:
            for tid in sorted(targets.keys() | self.current.keys()):
                if targets.get(tid) != self.current.get(tid):
                    log.info("%s %s", "pinging" if tid in targets else "stopped pinging",
                             (targets.get(tid) or self.current[tid]).describe())
            self.current = targets
            in_use = {x.local for x in targets.values()}
            for local in list(self.sockets):
                if local not in in_use:
                    self.sockets.pop(local).close()
        for target in self.schedule.update(now, targets):
            try:
                self._socket(target.local).sendto(
                    pinger.ping_payload(target.tunnel_id, target.key), target.remote)
                self.sent += 1
                self._errors_logged.discard((target.tunnel_id, 0))
            except OSError as exc:
                if (target.tunnel_id, exc.errno or 0) not in self._errors_logged:
                    log.warning("ping %s failed: %s", target.describe(), exc)
                    self._errors_logged.add((target.tunnel_id, exc.errno or 0))
        nxt = min(self.schedule.due.values(), default=now + MAX_SLEEP)
        return max(0.01, min(MAX_SLEEP, nxt - now))

    def close(self) -> None:
        for sock in self.sockets.values():
            with suppress(OSError):
                sock.close()


class Worker:
    """The data-path worker: proxies on the listeners its supervisor passes (every worker
    has the same listeners; the first accepts at all times, the others while they are
    needed: standby.py), GUE pings (the first worker only)."""

    def __init__(self, pin_root: Path, control: socket.socket, generation: int,
                 index: int = 0, workers: int = 1, shared: Path | None = None,
                 join: float = 0.0) -> None:
        self.pin_root = pin_root
        self.control = control
        self.generation = generation
        self.index = index
        self.shared = Shared(shared, index, workers)
        self.standby = Standby(index, join if self.shared.shared else 0.0)
        self.pinger = Pinger(pin_root)
        self.gate = DescriptorGate(fdlimit.raise_to_hard(), fdlimit.open_count())
        self.buffers = relay.BufferPool(gate=self.gate)
        self.listeners: dict[int, list[socket.socket]] = {}  # per slot: IPv4, then IPv6
        self.exclusive: set[int] = set()  # the listeners served: datapath/selector.py
        self.servers: dict[int, ProxyServer] = {}
        self.reactor: Reactor | None = None  # every proxy's connections (made on the loop)
        self.configs: dict[int, bytes] = {}
        self.bad_configs: set[bytes] = set()
        self.status_path = supervisor.report_path(pin_root, index)
        self.done = asyncio.Event()
        # Without a supervisor, connections are still steered to our listeners (we hold
        # copies): serve them until steering hands each slot to another process's socket.
        self.orphaned = False
        self.retired: list[ProxyServer] = []  # still finishing their connections

    def _on_control(self) -> None:
        try:
            msg, fds, _, _ = socket.recv_fds(self.control, 65536, 256)
        except BlockingIOError:
            return
        if not msg:  # the supervisor is gone (killed, or crashed)
            for fd in fds:
                os.close(fd)
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.control.fileno())
            self.orphaned = True
            if not self.servers:
                log.warning("supervisor gone; no proxy to keep serving, exiting")
                self.done.set()
            else:
                log.warning("supervisor gone; serving on until a new data path takes over "
                            "steering")
            return
        doc = json.loads(msg)
        slots = doc["slots"]
        fresh = {}
        counts = doc.get("counts", [1] * len(slots))
        groups, at = [], 0
        for n in counts:
            groups.append(fds[at:at + n])
            at += n
        for slot, cookie, group in zip(slots, doc["cookies"], groups, strict=True):
            held = self.listeners.get(slot)
            if held is not None and supervisor.socket_cookie(held[0]) == cookie:
                for fd in group:
                    os.close(fd)  # already have them
                continue
            if held is not None:  # the supervisor made a new listener for this slot
                server = self.servers.pop(slot, None)
                del self.listeners[slot]
                if server is not None:
                    log.info("proxy %s: new listener; served %d queued connections of the "
                             "old one", server.config.name, server.retire())
                    self.retired.append(server)
                else:
                    for sock in held:
                        sock.close()
            fresh[slot] = [socket.socket(fileno=fd) for fd in group]
        for slot in set(self.listeners) - set(slots):
            server = self.servers.pop(slot, None)
            if server:
                server.close()
                log.info("proxy %s stopped accepting (slot %d removed)", server.config.name,
                         slot)
            else:
                for sock in self.listeners[slot]:
                    sock.close()
            del self.listeners[slot]
        self.listeners.update(fresh)
        self._reconcile_servers()

    def _reconcile_servers(self) -> None:
        for slot, raw in self.configs.items():
            if slot not in self.listeners:
                continue
            try:
                config = proxyconf.decode(slot, raw)
            except (ValueError, KeyError) as exc:
                if raw not in self.bad_configs:
                    log.error("slot %d: unreadable configuration (%s); not served", slot, exc)
                    self.bad_configs.add(raw)
                continue
            server = self.servers.get(slot)
            if server is None:
                if self.reactor is None:
                    self.reactor = Reactor(asyncio.get_running_loop())
                server = self.servers[slot] = ProxyServer(self.listeners[slot], config,
                                                          self.buffers, self.gate, self.shared,
                                                          self.exclusive, self.reactor)
                server.stand_by(not self.standby.accepting)
                server.start()
            else:
                server.update(config)

    def _retire_taken_over(self) -> None:
        slots = sorted(self.servers)
        cookies = supervisor.registered_cookies(self.pin_root, slots)
        for slot in slots:
            if cookies[slot] != supervisor.socket_cookie(self.listeners[slot][0]):
                server = self.servers.pop(slot)
                del self.listeners[slot]  # retire() closes it: never serve on it again
                taken = server.retire()
                log.info("proxy %s: steering moved to a new data path; served %d queued "
                         "connections, no longer accepting", server.config.name, taken)
                self.retired.append(server)
        if not self.servers:
            self.done.set()

    async def _config_loop(self) -> None:
        while not self.done.is_set():
            if self.orphaned:
                try:
                    self._retire_taken_over()
                except OSError as exc:
                    log.warning("reading %s failed: %s", st.SOCKETS.name, exc)
            try:
                configs = supervisor.read_proxy_slots(self.pin_root)
            except OSError as exc:
                log.warning("reading proxy configuration failed: %s", exc)
                configs = self.configs
            if configs != self.configs:
                self.configs = configs
                self._reconcile_servers()
            await asyncio.sleep(supervisor.TICK)

    async def _standby_loop(self) -> None:
        """Report this worker's load every CHECK_EVERY; a worker after the first accepts
        only while the workers before it need it (datapath/standby.py)."""
        if not self.shared.shared:
            return
        cpu, at = time.process_time(), time.monotonic()
        while not self.done.is_set():
            await asyncio.sleep(CHECK_EVERY)
            cpu0, at0, cpu, at = cpu, at, time.process_time(), time.monotonic()
            self.shared.report_load((cpu - cpu0) / max(at - at0, 1e-3), at)
            if self.standby.fixed:  # (no need to read the host's idle time)
                continue
            try:
                idle = host_idle()
            except (OSError, ValueError, IndexError):
                idle = None
            was = self.standby.accepting
            if self.standby.check(self.shared.loads(), at, idle) != was:
                log.info("worker %d: %s", self.index, "accepting new connections (the workers "
                         "before it are busy or not serving)" if not was else
                         "standing by (the workers before it have room)")
                for server in self.servers.values():
                    server.stand_by(was)

    async def _ping_loop(self) -> None:
        if self.index != 0:  # one worker pings: a peer sees each ping once
            return
        while not self.done.is_set():
            await asyncio.sleep(self.pinger.tick(time.monotonic()))

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "worker": self.index, "generation": self.generation,
                "time": time.time(), "accepting": self.standby.accepting,
                "pingsSent": self.pinger.sent, "pinging": sorted(self.pinger.current),
                # counted, not listed: /proc/self/fd of 10^5 connections every 0.25 s is not free
                "descriptors": {"limit": self.gate.limit, "open": self.gate.held,
                                "exhausted": self.gate.pauses, "episodes": self.gate.episodes,
                                "paused": self.gate.paused, "pipes": self.gate.pipes},
                "proxies": {s.config.name: s.status() for s in self.servers.values()}}

    async def _status_loop(self) -> None:
        while not self.done.is_set():
            if self.orphaned:  # the status belongs to the supervised worker now
                return
            with suppress(OSError):
                self.status_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                tmp = self.status_path.with_name(self.status_path.name + "~")
                tmp.write_text(json.dumps(self.status()))
                tmp.replace(self.status_path)
            await asyncio.sleep(STATUS_EVERY)

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.control.setblocking(False)
        loop.add_reader(self.control.fileno(), self._on_control)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.done.set)
        tasks = [loop.create_task(c) for c in (self._config_loop(), self._ping_loop(),
                                               self._status_loop(), self._standby_loop())]
        await self.done.wait()
        with suppress(ValueError, OSError):
            loop.remove_reader(self.control.fileno())
        for server in self.servers.values():
            server.close()
        for task in tasks:
            task.cancel()
        servers = [*self.servers.values(), *self.retired]
        active = sum(len(s.conns) for s in servers)
        if active:
            log.info("waiting up to %.0fs for %d connections to end", DRAIN_ON_EXIT, active)
            deadline = time.monotonic() + DRAIN_ON_EXIT
            while time.monotonic() < deadline and any(s.conns for s in servers):
                await asyncio.sleep(0.1)
        self.pinger.close()
        if not self.orphaned:
            with suppress(OSError):
                self.status_path.unlink()


def event_loop_runner(exclusive: set[int]) -> Callable[[Coroutine[Any, Any, None]], None]:
    """asyncio's loop on an epoll that wakes one worker per new connection (exclusive: the
    listeners, datapath/selector.py), or uvloop's when BPFSYNC_EVENT_LOOP=uvloop (and uvloop
    is installed; every worker wakes)."""
    if os.environ.get("BPFSYNC_EVENT_LOOP", "asyncio") == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("BPFSYNC_EVENT_LOOP=uvloop, but uvloop is not installed: asyncio's")
        else:
            return uvloop.run

    def run(main: Coroutine[Any, Any, None]) -> None:
        factory = partial(asyncio.SelectorEventLoop, ExclusiveEpollSelector(exclusive))
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    return run


def run_worker(pin_root: Path, control_fd: int, generation: int,
               netns_name: str | None = None, index: int = 0, workers: int = 1,
               shared: Path | None = None, join: float = 0.0) -> int:
    if netns_name:
        netns.enter(netns_name)  # backends and GUE peers are reached from the proxies' netns
    control = socket.socket(fileno=control_fd)
    worker = Worker(pin_root, control, generation, index, workers, shared, join)
    event_loop_runner(worker.exclusive)(worker.main())
    log.info("worker stopped after %d pings", worker.pinger.sent)
    return 0


def run(pin_root: Path, netns_name: str | None, workers: int | None = None) -> int:
    return supervisor.Supervisor(pin_root, netns_name, workers=workers).run()
