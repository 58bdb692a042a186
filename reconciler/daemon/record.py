"""The daemon's configuration, and its record of what the last reconciles found (read by the
status and metrics threads under the daemon's lock)."""

from __future__ import annotations

import fcntl
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Histogram

from reconciler.core import drift, registry
from reconciler.core.attachments import Condition
from reconciler.core.errors import BpfsyncError
from reconciler.core.plan import Plan, PrunePolicy
from reconciler.core.state import DesiredState
from reconciler.daemon.metrics import reconcile_histogram

RECENT = 20  # drift corrections kept in the status


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
    confirm_within: float | None = None  # changes revert unless confirmed this soon
    datapath_workers: int | None = None  # None: one per CPU
    capacity: dict[str, int] = field(default_factory=dict)  # --capacity: a new pin root's sizes



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
    corrected_by_kind: Counter[str] = field(default_factory=Counter)
    durations: Histogram = field(default_factory=reconcile_histogram)  # by trigger
    corrections: list[dict[str, Any]] = field(default_factory=list)
    maps: dict[str, int] = field(default_factory=dict)
    capacities: dict[str, int] = field(default_factory=dict)  # of the maps, the pin root's
    datapath_error: str | None = None
    held_off: str | None = None  # why reconciling waits: a change awaits confirmation

    def applied(self, plan: Plan, split: drift.Split, ops: dict[str, int],
                counts: dict[str, int], warnings: list[str]) -> None:
        """A reconcile that applied plan (split: what the drift policy held or corrected)."""
        self.errors, self.error_refs, self.held_off = [], set(), None
        self.warnings = warnings + plan.attachments.warnings + plan.attachments.conflicts
        self.held = split.held
        self.waiting = plan.attachments.waiting
        self.counts = counts
        self.operations.update(ops)
        self.corrected_total += sum(split.corrected.values())
        for owner, n in split.corrected.items():
            self.corrected_by_kind[owner.partition("/")[0]] += n
        if split.corrected:
            self.corrections = [*self.corrections, {"time": time.time(), "resources": dict(
                split.corrected)}][-RECENT:]
        self.maps = plan.counts_after()
        self.capacities = plan.capacities


class AlreadyRunning(BpfsyncError):
    pass


def take_lock(run_dir: Path, pin_root: Path) -> int:
    """The daemon's lock on its run directory (one `bpfsync run` per pin root); its fd."""
    run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(run_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(f"another `bpfsync run` manages pin root {pin_root}"
                             f" (lock {run_dir / 'daemon.lock'})") from None
    return fd


def daemon_running(run_dir: Path) -> bool:
    """A `bpfsync run` holds the lock take_lock takes (probed without creating anything)."""
    try:
        fd = os.open(run_dir / "daemon.lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def kind_counts(state: DesiredState) -> dict[str, int]:
    return {kind: state.count(kind) for kind in registry.KINDS}


def operation_counts(plan: Plan) -> Counter[str]:
    """Entry and attachment changes of a plan, by action."""
    return Counter(change.action.value for change in plan.changes())
