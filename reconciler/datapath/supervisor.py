"""`bpfsync datapath`: the supervisor of the data-path worker, and holder of its listeners.

The proxies' listening sockets belong to this process, not to the worker that accepts on
them: they are created here (one per Proxy slot found in the pinned ps_proxy table),
registered in the ps_sockets SOCKMAP (the sk_lookup program hands connections to them), and
passed to each worker over a unix socket (SCM_RIGHTS). When the worker crashes or is killed,
connections keep completing their handshake into the listen queue, and the next worker
accepts them: no connection is refused across a restart. The worker is restarted with
exponential backoff; a worker that keeps dying quickly is reported as a crash loop.

`bpfsync run` embeds the same Supervisor.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core import tables as t
from reconciler.core.errors import KernelStateError
from reconciler.core.naming import escape_path
from reconciler.kernel import cgroups, libbpf, netns
from reconciler.kernel.maps import read_pin
from reconciler.steering import tables as st
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import datapath_cgroup

log = logging.getLogger("bpfsync.supervisor")

SO_COOKIE = 57
IP_FREEBIND = 15
IP_TRANSPARENT = 19
LISTEN_BACKLOG = 4096
TICK = 0.25  # new or removed Proxies are noticed within this
BACKOFF_FIRST, BACKOFF_CAP = 0.2, 30.0
STABLE_AFTER = 10.0  # a worker that lived this long resets the backoff
CRASH_LOOP = 5  # consecutive quick deaths reported as a crash loop
STOP_GRACE = 10.0
STATUS_FRESH = 5.0  # seconds; an older data-path report means no worker runs


def run_dir(pin_root: Path) -> Path:
    """Where the daemon and the data path keep their lock, socket and status: one directory
    per pin root (resolved by the caller: bpfsync's CLI takes the real path)."""
    return Path("/run/bpfsync") / escape_path(pin_root)


def read_datapath_status(pin_root: Path) -> dict[str, Any] | None:
    """The running worker's last report (written every 0.25 s), if it is fresh: a stale one
    (a worker killed before it could remove it) means no worker runs."""
    try:
        doc = json.loads((run_dir(pin_root) / "datapath.json").read_text())
    except (OSError, ValueError):
        return None
    return doc if time.time() - doc.get("time", 0) < STATUS_FRESH else None


def socket_cookie(sock: socket.socket) -> int:
    return struct.unpack("=Q", sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0]


def registered_cookies(pin_root: Path, slots: list[int]) -> dict[int, int | None]:
    """slot -> cookie of the socket steering hands that slot's connections to."""
    fd = libbpf.obj_get_if_pinned(str(pin_root / "maps" / st.SOCKETS.name))
    if fd is None:
        return dict.fromkeys(slots)
    try:
        out: dict[int, int | None] = {}
        for slot in slots:
            have = libbpf.lookup_elem(fd, struct.pack("=I", slot), 8)
            out[slot] = None if have is None else struct.unpack("=Q", have)[0]
        return out
    finally:
        os.close(fd)


def read_proxy_slots(pin_root: Path) -> dict[int, bytes]:
    """slot -> configuration bytes of every Proxy in the pinned ps_proxy table."""
    out = {}
    for key, value in (read_pin(pin_root, st.PROXY) or {}).items():
        slot = struct.unpack("=I", key)[0]
        if 0 < slot < st.MAX_PROXIES and t.stamp_ok(key, value):
            out[slot] = st.proxy_config(value)
    return out


def transparent_declared(pin_root: Path) -> bool:
    """True when a TransparentProxy is configured (tp_config holds an entry)."""
    return bool(read_pin(pin_root, tpt.TP_CONFIG))


class Listeners:
    """Listening sockets by slot, kept registered in ps_sockets."""

    def __init__(self, pin_root: Path, netns_name: str | None) -> None:
        self.pin_root = pin_root
        self.netns = netns_name
        self.socks: dict[int, socket.socket] = {}

    def _open(self, slot: int) -> socket.socket:
        with netns.inside(self.netns):  # a socket belongs to the namespace it was made in
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)  # lo may still be down
        # an Intercept's redirected connections are assigned to it by TC with their original
        # destination as local address: the kernel accepts (and answers) them only then
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        except PermissionError:  # steering still works; redirection needs CAP_NET_ADMIN
            log.warning("listener for slot %d: IP_TRANSPARENT refused (no CAP_NET_ADMIN): "
                        "connections an Intercept redirects to it will not be accepted", slot)
        s.bind(("127.0.0.1", 0))
        s.listen(LISTEN_BACKLOG)
        log.info("listener for slot %d on %s:%d", slot, *s.getsockname())
        return s

    def sync(self, slots: set[int]) -> bool:
        """Open missing listeners, close removed ones, re-register drifted ones; True when the
        set of listeners changed."""
        changed = False
        for slot in sorted(set(self.socks) - slots):
            log.info("closing listener for slot %d (Proxy removed)", slot)
            self.socks.pop(slot).close()
            changed = True
        for slot in sorted(slots - set(self.socks)):
            self.socks[slot] = self._open(slot)
            changed = True
        if self.socks:
            self._register()
        return changed

    def reopen(self) -> None:
        """New sockets for every slot (made where this process is now: its cgroup decides
        which getsockopt programs their accepted sockets run)."""
        old = self.socks
        self.socks = {slot: self._open(slot) for slot in sorted(old)}
        if self.socks:
            self._register()  # replaces the old ones in ps_sockets: steering never stops
        for sock in old.values():
            sock.close()

    def _register(self) -> None:
        fd = libbpf.obj_get_if_pinned(str(self.pin_root / "maps" / st.SOCKETS.name))
        if fd is None:
            return
        try:
            for slot, s in self.socks.items():
                key = struct.pack("=I", slot)
                cookie = socket_cookie(s)
                have = libbpf.lookup_elem(fd, key, 8)
                if have is None or struct.unpack("=Q", have)[0] != cookie:
                    libbpf.update_elem(fd, key, struct.pack("=Q", s.fileno()))
                    if have is not None:
                        log.info("slot %d held another socket (a previous data path's); "
                                 "steering now hands connections to ours", slot)
        finally:
            os.close(fd)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks.clear()


