"""What the daemon may apply, and the verbs that change it (over the status socket):

- `bpfsync suspend` / `resume`: while suspended, reconciles still run and report every
  change and every drift (held, policy "suspended"), but nothing is applied and the
  baseline stays where it was, so edits made meanwhile are still changes after `resume`.
- `bpfsync reconcile`: reconcile now (trigger "request").
- `--confirm-within SECONDS` (or a resource's `bpfsync.dev/confirm-within` annotation):
  every reconcile that applies a change from the files or a commit (drift corrections
  alone restore a confirmed state and need none) waits for `bpfsync confirm`, and is
  reverted exactly when none comes in time — by the daemon, or,
  should it die, by the guard it started (confirm/guard.py) or its next start. A reverted
  change is *rejected*: its entries (table, key, bytes) are held back from later reconciles
  — which would otherwise apply the same YAML again at once, the revert looking like
  drift — until the YAML asks for something else or the daemon restarts.

The verbs come from the status thread: they set flags the main loop reads (and wake it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reconciler import engine
from reconciler.confirm import guard, store
from reconciler.confirm.record import CONFIRMED, REVERTED, Pending
from reconciler.confirm.revert import applier_reverts, due, run_directory
from reconciler.core import drift
from reconciler.core.attachments import AttachPlan
from reconciler.core.errors import KernelStateError
from reconciler.core.plan import Operation, Plan
from reconciler.core.state import DesiredState

log = logging.getLogger("bpfsync.daemon")


SUSPENDED = "suspended"  # the policy of what a suspended daemon holds


@dataclass
class ApplyGate:
    within: float | None
    pin_root: Path
    wake: Callable[[], None] = lambda: None
    suspended: float | None = None  # since when (time.time())
    until_change: bool | None = None  # suspended by a rollback: until the files change
    requested: bool = False  # a reconcile asked for with `bpfsync reconcile` or resume
    pending: Pending | None = None
    rejected: frozenset[tuple[str, bytes, bytes | None]] = frozenset()
    rejected_note: str | None = None
    held: int = 0  # entries the last reconcile held back as rejected
    _follower: store.Follower | None = field(default=None, repr=False)

    def confirm(self, state: DesiredState) -> engine.Confirm:
        """What apply_state is given: the change waits for confirmation as long as the
        longest of --confirm-within and the bpfsync.dev/confirm-within annotations of the
        resources it changes asks; drift corrections alone wait for none."""

        def within(plan: Plan) -> float | None:
            owners = {c.owner for c in plan.changes() if not c.drift}
            asked = [state.confirm[o] for o in owners if o in state.confirm]
            if owners and self.within is not None:
                asked.append(self.within)
            return max(asked) if asked else None

        return engine.Confirm(self.within or 0, lambda r: guard.spawn(self.pin_root, r.id),
                              revert_due=False, within_for=within)

    def command(self, verb: str) -> dict[str, Any]:
        """A verb from the status socket (its thread): the reply. hold: suspend until the
        files or the commit change (`bpfsync rollback`)."""
        if verb in ("suspend", "hold"):
            self.until_change = verb == "hold" and self.until_change is not False
            if self.suspended is None:
                self.suspended = time.time()
                log.warning("suspended by `bpfsync %s`: changes and drift are reported, not "
                            "applied, until `bpfsync resume`%s",
                            "rollback" if verb == "hold" else verb,
                            " or a change of the files" if self.until_change else "")
        elif verb == "resume" and self.suspended is not None:
            self.suspended, self.until_change = None, None
            log.warning("resumed by `bpfsync resume`")
        if verb in ("reconcile", "resume"):
            self.requested = True
            self.wake()
        return {"ok": True, "suspended": self.suspended is not None}

    def changed(self, trigger: str) -> None:
        """A reconcile for new files or a new commit ends a hold (`bpfsync rollback`)."""
        if self.until_change and trigger in ("files", "commit"):
            self.suspended, self.until_change = None, None
            log.warning("resumed: the files changed after a rollback")

    def take_request(self) -> bool:
        asked, self.requested = self.requested, False
        return asked

    def select(self, split: drift.Split) -> Plan:
        """What a reconcile executes of split.apply: nothing while suspended (every change
        held, for status), else all but a rejected change's entries."""
        if self.suspended is None:
            return self.hold_rejected(split.apply)
        plan = split.apply
        split.held += [drift.Held(ch.owner, SUSPENDED, f"{ch.action.value} {ch.describe()} "
                                                      f"({ch.reason})") for ch in plan.changes()]
        split.corrected.clear()
        return Plan(kept=plan.kept, desired_total=plan.desired_total,
                    observed_counts=plan.observed_counts,
                    attachments=AttachPlan([], plan.attachments.conditions,
                                           plan.attachments.in_place))

    def hold_rejected(self, plan: Plan) -> Plan:
        """plan without the entries of the change reverted last; forgets that change once
        no reconcile would write any of them (the YAML moved on)."""
        if not self.rejected:
            return plan
        keep: list[Operation] = [op for op in plan.operations
                                 if (op.table, op.key, op.value) not in self.rejected]
        self.held = len(plan.operations) - len(keep)
        if not self.held:
            self.rejected, self.rejected_note = frozenset(), None
        plan.operations = keep
        return plan

    def started(self, record: Pending | None) -> None:
        if record is not None:
            self.pending = record
            left = record.reverts_in(time.time())
            log.warning("applied; awaiting confirmation (`bpfsync confirm`), reverts in %.0f s",
                        left or 0, extra={"fields": {"confirmWithin": record.within}})

    def adopt(self) -> None:
        """Follow the change an apply was refused for (another apply's, or this daemon's
        before a restart): it is reverted here once due, and held back like our own."""
        record = self._read()
        if record is not None and record.pending:
            self.pending = record

    def tick(self) -> None:
        """Follow the pending change: confirmed, reverted by someone, or due (reverted here)."""
        if self.pending is None:
            return
        record = self._read()
        if record is None or record.id != self.pending.id:
            self.pending = None
        elif record.state == CONFIRMED:
            self.pending = None
            log.info("change %s", record.outcome)
        elif record.state == REVERTED:
            self._reject(record)
        elif (why := due(record, time.time())) is not None and (
                record.applier.pid == os.getpid() or not applier_reverts(record, time.time())):
            try:
                reverted = engine.revert_pending(self.pin_root, why, only=record.id, wait=5)
            except KernelStateError as exc:
                log.error("reverting the unconfirmed change failed: %s", exc)
                return
            self._reject(reverted.record if reverted else self._read() or record)

    def _read(self) -> Pending | None:
        if self._follower is None:
            self._follower = store.Follower(run_directory(self.pin_root))
        try:
            return self._follower.read()
        except KernelStateError as exc:
            log.error("%s", exc)
            return None

    def _reject(self, record: Pending) -> None:
        self.pending = None
        self.rejected = frozenset((u.table, u.key, u.wrote) for u in record.undo)
        self.rejected_note = (f"{record.outcome}; its entries are held back until the YAML "
                              f"changes them or the daemon restarts")
        log.warning("change %s", self.rejected_note)

    def report(self) -> dict[str, Any]:
        p = self.pending
        asked = self.within is not None or p is not None or self.rejected_note is not None
        return {"suspendedSince": self.suspended, "suspendedUntilChange": bool(self.until_change),
                "confirmation": None if not asked else {
                    "withinSeconds": self.within,
                    "pending": p.describe(time.time()) if p and p.pending else None,
                    "rejected": self.rejected_note,
                    "heldEntries": self.held if self.rejected else 0}}
