"""Recording an executed plan as a revision of the history (engine.apply_state calls it).
A history that cannot be written (a full disk, a read-only /var/lib) is logged, never an
apply failure: the kernel is the source of truth, the history a convenience."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from reconciler.core.attachments import AttachAction
from reconciler.core.errors import BpfsyncError
from reconciler.core.plan import Action, Plan
from reconciler.core.state import DesiredState
from reconciler.history import snapshot, store
from reconciler.history.record import Revision

log = logging.getLogger("bpfsync.history")


def summary(plan: Plan) -> dict[str, int]:
    out = {a.value: plan.count(a) for a in Action}
    steps = plan.attachments.changes()
    out.update({a.value: sum(1 for s in steps if s.action is a) for a in AttachAction})
    return out


def remember(pin_root: Path, state: DesiredState, plan: Plan, by: str) -> int | None:
    """The number of the revision plan became (None: history off or not writable)."""
    try:
        texts, why = snapshot.capture(state)
        where = str(Path(state.directory).resolve()) if state.directory else ""
        revision = store.append(pin_root, texts, lambda n, hashes: Revision(
            n, time.time(), by, where, state.revision or "", summary(plan),
            state.resource_count, hashes, tuple(why)))
    except (OSError, BpfsyncError) as exc:
        log.warning("history: this apply was not recorded: %s", exc)
        return None
    return None if revision is None else revision.number


def mark_reverted(pin_root: Path, number: int) -> None:
    """The revision of a change reverted for want of confirmation is no state to go back to."""
    try:
        for r in store.revisions(pin_root):
            if r.number == number:
                store.replace(pin_root, dataclasses.replace(r, reverted=True))
    except OSError as exc:
        log.warning("history: revision %d not marked reverted: %s", number, exc)
