"""Telling drift from change, and holding back the drift a policy does not correct. Pure.

A difference between the kernel and the desired state is a *change* when the resource that
owns it was added, edited or removed in YAML since the last successful reconcile (the
baseline), and *drift* otherwise: someone altered the kernel (bpftool, tc) behind bpfsync's
back — deleted or rewrote an entry, detached a program, or added entries bpfsync did not
stamp. Changes are always applied. Drift is corrected, reported or ignored according to the
owning resource's `bpfsync.dev/drift` annotation, or the daemon's default policy.

Without a baseline (the daemon's first reconcile) everything is a change: what the kernel
holds then is made to match the directory, as `bpfsync apply` would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.attachments import AttachPlan
from reconciler.core.plan import Change, Plan
from reconciler.core.state import DesiredState

ENFORCE, WARN, OFF = "enforce", "warn", "off"
POLICIES = (ENFORCE, WARN, OFF)


def _lookup(state: DesiredState, ref: str) -> Any:
    kind, _, name = ref.partition("/")
    return state.resources.get(kind, {}).get(name)


@dataclass(frozen=True, slots=True)
class Held:
    """A drift correction not applied because the owner's policy is warn or off."""

    owner: str
    policy: str
    what: str  # one line, without values (values may hold keys)


@dataclass
class Split:
    apply: Plan
    held: list[Held] = field(default_factory=list)
    corrected: dict[str, int] = field(default_factory=dict)  # owner -> drift operations applied


class Classifier:
    """before: the state of the last successful reconcile (its resources are immutable, so
    keeping it costs references only); None before the first."""

    def __init__(self, state: DesiredState, before: DesiredState | None, default: str) -> None:
        self.state = state
        self.before = before
        self.default = default
        self._memo: dict[str, bool] = {}

    def is_change(self, owner: str) -> bool:
        if self.before is None:
            return True
        if owner not in self._memo:
            now, then = _lookup(self.state, owner), _lookup(self.before, owner)
            if now is None:
                changed = then is not None  # removed from YAML since: prune it
            elif now is then:  # the same object, kept by the parse cache
                changed = False
            else:
                changed = then is None or dataclasses.replace(now, origin=None) != (
                    dataclasses.replace(then, origin=None))
            self._memo[owner] = changed
        return self._memo[owner]

    def policy(self, owner: str) -> str:
        return self.state.drift.get(owner, self.default)


def split(plan: Plan, state: DesiredState, before: DesiredState | None, default: str) -> Split:
    """The plan to execute (changes, and drift whose policy is enforce), and what is held."""
    c = Classifier(state, before, default)
    out = Split(Plan(kept=plan.kept, desired_total=plan.desired_total,
                     observed_counts=plan.observed_counts))

    def keep(ch: Change) -> bool:
        change = ch.is_change
        if change is False and c.before is None:
            change = None  # without a baseline everything is a change
        if change if change is not None else c.is_change(ch.owner):
            return True
        policy = c.policy(ch.owner)
        if policy == ENFORCE:
            out.corrected[ch.owner] = out.corrected.get(ch.owner, 0) + 1
            return True
        out.held.append(Held(ch.owner, policy, f"{ch.action.value} {ch.describe()} "
                                               f"({ch.reason})"))
        return False

    # Change.is_change: removing what nobody declares is a change (its owner was removed),
    # repairing what was altered outside bpfsync is drift; else the owner's history decides.
    a = plan.attachments
    out.apply.operations = [op for op in plan.operations if keep(op)]
    out.apply.attachments = AttachPlan([s for s in a.steps if keep(s)], a.conditions,
                                       a.in_place)
    return out
