"""Every attachment part, in order, and the two things the engine does with them: plan them
all against the kernel, and execute a plan's steps, each by the part it belongs to.

The parts: TC filters (one for every data path with TC programs, core/filters.py), then
each capability's own part in registry order (sk_lookup link, cgroup links, host plumbing).
A plan's steps run by phase (core/attachments.Phase), then in this order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reconciler.core import registry
from reconciler.core.attachments import (
    FILTER_PREFIX,
    UNDO_REASON,
    AttachAction,
    AttachContext,
    Attachments,
    AttachPlan,
    Condition,
    Kept,
    Planned,
    Seen,
    Step,
    Undo,
    runs,
)
from reconciler.core.capability import TcPrograms
from reconciler.core.filters import TcFilter, TcRestore, Wanted, compute_filter_plan
from reconciler.core.state import DesiredState
from reconciler.kernel import tc
from reconciler.kernel.programs import BPF_PROG_TYPE_SCHED_CLS

TC_PROGRAMS: tuple[TcPrograms, ...] = tuple(c.tc for c in registry.CAPABILITIES if c.tc)
_BY_CONFIG: dict[type, TcPrograms] = {p.config: p for p in TC_PROGRAMS}


def tc_wanted(state: DesiredState) -> list[Wanted]:
    return [w for p in TC_PROGRAMS for w in p.wanted(state)]


def _leftover_owner(seen: Seen) -> str:
    """The made-up owner of a leftover program, by the data path its filter name tells
    (the first data path with TC programs when none does)."""
    names = {f.name.removeprefix(FILTER_PREFIX) for f in seen.ours}
    kind = next((p.kind for p in TC_PROGRAMS if names & p.functions), TC_PROGRAMS[0].kind)
    return f"{kind}/({seen.hook})"


def _plan_filters(context: AttachContext) -> Planned:
    want = tc_wanted(context.state)
    seen = tc.observe(context.pin_root, [w.hook for w in want])
    if not want and not seen:
        return Planned()
    tags = None
    if context.compiler is not None:
        compiler = context.compiler
        tags = {(w.config, w.hook.direction): compiler.tags(
            _compiled(context, w.config), w.config.function(w.hook.direction)) for w in want}
    return compute_filter_plan(want, seen, tags, _leftover_owner)


def _compiled(context: AttachContext, config: Any) -> Any:
    """The compilation of a TC configuration, by the data path whose config type it is."""
    assert context.compiler is not None
    return _BY_CONFIG[type(config)].compiled(context.compiler, context.pin_root, config)


def _execute_filters(context: AttachContext, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step.target, TcRestore):
            tc.restore(context.pin_root, step.target, step.action is AttachAction.REPLACE)
            continue
        f: TcFilter = step.target
        if step.action is AttachAction.DETACH:
            tc.detach(context.pin_root, f.hook, f.priority)
            continue
        assert context.compiler is not None
        fd = context.compiler.load(_compiled(context, f.config), f.program,
                                   BPF_PROG_TYPE_SCHED_CLS, what=f.config.describe())
        tc.attach(context.pin_root, f.hook, f.priority, fd,
                  replace=step.action is AttachAction.REPLACE, function=f.program)


def _undo_filters(context: AttachContext, steps: list[Step]) -> Undo:
    """An attached filter is detached again; the program of a replaced or removed one is
    kept pinned (tc.keep) and put back at its place: the same program, the same id."""
    back: list[Step] = []
    cannot: list[Step] = []
    for s in reversed(steps):
        f: TcFilter = s.target
        if s.action is AttachAction.ATTACH:
            back.append(Step(AttachAction.DETACH, TcFilter(f.hook, f.priority), s.owner,
                             UNDO_REASON))
            continue
        kept = tc.keep(context.pin_root, f.hook, f.priority) if f.priority else None
        if kept is None:
            cannot.append(s)
        else:
            action = AttachAction.REPLACE if s.action is AttachAction.REPLACE else (
                AttachAction.ATTACH)
            back.append(Step(action, kept, s.owner, UNDO_REASON))
    return back, cannot


TC_FILTERS = Attachments("tc filters", (TcFilter, TcRestore), _plan_filters, _execute_filters,
                         _undo_filters)
PARTS: tuple[Attachments, ...] = (
    TC_FILTERS, *(c.attachments for c in registry.CAPABILITIES if c.attachments))
_PART_OF: dict[type, Attachments] = {t: p for p in PARTS for t in p.targets}


def part_of(step: Step) -> Attachments:
    target = step.target
    return _PART_OF[type(target.of if isinstance(target, Kept) else target)]


def undo(context: AttachContext, steps: list[Step]) -> tuple[list[Step], list[Step]]:
    """(the steps that undo steps, in the order to run them: the last part's first; the
    steps no part can undo)."""
    back: list[Step] = []
    cannot: list[Step] = []
    for part, run in runs(steps, part_of):
        if part.undo is None:
            cannot += run
            continue
        undone, left = part.undo(context, run)
        back = undone + back
        cannot += left
    return back, cannot


def plan_attachments(context: AttachContext) -> AttachPlan:
    """Every part planned against what the kernel holds now."""
    return AttachPlan.of([part.plan(context) for part in PARTS])


def host_warnings(state: DesiredState, pin_root: Path) -> list[Condition]:
    """Warnings about declared TC hooks that exist on this host (MTU; for `validate`):
    the TC part planned without a compiler, nothing compiled, nothing changed."""
    if not tc_wanted(state):
        return []
    return AttachPlan.of([_plan_filters(AttachContext(state, pin_root))]).warnings
