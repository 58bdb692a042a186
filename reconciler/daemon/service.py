"""The daemon's main loop: one thread decides and acts; watchdog's thread and the status
thread only wake it (a byte in a pipe) or read its report.

Level-triggered: a reconcile reloads the whole directory (unchanged files come from the
parse cache) and reads the kernel fresh; file events, SIGHUP, a periodic resync and a retry
after a failure only say when. A reconcile that finds invalid input applies nothing and keeps
the last good state; the next valid save recovers.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import threading
import time
from contextlib import suppress
from typing import Any

from reconciler import engine
from reconciler.confirm.revert import PendingConfirmation
from reconciler.core import drift
from reconciler.core.desired import CompileMemo
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, Problem, Severity
from reconciler.core.plan import Plan
from reconciler.core.state import DesiredState
from reconciler.counters import read_stats
from reconciler.daemon import gitrev
from reconciler.daemon import report as status_report
from reconciler.daemon.debounce import Debouncer
from reconciler.daemon.gate import ApplyGate
from reconciler.daemon.gitpull import GitFollower
from reconciler.daemon.heartbeat import Heartbeat
from reconciler.daemon.keeper import DataPathKeeper
from reconciler.daemon.notify import Notifier
from reconciler.daemon.problemlog import log_new_errors
from reconciler.daemon.record import (
    DaemonConfig,
    Record,
    kind_counts,
    operation_counts,
    take_lock,
)
from reconciler.daemon.status import StatusServer
from reconciler.daemon.watch import DirectoryWatcher
from reconciler.datapath.supervisor import run_dir
from reconciler.load.directory import load_directory
from reconciler.load.filecache import FileCache
from reconciler.load.schema import Schemas

log = logging.getLogger("bpfsync.daemon")

SUPERVISE_EVERY = 0.25
RETRY_FIRST, RETRY_CAP = 1.0, 60.0
HELD_RECHECK = 2.0  # seconds between looks while a change awaits confirmation
# A revision read while git was changing the tree is looked at again this much later (a
# checkout writes the files first and moves HEAD last, which no file event reports).
REVISION_RECHECK = 1.0


class Daemon:
    def __init__(self, config: DaemonConfig, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.run_dir = run_dir(config.pin_root)
        self.cache = FileCache()
        self.memo = CompileMemo()
        self.schemas = Schemas()
        self.debouncer = Debouncer(config.debounce, config.max_delay)
        self.good: DesiredState | None = None  # last applied; also the baseline for drift
        self.record = Record()
        self.lock = threading.Lock()
        self.datapath = DataPathKeeper(config)
        self.gate = ApplyGate(config.confirm_within, config.pin_root, self._wake)
        self.retry_at: float | None = None
        self.revision_at: float | None = None  # when to read a provisional revision again
        self.applied_revision: gitrev.Revision | None = None  # recorded by the last apply
        self.git_wait = gitrev.GitWait()
        self.deferred: str | None = None  # the trigger of a reconcile put off while git works
        self.retry_delay = RETRY_FIRST
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stop = False
        self._hup = False
        self._logged_errors: frozenset[str] = frozenset()
        self._logged_held: frozenset[tuple[str, str]] = frozenset()
        self._lock_fd: int | None = None
        self._pulled = False
        self._paths: tuple[str, str] | None = None
        self.metrics_address: str | None = None
        # Pull mode applies commits, not files: the clone's work tree is not watched.
        self.git = (GitFollower(config.directory, self.run_dir / "git", config.pull,
                                self._on_commit) if config.pull else None)
        self.watcher = None if self.git else DirectoryWatcher(config.directory, self._on_files)

    # ----- wake-ups (other threads, signals)
    def _wake(self) -> None:
        with suppress(BlockingIOError):  # the pipe is full: a wake-up is pending anyway
            os.write(self._wake_w, b"x")

    def _on_files(self) -> None:
        self.debouncer.poke(time.monotonic())
        self._wake()

    def _on_commit(self) -> None:
        self._pulled = True
        self._wake()

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._stop = True

    # ----- life cycle
    def run(self) -> int:
        self._lock_fd = take_lock(self.run_dir, self.config.pin_root)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        status = StatusServer(self.run_dir, self.report, self.gate.command)
        status.start()
        if self.config.metrics:
            from reconciler.daemon import metrics

            self.metrics_address = metrics.serve(self.config.metrics, self.report,
                                                 lambda: read_stats(self.config.pin_root),
                                                 self.record.durations)
        if self.git is not None:
            self.git.start()
            log.info("following %s of %s, directory %s (fetch every %gs, pin root %s)",
                     self.git.upstream, self.git.top, self.git.subdir, self.git.interval,
                     self.config.pin_root)
        if self.watcher is not None:
            self.watcher.start()
            log.info("watching %s (pin root %s, resync every %gs, drift %s)",
                     self.config.directory, self.config.pin_root, self.config.resync,
                     self.config.drift)
        try:
            self.notifier.send(STATUS=f"starting: loading {self.config.directory}")
            started = time.monotonic()
            self.reconcile("startup")
            self.notifier.send(READY="1", STATUS=self.summary())
            status_report.log_ready(self, time.monotonic() - started)
            self._loop()
        finally:
            self.notifier.send(STOPPING="1")
            if self.watcher is not None:
                self.watcher.stop()
            if self.git is not None:
                self.git.stop()
            self.datapath.shutdown()
            status.stop()
            signal.set_wakeup_fd(-1)
            log.info("stopped; pinned maps, programs, links and filters left in place")
        return 0

    def _loop(self) -> None:
        cfg = self.config
        now = time.monotonic()
        next_resync = now + cfg.resync
        next_supervise = now
        watchdog = self.notifier.watchdog_interval
        next_watchdog = now if watchdog else None
        while not self._stop:
            deadlines = [next_resync, next_supervise, self.retry_at, self.debouncer.due(),
                         next_watchdog, self.revision_at]
            timeout = max(0.0, min(d for d in deadlines if d is not None) - time.monotonic())
            select.select([self._wake_r], [], [], timeout)
            with suppress(BlockingIOError):
                while os.read(self._wake_r, 512):
                    pass
            if self._stop:
                break
            now = time.monotonic()
            trigger = None
            if self._hup:
                self._hup, trigger = False, "SIGHUP"
                if self.git is not None:
                    self.git.pull_now()
            if self._pulled and trigger is None:
                self._pulled, trigger = False, "commit"
            with self.lock:  # status never sees the events taken but the reconcile not begun
                events = self.debouncer.take(now)
                if events:
                    self.record.reconciling = {"since": time.time(), "trigger": "files"}
            if events and trigger is None:
                trigger = "files"
            if trigger is None and self.gate.take_request():
                trigger = "request"
            if trigger is None and now >= next_resync:
                trigger = "resync"
            if trigger is None and self.retry_at is not None and now >= self.retry_at:
                trigger = "retry"
            if trigger is None and self.revision_at is not None and now >= self.revision_at:
                trigger = self.deferred or "revision"
            if trigger is not None:
                self.gate.changed(trigger)
                self.reconcile(trigger, events)
                next_resync = time.monotonic() + cfg.resync
                self.notifier.send(STATUS=self.summary())
                self.datapath.proxies_changed()
            if now >= next_supervise:
                self._supervise(now)
                next_supervise = now + SUPERVISE_EVERY
            if next_watchdog is not None and watchdog is not None and now >= next_watchdog:
                self.notifier.send(WATCHDOG="1")
                next_watchdog = now + watchdog

    # ----- reconciling
    def reconcile(self, trigger: str, events: int = 0) -> None:
        if self.git is None and self.git_wait.busy(self.config.directory):
            self.revision_at = time.monotonic() + gitrev.GIT_BUSY_EVERY
            self.deferred = self.deferred or trigger  # half a checkout is no state: try later
            with self.lock:
                self.record.reconciling = None
            return
        self.deferred = None
        self.revision_at = None  # this reconcile reads the revision; it may ask again below
        started = time.monotonic()
        with self.lock:
            self.record.reconciling = {"since": time.time(), "trigger": trigger}
        cfg = self.config
        directory = cfg.directory
        if self.git is not None:
            try:
                commit, directory = self.git.checkout()
            except BpfsyncError as exc:
                self._failed(str(exc), {"trigger": trigger}, started)
                return
            revision: gitrev.Revision | None = gitrev.Revision(commit, dirty=False)
            # problems name files as `git show` does (commit:path), not by the export's path
            self._paths = (f"{self.git.tree}/", f"{commit[:12]}:")
        else:
            revision = gitrev.revision(directory) if directory.is_dir() else None
        fields: dict[str, Any] = {"trigger": trigger, "events": events or None,
                                  "revision": str(revision) if revision else None}
        try:  # what the directory may declare is bounded by the pin root's table sizes
            with Heartbeat(self.notifier, starting=self.record.last is None):
                state = load_directory(directory, self.schemas, self.cache,
                                       capacities=engine.capacities(cfg.pin_root, cfg.capacity))
        except InvalidDesiredState as exc:
            self._alive()
            self._invalid(exc.problems, fields, started)
            return
        except (BpfsyncError, OSError) as exc:  # the table sizes could not be read
            return self._failed(str(exc), fields, started)
        self._alive()  # a cold load of 100k entries takes seconds: tell systemd we progress
        fields["parsed"] = self.cache.last.parsed
        if self.git is None:
            revision, again = gitrev.after_load(directory, revision, self.applied_revision)
            if again:
                self.revision_at = time.monotonic() + REVISION_RECHECK
            fields["revision"] = str(revision) if revision else None
        state.revision = revision.full if revision else None
        holder: dict[str, drift.Split] = {}

        def select_plan(plan: Plan) -> Plan:
            holder["split"] = drift.split(plan, state, self.good, cfg.drift)
            return self.gate.select(holder["split"])

        try:
            with Heartbeat(self.notifier, starting=self.record.last is None):
                result = engine.apply_state(state, cfg.pin_root, cfg.prune, cfg.allow_empty,
                                            select_plan, where=str(directory), memo=self.memo,
                                            confirm=self.gate.confirm(state),
                                            by="daemon", capacity=cfg.capacity)
            self.gate.started(result.pending)
        except PendingConfirmation as exc:
            self.gate.adopt()
            self._held_off(str(exc), fields, started)
            return
        except (BpfsyncError, OSError) as exc:
            self._failed(str(exc), fields, started)
            return
        except Exception as exc:  # a bug must not stop the daemon; report and retry
            log.exception("reconcile failed unexpectedly")
            self._failed(f"internal error: {type(exc).__name__}: {exc}", fields, started)
            return
        self._applied(state, result, holder["split"], revision, fields, started)

    def _shown_text(self, text: str) -> str:
        return text.replace(*self._paths) if self._paths else text

    def _alive(self) -> None:
        if self.notifier.watchdog_interval is not None:
            self.notifier.send(WATCHDOG="1")

    def _finish(self, result: str, fields: dict[str, Any], started: float,
                level: int = logging.INFO) -> dict[str, Any]:
        seconds = time.monotonic() - started
        fields = {"result": result, **fields, "durationMs": round(seconds * 1000, 1)}
        last = {"time": time.time(), "trigger": fields["trigger"], "result": result,
                "durationMs": fields["durationMs"], "revision": fields.get("revision")}
        with self.lock:
            r = self.record
            r.last = last
            r.reconciling = None
            r.results[result] += 1
            r.triggers[fields["trigger"]] += 1
            r.seconds += seconds
            r.last_seconds = seconds
            r.durations.labels(fields["trigger"]).observe(seconds)
        log.log(level, "reconcile",
                extra={"fields": {k: v for k, v in fields.items() if v is not None}})
        return last

    def _invalid(self, problems: list[Problem], fields: dict[str, Any], started: float) -> None:
        errors, new = log_new_errors(problems, self._shown_text, self._logged_errors,
                                     self.config.directory)
        self._logged_errors = frozenset(errors)
        fields["errors"] = len(errors)
        with self.lock:
            self.record.errors = errors
            self.record.error_refs = {p.resource for p in problems
                                      if p.resource and p.severity is Severity.ERROR}
        self._finish("invalid", fields, started,
                     logging.WARNING if new else logging.DEBUG)

    def _failed(self, message: str, fields: dict[str, Any], started: float) -> None:
        self.revision_at = None  # the retry reads the revision again, at the retry's pace
        self.retry_at = time.monotonic() + self.retry_delay
        fields["retryInSeconds"] = self.retry_delay
        self.retry_delay = min(RETRY_CAP, self.retry_delay * 2)
        log.error("apply failed: %s", message)
        with self.lock:
            self.record.errors = [message]
            self.record.error_refs, self.record.held_off = set(), None
        self._finish("failed", fields, started, logging.ERROR)

    def _held_off(self, message: str, fields: dict[str, Any], started: float) -> None:
        """An `apply --confirm-within` awaits confirmation: applying over it would undo what
        it tests, so the daemon looks again shortly (and reverts it itself once it is due)."""
        self.retry_at = time.monotonic() + HELD_RECHECK
        with self.lock:
            new, self.record.held_off = self.record.held_off != message, message
        self._finish("held", fields, started, logging.WARNING if new else logging.DEBUG)

    def _applied(self, state: DesiredState, result: engine.Result, split: drift.Split,
                 revision: gitrev.Revision | None, fields: dict[str, Any],
                 started: float) -> None:
        self.retry_at, self.retry_delay = None, RETRY_FIRST
        if self._logged_errors:
            log.info("desired state valid again")
        self._logged_errors = frozenset()
        plan = result.plan
        ops = operation_counts(plan)
        corrected = sum(split.corrected.values())
        fields.update({k: v for k, v in ops.items()})
        fields["driftCorrected"] = corrected or None
        fields["drift_held"] = len(split.held) or None
        held_now = frozenset((h.owner, h.what) for h in split.held)
        for h in split.held:
            if (h.owner, h.what) not in self._logged_held:
                log.warning("drift not corrected (policy %s): %s: %s", h.policy, h.owner, h.what,
                            extra={"fields": {"resource": h.owner, "policy": h.policy}})
        for owner, n in split.corrected.items():
            log.warning("drift corrected: %s (%d operation%s)", owner, n, "" if n == 1 else "s",
                        extra={"fields": {"resource": owner, "operations": n}})
        self._logged_held = held_now
        if self.gate.suspended is None:  # edits made while suspended stay changes
            self.good = state
        # The desired state lives until the next change: taking its (100k+) objects out of
        # the cyclic collector's sight keeps full collections from costing 100s of ms in
        # every later reconcile. Reference counting still frees them.
        gc.freeze()
        changed = not plan.in_sync
        with self.lock:
            self.record.applied(plan, split, ops, kind_counts(state),
                                [self._shown_text(str(w)) for w in state.warnings])
        last = self._finish("suspended" if self.gate.suspended else "applied" if changed
                            else "in-sync", fields, started,
                            logging.INFO if changed or split.held else logging.DEBUG)
        with self.lock:
            self.record.last_applied = {**last, "revision": (
                {"commit": revision.commit, "dirty": revision.dirty} if revision else None)}
        self.applied_revision = revision
        if self.git is not None and revision is not None:
            self.git.applied(revision.commit)

    # ----- the data path
    def _supervise(self, now: float) -> None:
        self.gate.tick()
        if not self.config.datapath or self.good is None:
            return
        error = self.datapath.tick(now, self.good)
        with self.lock:
            if error and error != self.record.datapath_error:
                log.error("data path: %s", error)
            self.record.datapath_error = error

    # ----- reporting
    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        return status_report.summary(self)

    def report(self) -> dict[str, Any]:
        """The status document (`bpfsync status -o json`). Built in the caller's thread."""
        return status_report.status_document(self)
