"""A change that awaits confirmation (`bpfsync apply --confirm-within`): what the apply
wrote and what each entry held before it, byte for byte, so that an unconfirmed change is
undone exactly — not by re-applying an older YAML.

Pure: the record is made from the executed plan (every Operation carries the observed bytes
it replaces), and undoing it is a plan computed against the kernel as it is then. An entry
is put back only when it still holds what the apply wrote: one changed since (by a later
writer) is left as it is and reported, never overwritten.

The record holds key material (a Tunnel's key is in the bytes it wrote); it lives in
bpfsync's root-only run directory on tmpfs (confirm/store.py) and is never printed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.confirm import targets
from reconciler.core import registry
from reconciler.core.attachments import AttachPlan, Step
from reconciler.core.plan import Action, Operation, Plan

PENDING, CONFIRMED, REVERTED = "pending", "confirmed", "reverted"
STATES = (PENDING, CONFIRMED, REVERTED)
FORMAT = 1
REASON = "reverting an unconfirmed apply"


@dataclass(frozen=True, slots=True)
class Process:
    """A process, told apart from a later one with the same pid by its start time (clock
    ticks since boot, /proc/PID/stat field 22)."""

    pid: int
    start: int


@dataclass(frozen=True, slots=True)
class Undo:
    """One entry the apply changed: the bytes it wrote (None: it deleted the entry) and the
    bytes to restore (None: the apply created it). Values stay out of repr."""

    table: str
    key: bytes
    wrote: bytes | None = field(repr=False)
    restore: bytes | None = field(repr=False)
    owner: str


@dataclass(frozen=True, slots=True)
class Pending:
    """One apply awaiting confirmation. deadline is None while the apply still executes (an
    applier that dies then is reverted at once); state moves PENDING -> CONFIRMED or
    REVERTED exactly once, with outcome saying how."""

    id: str
    created: float
    within: float
    directory: str
    revision: str
    applier: Process
    undo: tuple[Undo, ...]
    guard: Process | None = None
    deadline: float | None = None
    state: str = PENDING
    outcome: str = ""
    resolved: float | None = None
    history: int | None = None  # the history revision the apply recorded
    steps: tuple[Step, ...] = ()  # the attachment steps that undo the apply's, in order

    @property
    def pending(self) -> bool:
        return self.state == PENDING

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline

    def reverts_in(self, now: float) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - now)

    def resolve(self, state: str, outcome: str, now: float) -> Pending:
        return replace(self, state=state, outcome=outcome, resolved=now)

    def describe(self, now: float) -> str:
        """One line for status and confirm, without values."""
        what = f"{len(self.undo):,} entr{'y' if len(self.undo) == 1 else 'ies'} from {self.directory}"
        if self.state != PENDING:
            return f"{what}: {self.outcome}"
        left = self.reverts_in(now)
        when = "still applying" if left is None else f"reverts in {left:.0f} s"
        return f"pending confirmation: {what}, {when}"


def new(plan: Plan, within: float, directory: str, revision: str, applier: Process,
        now: float, steps: tuple[Step, ...] = ()) -> Pending:
    """The record of plan, to be written before plan is executed; steps: what undoes its
    attachment steps (their parts' undo, attach.undo)."""
    return Pending(uuid.uuid4().hex, now, within, directory, revision, applier, undo_of(plan),
                   steps=steps)


def undo_of(plan: Plan) -> tuple[Undo, ...]:
    return tuple(Undo(op.table, op.key, op.value, op.old, op.owner) for op in plan.operations)


def still_applied(undo: tuple[Undo, ...], observed: dict[str, dict[bytes, bytes]]
                  ) -> list[str]:
    """The entries that no longer hold what the apply wrote (another writer since), by
    owner and table: `apply --verify` checks this while it waits for confirmation."""
    return [f"{u.owner}: {u.table} entry no longer as applied" for u in undo
            if observed.get(u.table, {}).get(u.key) != u.wrote]


def revert_plan(undo: tuple[Undo, ...], observed: dict[str, dict[bytes, bytes]],
                steps: tuple[Step, ...] = ()) -> tuple[Plan, list[str]]:
    """The plan that puts back what undo recorded, against the kernel as observed now, and
    the entries left alone because they changed since the apply (by their owner name). An
    entry already as it was before (the apply died before writing it) needs nothing. steps
    (what undoes the attachments; each idempotent) run between its upserts and deletes."""
    upserts: list[Operation] = []
    deletes: list[Operation] = []
    changed: list[str] = []
    for u in undo:
        now = observed.get(u.table, {}).get(u.key)
        if now == u.restore:
            continue
        if now != u.wrote:
            changed.append(f"{u.owner}: {u.table} entry changed since the apply; left as it is")
            continue
        if u.restore is None:
            deletes.append(Operation(Action.DELETE, u.table, u.key, None, now, u.owner, REASON))
        else:
            action = Action.CREATE if now is None else Action.UPDATE
            upserts.append(Operation(action, u.table, u.key, u.restore, now, u.owner, REASON))
    up = {s.name: i for i, s in enumerate(registry.UPSERT_ORDER)}
    down = {s.name: i for i, s in enumerate(registry.DELETE_ORDER)}
    upserts.sort(key=lambda op: (up.get(op.table, len(up)), op.key))
    deletes.sort(key=lambda op: (down.get(op.table, len(down)), op.key))
    plan = Plan(operations=[*upserts, *deletes], attachments=AttachPlan(list(steps)))
    return plan, changed


def _hex(raw: bytes | None) -> str | None:
    return None if raw is None else raw.hex()


def _unhex(text: Any) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("not a hex string")
    return bytes.fromhex(text)


def _process(doc: Any) -> Process | None:
    if doc is None:
        return None
    return Process(int(doc["pid"]), int(doc["start"]))


def encode(p: Pending) -> bytes:
    doc = {
        "format": FORMAT, "id": p.id, "state": p.state, "created": p.created,
        "within": p.within, "deadline": p.deadline, "directory": p.directory,
        "revision": p.revision, "outcome": p.outcome, "resolved": p.resolved,
        "history": p.history,
        "applier": {"pid": p.applier.pid, "start": p.applier.start},
        "guard": None if p.guard is None else {"pid": p.guard.pid, "start": p.guard.start},
        "undo": [[u.table, u.key.hex(), _hex(u.wrote), _hex(u.restore), u.owner]
                 for u in p.undo],
        "steps": [targets.encode(s) for s in p.steps],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def decode(raw: bytes) -> Pending:
    """A record written by encode(); ValueError if it is not one (messages carry no values)."""
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("state") not in STATES:
            raise ValueError("unknown format or state")
        undo = tuple(Undo(str(t), bytes.fromhex(k), _unhex(w), _unhex(r), str(o))
                     for t, k, w, r, o in doc["undo"])
        deadline = doc["deadline"]
        return Pending(
            str(doc["id"]), float(doc["created"]), float(doc["within"]),
            str(doc["directory"]), str(doc["revision"]), _process(doc["applier"]) or
            Process(0, 0), undo, _process(doc["guard"]),
            None if deadline is None else float(deadline), doc["state"],
            str(doc["outcome"]), None if doc["resolved"] is None else float(doc["resolved"]),
            None if doc.get("history") is None else int(doc["history"]),
            tuple(targets.decode(s) for s in doc.get("steps", [])))
    except (KeyError, TypeError, ValueError, AttributeError, ImportError) as exc:
        raise ValueError(f"not a pending-change record ({type(exc).__name__})") from None
