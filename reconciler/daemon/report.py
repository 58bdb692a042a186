"""The daemon's status document (`bpfsync status -o json`, the status socket, metrics) and
its one-line summary for systemd. Each data path adds its sections (Capability.status)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from reconciler import engine
from reconciler.core import drift, registry
from reconciler.core.capability import StatusContext
from reconciler.daemon.gate import SUSPENDED
from reconciler.datapath.supervisor import read_datapath_status
from reconciler.steering.checks import descriptors_needed
from reconciler.steering.model import Proxy
from reconciler.version import version

if TYPE_CHECKING:
    from reconciler.daemon.service import Daemon

log = logging.getLogger("bpfsync.daemon")
MAX_LISTED = 100  # out-of-sync entries listed in status
MAX_STATUS_ERRORS = 1000


def summary(d: Daemon) -> str:
    """One line for systemd's STATUS=."""
    with d.lock:
        r = d.record
        if r.errors:
            return f"{r.last['result'] if r.last else 'error'}: {len(r.errors)} errors"
        if r.held_off:
            return "held: a change awaits confirmation"
        if d.gate.suspended is not None:
            return "suspended: reporting, not applying"
        if r.last_applied:
            rev = r.last_applied.get("revision")
            at = f" at {rev['commit'][:12]}" if rev else ""
            return (f"in sync{at}: " + ", ".join(f"{n} {k.lower()}s"
                                                 for k, n in r.counts.items() if n))
        return "starting"



def log_ready(d: Daemon, seconds: float) -> None:
    """The INFO line of a finished first reconcile: the sync state, resources, how long."""
    with d.lock:
        resources = sum(d.record.counts.values())
    log.info("ready: %s (%d resources, first reconcile %.1f s)", summary(d), resources,
             seconds, extra={"fields": {"resources": resources,
                                        "durationMs": round(seconds * 1000, 1)}})


def status_document(d: Daemon) -> dict[str, Any]:
    """The status document (`bpfsync status -o json`). Built in the caller's thread."""
    with d.lock:
        r = d.record
        held = list(r.held)
        doc: dict[str, Any] = {
            "daemon": {"pid": os.getpid(), "version": version(),
                       "directory": str(d.config.directory),
                       "pinRoot": str(d.config.pin_root), "startedAt": r.started,
                       "resyncSeconds": d.config.resync, "drift": d.config.drift,
                       "metrics": d.metrics_address},
            "reconciling": dict(r.reconciling) if r.reconciling else None,
            "lastReconcile": r.last, "lastApplied": r.last_applied,
            "errors": r.errors[:MAX_STATUS_ERRORS], "errorCount": len(r.errors),
            "heldOff": r.held_off,
            "warnings": list(r.warnings),
            "waiting": list(r.waiting),
            "drift": {"correctedOperations": r.corrected_total,
                      "correctedByKind": dict(r.corrected_by_kind),
                      "recentCorrections": list(r.corrections),
                      "pending": sum(1 for h in held if h.policy in (drift.WARN, SUSPENDED))},
            "metrics": {"reconciles": dict(r.results), "byTrigger": dict(r.triggers),
                        "operations": dict(r.operations),
                        "reconcileSeconds": r.seconds, "lastReconcileSeconds": r.last_seconds},
            "maps": {name: {"entries": n, "capacity": r.capacities.get(
                name, registry.BY_NAME[name].max_entries)} for name, n in r.maps.items()},
        }
        if d.watcher is not None:
            doc["watch"] = {**d.watcher.counts(),
                            # file events waiting, or a revision to read again
                            "pending": d.debouncer.due() is not None
                            or d.revision_at is not None}
        counts, error_refs, waiting, dp_error = (dict(r.counts), set(r.error_refs),
                                                 list(r.waiting), r.datapath_error)
    out_of_sync: dict[str, list[str]] = {}
    for h in held:
        if h.policy in (drift.WARN, SUSPENDED):
            why = "drift" if h.policy == drift.WARN else "not applied (suspended)"
            out_of_sync.setdefault(h.owner, []).append(f"{why}: {h.what}")
    for w in waiting:
        out_of_sync.setdefault(w.owner, []).append(w.message)
    resources: dict[str, dict[str, int]] = {}
    for kind, n in counts.items():
        bad = sum(1 for ref in out_of_sync if ref.startswith(kind + "/"))
        err = sum(1 for ref in error_refs if ref.startswith(kind + "/"))
        if n or err:
            resources[kind] = {"Synced": max(0, n - bad - err), "OutOfSync": bad,
                               "Error": err}
    doc["resources"] = resources
    doc["outOfSync"] = [{"resource": ref, "reasons": why}
                        for ref, why in sorted(out_of_sync.items())][:MAX_LISTED]
    doc["errorResources"] = sorted(error_refs)[:MAX_LISTED]
    worker_report = read_datapath_status(d.config.pin_root) or {}
    doc["dataPath"] = _datapath_report(d, dp_error, worker_report)
    context = StatusContext(d.good, d.config.pin_root, worker_report,
                            lambda reader: engine.read_pinned(d.config.pin_root, reader))
    for capability in registry.CAPABILITIES:
        if capability.status is not None:
            doc.update(capability.status(context))
    if d.git is not None:
        doc["git"] = d.git.report()
    doc.update(d.gate.report())
    return doc



def _datapath_report(d: Daemon, error: str | None,
                     worker_report: dict[str, Any]) -> dict[str, Any]:
    if not d.config.datapath:
        return {"state": "disabled"}
    sup = d.datapath.supervisor
    if sup is None:
        return {"state": "not started", "error": error}
    s = sup.status()
    alive = [pid for pid in s["workerPids"] if pid]
    # serving while any worker accepts; every worker shares the listen queue
    state = ("running" if alive else "crashLoop" if s["crashLoop"] else "restarting")
    report = {"state": state, "netns": sup.netns, **s, "error": error}
    if worker_report:
        report["pingsSent"] = worker_report.get("pingsSent", 0)
        # the others stand by until those are busy (datapath/standby.py)
        report["workersAccepting"] = sum(1 for w in worker_report.get("workers", [])
                                         if w.get("accepting", True))
        fds = worker_report.get("descriptors")
        if fds:
            proxies = d.good.of(Proxy).values() if d.good else ()
            need = descriptors_needed(proxies)
            report["descriptors"] = {**fds, "needed": need}
            if fds.get("limit") and need > fds["limit"]:
                report["descriptors"]["warning"] = (
                    f"the Proxies' maxConnections need up to {need:,} file descriptors "
                    f"(two per connection); the data path may hold {fds['limit']:,}: raise "
                    f"LimitNOFILE or lower maxConnections")
    return report

