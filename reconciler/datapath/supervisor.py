"""`bpfsync datapath`: the supervisor of the data-path workers, and holder of their listeners.

The proxies' listening sockets belong to this process, not to the workers that accept on
them: they are created here (one per Proxy slot found in the pinned ps_proxy table),
registered in the ps_sockets SOCKMAP (the sk_lookup program hands connections to them), and
passed to every worker over a unix socket (SCM_RIGHTS). Workers (one per CPU by default)
accept from the same listen queue: whichever is free takes the next connection, and a dead
worker's share is never left waiting. When every worker is down, connections keep
completing their handshake into the listen queue and the next worker accepts them: no
connection is refused across a restart. Each worker is restarted with exponential backoff;
one that keeps dying quickly is reported as a crash loop. Workers share maxConnections and
the round-robin turn through a small table in the run directory (shared.py).

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
from reconciler.datapath import shared
from reconciler.datapath.listeners import Listeners, socket_cookie
from reconciler.kernel import cgroups, libbpf, netns
from reconciler.kernel.maps import read_pin
from reconciler.steering import tables as st
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import datapath_cgroup

log = logging.getLogger("bpfsync.supervisor")

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


def report_path(pin_root: Path, worker: int) -> Path:
    """Where worker number `worker` writes its report every 0.25 s."""
    return run_dir(pin_root) / f"datapath-{worker}.json"


def default_workers() -> int:
    """One worker per CPU this process may run on (at most shared.MAX_WORKERS)."""
    return max(1, min(shared.MAX_WORKERS, len(os.sched_getaffinity(0))))


def read_datapath_status(pin_root: Path) -> dict[str, Any] | None:
    """The running workers' last reports (each written every 0.25 s) as one: counters
    summed, per worker under "workers". A stale report (a worker killed before it could
    remove it) is left out; None when none is fresh (no worker runs)."""
    from reconciler.datapath.reports import merge

    docs = []
    for path in sorted(run_dir(pin_root).glob("datapath-*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict) and time.time() - doc.get("time", 0) < STATUS_FRESH:
            docs.append(doc)
    return merge(docs) if docs else None


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


@dataclass
class WorkerState:
    index: int = 0
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
                 worker_cmd: list[str] | None = None, slots_every: float = TICK,
                 workers: int | None = None) -> None:
        self.pin_root = pin_root
        self.slots_every = slots_every  # how often ps_proxy is read for new or removed slots
        self.slots_due = 0.0  # set to 0 to read it at the next tick
        self._written = ""
        self.netns = netns_name
        self.listeners = Listeners(pin_root, netns_name)
        self.workers = [WorkerState(i) for i in range(workers or default_workers())]
        self.shared_path = run_dir(pin_root) / "shared"
        self.shared: shared.Shared | None = None
        self.worker_cmd = worker_cmd or [sys.executable, "-m", "reconciler"]
        self.status_dir = run_dir(pin_root)
        self._cgroup_error: str | None = None
        self._stop = False

    @property
    def worker(self) -> WorkerState:
        """The first worker (the one that pings)."""
        return self.workers[0]

    # ----- workers
    def _open_shared(self) -> shared.Shared:
        if self.shared is None:
            self.status_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            shared.create(self.shared_path)
            self.shared = shared.Shared(self.shared_path, 0, len(self.workers))
        return self.shared

    def _spawn(self, w: WorkerState, now: float) -> None:
        self._open_shared().forget_worker(w.index)  # a dead worker's connections died with it
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd = [*self.worker_cmd, "--pin-root", str(self.pin_root), "datapath", "--worker",
               "--control-fd", str(child.fileno()), "--generation", str(w.restarts),
               "--worker-index", str(w.index), "--workers", str(len(self.workers)),
               "--shared", str(self.shared_path),
               *(["--netns", self.netns] if self.netns else [])]
        proc = subprocess.Popen(cmd, pass_fds=(child.fileno(),))
        child.close()
        w.proc, w.control, w.started = proc, parent, now
        log.info("worker %d (%d of %d) started%s", proc.pid, w.index + 1, len(self.workers),
                 f" (restart {w.restarts})" if w.restarts else "")
        self._send_listeners(w)

    def _send_listeners(self, w: WorkerState) -> None:
        """Every slot's listeners (IPv4 first; counts says how many each), named by the IPv4
        one's cookie: the worker keeps a slot's pair when the cookie is the one it has."""
        if w.control is None:
            return
        slots = sorted(self.listeners.socks)
        socks = [self.listeners.of(s) for s in slots]
        msg = json.dumps({"slots": slots, "cookies": [socket_cookie(x[0]) for x in socks],
                          "counts": [len(x) for x in socks]}).encode()
        try:
            socket.send_fds(w.control, [msg], [s.fileno() for x in socks for s in x])
        except OSError as exc:  # the worker is dying; the next one gets the set
            log.debug("sending listeners failed: %s", exc)

    def _reap(self, w: WorkerState, now: float) -> None:
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
        closed meanwhile. Top-level restarts and exits are all workers'; workerPid is the
        first worker's."""
        def ports(socks: dict[int, socket.socket]) -> dict[str, int]:
            out = {}
            for slot, sock in list(socks.items()):
                with suppress(OSError):
                    out[str(slot)] = sock.getsockname()[1]
            return out

        workers = [{"worker": w.index, "pid": w.proc.pid if w.proc else None,
                    "restarts": w.restarts, "lastExit": w.last_exit,
                    "crashLoop": w.quick_deaths >= CRASH_LOOP} for w in self.workers]
        last = max(self.workers, key=lambda w: w.history[-1] if w.history else "")
        recent = sorted(x for w in self.workers for x in w.history)[-10:]
        return {"pid": os.getpid(), "workerPid": workers[0]["pid"],
                "workerPids": [w["pid"] for w in workers],
                "restarts": sum(w.restarts for w in self.workers), "lastExit": last.last_exit,
                "crashLoop": any(w["crashLoop"] for w in workers), "recentExits": recent,
                "workers": workers, "listeners": ports(self.listeners.socks),
                "listeners6": ports(self.listeners.socks6)}

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
            for w in self.workers:
                if w.proc is not None:
                    cgroups.move(w.proc.pid, want)
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
                for w in self.workers:
                    self._send_listeners(w)
        for w in self.workers:
            self._reap(w, now)
            if w.proc is None and now >= w.next_start and not self._stop:
                self._spawn(w, now)
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
        """Stop the workers (they drain, together) and close the listeners; nothing pinned
        is touched."""
        running = [w for w in self.workers if w.proc is not None and w.proc.poll() is None]
        for w in running:
            assert w.proc is not None
            w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for w in running:
            assert w.proc is not None
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        for w in self.workers:
            if w.control is not None:
                w.control.close()
        self.listeners.close()
        if self.shared is not None:
            self.shared.close()
            self.shared = None
        with suppress(OSError):
            self.shared_path.unlink()
        with suppress(OSError):
            (self.status_dir / "supervisor.json").unlink()
        with suppress(OSError):
            self.status_dir.rmdir()  # only when the worker removed its report too
