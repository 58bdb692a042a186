"""Coalescing bursts of file events into one reconcile. Pure: time is passed in."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class Debouncer:
    """Due `quiet` seconds after the last event, but never later than `max_delay` after the
    first one, so that a steady trickle of saves cannot postpone a reconcile forever."""

    quiet: float = 0.1
    max_delay: float = 1.0
    _first: float | None = None
    _last: float = 0.0
    events: int = 0  # since the last take
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def poke(self, now: float) -> None:
        with self._lock:
            if self._first is None:
                self._first = now
            self._last = now
            self.events += 1

    def due(self) -> float | None:
        """Monotonic time at which a reconcile is due, None when nothing is pending."""
        with self._lock:
            if self._first is None:
                return None
            return min(self._last + self.quiet, self._first + self.max_delay)

    def take(self, now: float) -> int:
        """The number of events coalesced when due (and resets), 0 when not due yet."""
        due = self.due()
        if due is None or now < due:
            return 0
        with self._lock:
            events, self.events, self._first = self.events, 0, None
        return events
