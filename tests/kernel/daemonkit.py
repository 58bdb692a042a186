"""Running `bpfsync run` as a real child process in tests, and asking it for its status."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler.daemon import status as daemon_status
from reconciler.datapath.supervisor import run_dir
from tests.kernel import owned


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(check: Callable[[], Any], seconds: float = 60, every: float = 0.05) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {seconds}s")


class RunningDaemon:
    """One `bpfsync run DIR` with its own pin root; its log goes to a file (never a full pipe)."""

    def __init__(self, directory: Path, pin_root: Path, log: Path, *args: str,
                 env: dict[str, str] | None = None) -> None:
        self.directory, self.pin_root, self.log_path = directory, pin_root, log
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, counter: Any = None, wait: bool = True) -> RunningDaemon:
        cmd = [sys.executable, "-m", "reconciler", "--pin-root", str(self.pin_root), "run",
               str(self.directory), *self.args]
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        # A session of its own: its data-path worker inherits the process group, so cleanup
        # can end exactly this daemon's processes, orphaned worker included.
        if counter is None:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=out,
                                         start_new_session=True)
        else:  # the child waits for a byte before exec'ing (same pid): counted from the start
            gate = f"import os, sys; sys.stdin.buffer.read(1); os.execv(sys.executable, {cmd!r})"
            self.proc = subprocess.Popen([sys.executable, "-c", gate], env=self.env,
                                         stdin=subprocess.PIPE, stdout=out, stderr=out,
                                         start_new_session=True)
            counter.watch(self.proc.pid)
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"x")
            self.proc.stdin.close()
        out.close()
        if wait:
            wait_for(lambda: self.try_status() and self.try_status()["lastReconcile"], 120)
        return self

    def try_status(self) -> dict[str, Any] | None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
        try:
            return daemon_status.query(run_dir(self.pin_root))
        except (daemon_status.DaemonNotRunning, OSError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        doc = self.try_status()
        assert doc is not None, self.log()
        return doc

    def reconciles(self) -> int:
        return sum(self.status()["metrics"]["reconciles"].values())

    def wait_reconciles(self, more_than: int, seconds: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (s := self.status()) and sum(
            s["metrics"]["reconciles"].values()) > more_than and s, seconds)

    def wait_reconciles_by(self, trigger: str, more_than: int, seconds: float = 60
                           ) -> dict[str, Any]:
        """Status once more than `more_than` reconciles with this trigger have finished."""
        return wait_for(lambda: (s := self.status()) and s["metrics"]["byTrigger"].get(
            trigger, 0) > more_than and s, seconds)

    def by_trigger(self, trigger: str) -> int:
        return self.status()["metrics"]["byTrigger"].get(trigger, 0)

    def wait_event(self, path: str, event: str, seconds: float = 60) -> dict[str, Any]:
        """Status once the watcher's last file event is `event` on `path` (relative to the
        directory): the daemon has seen it and decided whether it counts."""
        return wait_for(lambda: (s := self.status()) and (s["watch"]["lastEvent"] or {}).get(
            "path") == path and s["watch"]["lastEvent"]["event"] == event and s, seconds)

    def events(self) -> int:
        """File events that counted so far (take it before writing, give it to settled())."""
        return self.status()["watch"]["relevant"]

    def settled(self, events_before: int, seconds: float = 60) -> dict[str, Any]:
        """Status once a write made after events() was seen and everything it started has
        finished: a reconcile that merely ran meanwhile (a resync reading the directory
        before the write) does not count."""
        return wait_for(lambda: (s := self.status()) and s["watch"]["relevant"] > events_before
                        and s["reconciling"] is None and not s["watch"]["pending"] and s, seconds)

    def quiet(self, seconds: float = 60) -> dict[str, Any]:
        """Status once nothing is pending: no reconcile running, no file event waiting."""
        return wait_for(lambda: (s := self.status()) and s["reconciling"] is None
                        and not s.get("watch", {}).get("pending") and s, seconds)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def cleanup(self) -> None:
        """End this daemon and its data path (their process group: an orphaned worker of a
        killed daemon too), never anything else; remove its run directory."""
        if self.proc is not None:
            owned.kill_process_group(self.proc.pid)
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        shutil.rmtree(run_dir(self.pin_root), ignore_errors=True)
