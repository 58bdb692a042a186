"""`bpfsync datapath`: the supervised data-path process. For now it sends GUE pings for every
tunnel that asks for them, reading the tunnel table from the pins at every tick, so it needs
no configuration of its own and follows tunnel changes without a restart.

Everything it needs is opened before entering the network namespace; it never writes a map.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import time
from contextlib import suppress
from pathlib import Path

from reconciler import pinger
from reconciler import tables as t
from reconciler.kernel import libbpf, netns

IP_FREEBIND = 15
MAX_SLEEP = 1.0  # table changes are noticed within this
log = logging.getLogger("bpfsync.datapath")


class Pinger:
    def __init__(self, pin_root: Path) -> None:
        self.pin = pin_root / "maps" / t.TUNNEL.name
        self.schedule = pinger.Schedule({})
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.current: dict[int, pinger.PingTarget] = {}
        self.sent = 0
        self._missing_logged = False
        self._errors_logged: set[tuple[int, int]] = set()

    def read(self) -> dict[int, pinger.PingTarget]:
        try:
            fd = libbpf.obj_get(str(self.pin))
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise
            if not self._missing_logged:
                log.info("waiting for %s (created by the first bpfsync apply)", self.pin)
                self._missing_logged = True
            return {}
        try:
            raw = libbpf.lookup_all(fd, t.TUNNEL.key_size, t.TUNNEL.value_size,
                                    t.TUNNEL.max_entries)
        finally:
            os.close(fd)
        return pinger.targets(raw)

    def _socket(self, local: tuple[str, int]) -> socket.socket:
        sock = self.sockets.get(local)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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


def run(pin_root: Path, netns_name: str | None, once: bool = False) -> int:
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    p = Pinger(pin_root)
    if netns_name:
        netns.enter(netns_name)
    log.info("data path started (pin root %s%s)", pin_root,
             f", netns {netns_name}" if netns_name else "")
    try:
        while not stop:
            delay = p.tick(time.monotonic())
            if once:
                break
            time.sleep(delay)
    finally:
        p.close()
    log.info("data path stopped after %d pings; pinned state left in place", p.sent)
    return 0