@dataclass
class WorkerState:
    proc: subprocess.Popen[bytes] | None = None
    control: socket.socket | None = None
    started: float = 0.0
    restarts: int = 0
    quick_deaths: int = 0
    next_start: float = 0.0
    last_exit: str | None = None
    history: list[str] = field(default_factory=list)


class Supervisor:
    def __init__(self, pin_root: Path, netns_name: str | None,
                 worker_cmd: list[str] | None = None, slots_every: float = TICK) -> None:
        self.pin_root = pin_root
        self.slots_every = slots_every  # how often ps_proxy is read for new or removed slots
        self.slots_due = 0.0  # set to 0 to read it at the next tick
        self._written = ""
        self.netns = netns_name
        self.listeners = Listeners(pin_root, netns_name)
        self.worker = WorkerState()
        self.worker_cmd = worker_cmd or [sys.executable, "-m", "reconciler"]
        self.status_dir = run_dir(pin_root)
        self._cgroup_error: str | None = None
        self._stop = False

    # ----- worker
    def _spawn(self, now: float) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [*self.worker_cmd, "--pin-root", str(self.pin_root), "datapath", "--worker",
               "--control-fd", str(child.fileno()), "--generation", str(self.worker.restarts),
               *(["--netns", self.netns] if self.netns else [])]
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),))
        child.close()
        self.worker.proc, self.worker.control, self.worker.started = proc, parent, now
        log.info("worker %d started%s", proc.pid,
                 f" (restart {self.worker.restarts})" if self.worker.restarts else "")
        self._send_listeners()

    def _send_listeners(self) -> None:
        w = self.worker
        if w.control is None:
            return
        slots = sorted(self.listeners.socks)
        cookies = [socket_cookie(self.listeners.socks[s]) for s in slots]
        msg = json.dumps({"slots": slots, "cookies": cookies}).encode()
        try:
            socket.send_fds(w.control, [msg], [self.listeners.socks[s].fileno() for s in slots])
        except OSError as exc:  # the worker is dying; the next one gets the set
            log.debug("sending listeners failed: %s", exc)

    def _reap(self, now: float) -> None:
        w = self.worker
        if w.proc is None or w.proc.poll() is None:
            return
        code = w.proc.returncode
        w.last_exit = f"signal {-code}" if code < 0 else f"exit {code}"
        lived = now - w.started
        w.quick_deaths = 0 if lived >= STABLE_AFTER else w.quick_deaths + 1
        delay = 0.0 if w.quick_deaths == 0 else min(
            BACKOFF_CAP, BACKOFF_FIRST * 2 ** (w.quick_deaths - 1))
        w.next_start = now + delay
        w.restarts += 1
        w.history = [*w.history, f"{time.strftime('%H:%M:%S')} {w.last_exit}"][-10:]
        log.warning("worker %d died (%s after %.1fs); restarting in %.1fs%s", w.proc.pid,
                    w.last_exit, lived, delay,
                    " - crash loop" if w.quick_deaths >= CRASH_LOOP else "")
        if w.control is not None:
            w.control.close()
        w.proc, w.control = None, None

    def status(self) -> dict[str, Any]:
        """Also called from the daemon's status thread: reads copies, tolerates a listener
        closed meanwhile."""
        w = self.worker
        proc = w.proc
        listeners = {}
        for slot, sock in list(self.listeners.socks.items()):
            with suppress(OSError):
                listeners[str(slot)] = sock.getsockname()[1]
        return {"pid": os.getpid(), "workerPid": proc.pid if proc else None,
                "restarts": w.restarts, "lastExit": w.last_exit,
                "crashLoop": w.quick_deaths >= CRASH_LOOP, "recentExits": list(w.history),
                "listeners": listeners}

    def _write_status(self) -> None:
        text = json.dumps(self.status())
        if text == self._written:
            return
        with suppress(OSError):
            self.status_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.status_dir / "supervisor.json~"
            tmp.write_text(text)
            tmp.replace(self.status_dir / "supervisor.json")
            self._written = text

    def _join_cgroup(self) -> bool:
        """Move into the data path's cgroup once a TransparentProxy is declared: its
        outbound connections are then never intercepted, and listeners made there get
        SO_ORIGINAL_DST answered. True when the listeners had to be made again."""
        try:
            if not transparent_declared(self.pin_root):
                return False
            want = datapath_cgroup(self.pin_root)
            if cgroups.current() == want:
                return False
            cgroups.move(os.getpid(), want)
            if self.worker.proc is not None:
                cgroups.move(self.worker.proc.pid, want)
        except (OSError, KernelStateError) as exc:
            if str(exc) != self._cgroup_error:  # once per distinct cause, not every tick
                log.warning("cannot move into the data path's cgroup (intercepted "
                            "connections cannot learn their destination): %s", exc)
                self._cgroup_error = str(exc)
            return False
        self._cgroup_error = None
        log.info("data path moved into cgroup %s (transparent proxies declared)", want)
        if not self.listeners.socks:
            return False
        self.listeners.reopen()
        return True

    # ----- main loop
    def tick(self, now: float) -> None:
        if now >= self.slots_due:
            self.slots_due = now + self.slots_every
            reopened = self._join_cgroup()
            try:
                slots = set(read_proxy_slots(self.pin_root))
            except OSError as exc:
                log.warning("reading %s failed: %s", st.PROXY.name, exc)
                slots = set(self.listeners.socks)
            if self.listeners.sync(slots) or reopened:
                self._send_listeners()
        self._reap(now)
        if self.worker.proc is None and now >= self.worker.next_start and not self._stop:
            self._spawn(now)
        self._write_status()

    def stop(self, *_: object) -> None:
        self._stop = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        if self.netns:
            netns.check(self.netns)
        log.info("data path supervisor started (pin root %s%s)", self.pin_root,
                 f", netns {self.netns}" if self.netns else "")
        try:
            while not self._stop:
                self.tick(time.monotonic())
                time.sleep(TICK)
        finally:
            self.shutdown()
        log.info("data path stopped; pinned maps, links and filters left in place")
        return 0

    def shutdown(self) -> None:
        """Stop the worker (it drains) and close the listeners; nothing pinned is touched."""
        w = self.worker
        if w.proc is not None and w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
            try:
                w.proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        if w.control is not None:
            w.control.close()
        self.listeners.close()
        with suppress(OSError):
            (self.status_dir / "supervisor.json").unlink()
        with suppress(OSError):
            self.status_dir.rmdir()  # only when the worker removed its report too
