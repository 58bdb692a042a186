"""Counters as `get stats` and the daemon's /metrics read them: GUE's totals and port
steering's per-slot counts, from the pinned maps (opened for the call, never created)."""

from __future__ import annotations

from pathlib import Path

from reconciler.engine import read_pinned
from reconciler.gue.counters import gue_counters
from reconciler.steering.counters import steering_counters


def read_stats(pin_root: Path) -> dict[str, int]:
    return read_pinned(pin_root, gue_counters)


def read_steer_stats(pin_root: Path) -> dict[int, dict[str, int]]:
    return read_pinned(pin_root, steering_counters)
