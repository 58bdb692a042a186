"""Port steering's sk_lookup link as an attachment part (core/attachments.py): observed and
changed through steering/host.py, planned by steering/links.py."""

from __future__ import annotations

from reconciler.core.attachments import (
    AttachAction,
    AttachContext,
    Attachments,
    Kept,
    Planned,
    Step,
    Undo,
    undo_links,
)
from reconciler.kernel.links import netns_exists
from reconciler.steering import host, programs
from reconciler.steering.links import SkLookupLink, compute_link_plan
from reconciler.steering.model import Proxy, proxy_netns


def plan(context: AttachContext) -> Planned:
    state = context.state
    seen = host.observe(context.pin_root)
    if not state.of(Proxy) and not seen:
        return Planned()
    tags = None
    if context.compiler is not None and state.of(Proxy):
        tags = programs.tags(context.compiler, context.pin_root)
    return compute_link_plan(state, seen, tags, netns_exists(proxy_netns(state)))


def execute(context: AttachContext, steps: list[Step]) -> None:
    for step in steps:
        if isinstance(step.target, Kept):  # a revert: the program it ran before, back
            host.restore(context.pin_root, step.target, step.action is AttachAction.ATTACH)
            continue
        netns = step.target.netns
        if step.action is AttachAction.DETACH:
            host.remove(context.pin_root, netns)
            continue
        assert context.compiler is not None
        fd = programs.load(context.compiler, context.pin_root)
        if step.action is AttachAction.ATTACH:
            host.create(context.pin_root, netns, fd)
        else:
            host.update(context.pin_root, netns, fd)


def undo(context: AttachContext, steps: list[Step]) -> Undo:
    """A new link is removed again; the program of one updated or removed is kept pinned
    and put back (the link updated back, or made again)."""
    return undo_links(steps, lambda link: SkLookupLink(link.netns),
                      lambda link: host.keep(context.pin_root, link.netns))


STEERING_LINK = Attachments("sk_lookup link", (SkLookupLink,), plan, execute, undo)
