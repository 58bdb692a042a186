"""Intercepts' host plumbing as an attachment part (core/attachments.py): observed and
changed through intercept/host.py, planned by intercept/plumbing.py."""

from __future__ import annotations

from reconciler.core.attachments import AttachContext, Attachments, Planned, Step, Undo
from reconciler.intercept import host
from reconciler.intercept.model import Intercept
from reconciler.intercept.plumbing import (
    Plumbing,
    compute_plumbing_plan,
    undo_plumbing,
    wanted,
)


def plan(context: AttachContext) -> Planned:
    want = wanted(context.state.of(Intercept))
    return compute_plumbing_plan(want, host.observe(context.pin_root, want))


def execute(context: AttachContext, steps: list[Step]) -> None:
    host.execute(context.pin_root, steps)


def undo(context: AttachContext, steps: list[Step]) -> Undo:
    return undo_plumbing(steps, host.observe(context.pin_root, {s.target.netns for s in steps}))


PLUMBING = Attachments("host plumbing", (Plumbing,), plan, execute, undo)
