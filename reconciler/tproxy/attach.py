"""Transparent proxies' cgroup links as an attachment part (core/attachments.py): observed
and changed through tproxy/host.py, planned by tproxy/cgroups.py."""

from __future__ import annotations

from reconciler.core import attachments as at
from reconciler.core.attachments import AttachAction, AttachContext, Attachments, Planned, Step
from reconciler.tproxy import cgroups, host, programs
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import NAME, CgroupLink, HostFacts
from reconciler.tproxy.model import TransparentProxy


def _ids(context: AttachContext) -> tuple[int, ...]:
    return tuple(sorted(tp.id for tp in context.state.of(TransparentProxy).values()))


def plan(context: AttachContext) -> Planned:
    state, pin_root = context.state, context.pin_root
    seen = host.observe(pin_root)
    facts = context.facts.get(NAME) or HostFacts()
    tags = None
    # BCC creates tp_orig and tp_orig6 at the first compilation: diff must not, so it
    # compiles only once both are there
    if (context.compiler is not None and state.of(TransparentProxy)
            and all((pin_root / "maps" / m.name).exists() for m in (tpt.TP_ORIG, tpt.TP_ORIG6))):
        names = sorted({w.program for w in cgroups.wanted(state, pin_root)})
        tags = programs.tags(context.compiler, pin_root, _ids(context), names)
    return cgroups.plan(state, pin_root, seen, facts, tags)


def execute(context: AttachContext, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step.target, at.Kept):  # a revert: the program it ran before, back
            host.restore(context.pin_root, step.target, step.action is AttachAction.ATTACH)
            continue
        link: CgroupLink = step.target
        if step.action is AttachAction.DETACH:
            host.remove(context.pin_root, link.hook)
            continue
        assert link.program is not None and context.compiler is not None
        fd = programs.load(context.compiler, context.pin_root, _ids(context), link.hook.hook,
                           link.program)
        if step.action is AttachAction.ATTACH:
            host.create(context.pin_root, link.hook, fd)
        else:
            host.update(context.pin_root, link.hook, fd)


def undo(context: AttachContext, steps: list[Step]) -> at.Undo:
    """A new link is removed again; the program of one updated or removed is kept pinned
    and put back (the link updated back, or made again)."""
    return at.undo_links(steps, lambda link: CgroupLink(link.hook),
                         lambda link: host.keep(context.pin_root, link.hook))


CGROUP_LINKS = Attachments("cgroup links", (CgroupLink,), plan, execute, undo)
