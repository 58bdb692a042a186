"""Telling systemd a long reconcile is alive, for a bounded time.

The main loop pings the watchdog between reconciles; a cold load of a large directory can
take longer than WatchdogSec (and, before READY, than TimeoutStartSec). While a reconcile
runs, a thread keeps sending WATCHDOG=1 and — until the daemon is ready — EXTEND_TIMEOUT_USEC,
but only for MAX_RECONCILE_SECONDS: a reconcile that runs longer is taken as hung, the pings
stop, and systemd restarts the daemon.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from reconciler.daemon.notify import Notifier

MAX_RECONCILE_SECONDS = 600.0
START_EVERY = 10.0  # seconds between EXTEND_TIMEOUT_USEC messages without a watchdog


class Heartbeat:
    """with Heartbeat(notifier, starting=True): ... — pings while the block runs."""

    def __init__(self, notifier: Notifier, starting: bool,
                 limit: float = MAX_RECONCILE_SECONDS) -> None:
        self.notifier = notifier
        self.starting = starting
        self.limit = limit
        self.every = notifier.watchdog_interval or START_EVERY
        self.sent = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        wanted = self.notifier.watchdog_interval is not None or self.starting
        if self.notifier.address is not None and wanted:
            self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        began = time.monotonic()
        deadline = began + self.limit
        while not self._done.wait(self.every) and time.monotonic() < deadline:
            fields = {}
            if self.notifier.watchdog_interval is not None:
                fields["WATCHDOG"] = "1"
            if self.starting:  # ask for three more intervals of start-up time, and say why
                fields["EXTEND_TIMEOUT_USEC"] = str(int(3 * self.every * 1e6))
                fields["STATUS"] = (f"starting: first reconcile running for "
                                    f"{time.monotonic() - began:.0f} s")
            self.notifier.send(**fields)
            self.sent += 1

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
