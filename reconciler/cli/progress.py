"""Progress on a terminal: one line on stderr, rewritten in place, for a phase that has run
longer than SHOW_AFTER ("writing 300,000 entries: 120,000 (40%), 6 s"); erased when the
phase ends. Shown only when stderr is a terminal: piped output and logs get none."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from reconciler.core.progress import QUIET, Progress

SHOW_AFTER = 1.0  # seconds a phase runs before it is shown
EVERY = 0.2  # seconds between redraws


class TtyProgress(Progress):
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.what: str | None = None
        self.total: int | None = None
        self.done = 0
        self.started = 0.0
        self.shown = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self.thread.start()

    def phase(self, what: str, total: int | None = None) -> None:
        with self.lock:
            self._erase()
            self.what, self.total, self.done = what, total, 0
            self.started = time.monotonic()

    def advance(self, n: int) -> None:
        with self.lock:
            self.done += n

    def end(self) -> None:
        with self.lock:
            self._erase()
            self.what = None

    def close(self) -> None:
        self.end()
        self.stop.set()
        self.thread.join(1)

    def _erase(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False

    def _run(self) -> None:
        while not self.stop.wait(EVERY):
            with self.lock:
                if self.what is None:
                    continue
                elapsed = time.monotonic() - self.started
                if elapsed < SHOW_AFTER:
                    continue
                count = ""
                if self.total:
                    count = f": {self.done:,} ({100 * self.done // self.total}%)"
                self.stream.write(f"\r\x1b[K{self.what}{count}, {elapsed:.0f} s")
                self.stream.flush()
                self.shown = True


def progress_for(stream: TextIO = sys.stderr) -> Progress:
    """A terminal's progress when stream is one, else none."""
    return TtyProgress(stream) if stream.isatty() else QUIET


def close(progress: Progress) -> None:
    if isinstance(progress, TtyProgress):
        progress.close()
