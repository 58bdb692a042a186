"""The daemon's configuration, and its record of what the last reconciles found (read by the
status and metrics threads under the daemon's lock)."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler.core import drift
from reconciler.core.attachments import Condition
from reconciler.core.plan import PrunePolicy


@dataclass(frozen=True)
class DaemonConfig:
    directory: Path
    pin_root: Path
    resync: float = 60.0
    drift: str = drift.ENFORCE
    debounce: float = 0.1
    max_delay: float = 1.0
    prune: PrunePolicy = field(default_factory=PrunePolicy)
    allow_empty: bool = False
    datapath: bool = True
    datapath_netns: str | None = None
    metrics: str | None = None
    worker_cmd: list[str] | None = None
    pull: float | None = None  # seconds between fetches: follow the clone's upstream branch



@dataclass
class Record:
    """What the last reconciles found; read by the status and metrics threads under lock."""

    started: float = field(default_factory=time.time)
    last: dict[str, Any] | None = None
    last_applied: dict[str, Any] | None = None
    errors: list[str] = field(default_factory=list)
    error_refs: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    held: list[drift.Held] = field(default_factory=list)
    waiting: list[Condition] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # resources per kind, last good state
    results: Counter[str] = field(default_factory=Counter)
    triggers: Counter[str] = field(default_factory=Counter)  # finished reconciles by trigger
    reconciling: dict[str, Any] | None = None  # the reconcile running now: since, trigger
    operations: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    last_seconds: float = 0.0
    corrected_total: int = 0
    corrections: list[dict[str, Any]] = field(default_factory=list)
    maps: dict[str, int] = field(default_factory=dict)
    datapath_error: str | None = None
