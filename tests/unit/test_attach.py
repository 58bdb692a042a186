"""Attachment planning (pure): which filters to attach, replace or detach, and which to leave."""

from __future__ import annotations

from reconciler.core.attachments import FILTER_HANDLE, AttachAction, Filter, Hook, Seen
from reconciler.core.filters import compute_filter_plan
from reconciler.core.state import DesiredState
from reconciler.gue import hooks
from reconciler.gue.hooks import ProgramConfig
from reconciler.gue.model import Interface
from reconciler.kernel.programs import program_tags

GW = ProgramConfig("gateway", True, False)


def iface(name: str = "up", device: str = "eth0", netns: str | None = None, **kw) -> Interface:
    args = dict(role="gateway", replies_tunnel=True, ingress=True, egress=True, fib_lookup=False,
                priority=100)
    args.update(kw)
    return Interface(name, device, netns, **args)


def wanted(interfaces: dict[str, Interface]):
    state = DesiredState()
    for i in interfaces.values():
        state.add(i)
    return hooks.wanted(state)


def plan_filters(want, seen, tags):
    return compute_filter_plan(want, seen, tags)


def ours(prio: int = 100, prog_id: int = 7, tag: str = "aa") -> Filter:
    return Filter(prio, FILTER_HANDLE, "bpfsync:ti_egress", prog_id, tag)


def test_hook_pin_names_round_trip_dots_and_percent() -> None:
    for hook in (Hook("eth0.100", "ns.a%b", "egress"), Hook("lo", None, "ingress")):
        assert "." not in hook.pin_name
        assert Hook.from_pin_name(hook.pin_name) == hook
    assert Hook.from_pin_name("eth0:x:egress~new") is None


def test_wanted_skips_disabled_directions_and_marks_encapsulating_egress() -> None:
    w = wanted({"a": iface("a", ingress=False), "b": iface("b", "eth1", role="node",
                                                       replies_tunnel=False)})
    assert [(x.hook.device, x.hook.direction, x.overhead) for x in w] == [
        ("eth0", "egress", 56), ("eth1", "ingress", 0), ("eth1", "egress", 0)]


def test_attach_replace_keep_and_detach() -> None:
    want = wanted({"a": iface(ingress=False)})
    hook = want[0].hook
    tags = {(GW, "egress"): frozenset({"aa"})}
    missing = plan_filters(want, {hook: Seen(hook, True)}, tags)
    assert [op.action for op in missing.steps] == [AttachAction.ATTACH]

    same = plan_filters(want, {hook: Seen(hook, True, [ours()], pinned_id=7)}, tags)
    assert same.steps == [] and same.in_place == 1

    changed = plan_filters(want, {hook: Seen(hook, True, [ours(tag="bb")], 7)}, tags)
    assert [op.action for op in changed.steps] == [AttachAction.REPLACE]

    moved = plan_filters(want, {hook: Seen(hook, True, [ours(prio=5)], 7)}, tags)
    assert [(op.action, op.target.priority) for op in moved.steps] == [
        (AttachAction.ATTACH, 100), (AttachAction.DETACH, 5)]  # new one first: no gap

    gone_hook = Hook("eth9", None, "ingress")
    removed = plan_filters(want, {hook: Seen(hook, True, [ours()], 7),
                                         gone_hook: Seen(gone_hook, True, [ours()], 7)}, tags)
    assert [(op.action, op.target.hook) for op in removed.steps] == [
        (AttachAction.DETACH, gone_hook)]


def test_foreign_filters_are_never_planned_and_block_our_slot() -> None:
    want = wanted({"a": iface(ingress=False)})
    hook = want[0].hook
    other_prio = Filter(7, 3, "", 9, "cc")
    same_slot = Filter(100, FILTER_HANDLE, "cilium", 9, "cc")
    p = plan_filters(want, {hook: Seen(hook, True, [other_prio], None)}, None)
    assert [op.action for op in p.steps] == [AttachAction.ATTACH]
    p = plan_filters(want, {hook: Seen(hook, True, [same_slot], None)}, None)
    assert p.steps == [] and "did not create" in p.conditions[0]
    # A removed Interface leaves the foreign filter alone.
    p = plan_filters([], {hook: Seen(hook, True, [other_prio, same_slot], None)}, None)
    assert p.steps == []


def test_missing_device_waits_and_mtu_warns() -> None:
    want = wanted({"a": iface(ingress=False, netns="edge")})
    hook = want[0].hook
    p = plan_filters(want, {hook: Seen(hook, False)}, None)
    assert p.steps == [] and "device eth0 not found in netns edge" in p.conditions[0]
    p = plan_filters(want, {hook: Seen(hook, True, mtu=1500, others_mtu=1500)}, None)
    assert "raise the MTU to 1556" in p.conditions[0]
    p = plan_filters(want, {hook: Seen(hook, True, mtu=1600, others_mtu=1500)}, None)
    assert p.conditions == []


def test_program_tags_zero_map_references() -> None:
    ld_map = bytes([0x18, 0x11, 0, 0]) + (5).to_bytes(4, "little")  # ld_imm64 r1, map fd 5
    ld_next = bytes(8)
    exit_ = bytes([0x95]) + bytes(7)
    a = program_tags(ld_map + ld_next + exit_)
    b = program_tags(ld_map[:4] + (9).to_bytes(4, "little") + ld_next + exit_)
    assert a == b and len(a) == 2 and all(len(x) == 16 for x in a)
    assert program_tags(bytes([0x95, 1]) + bytes(6)) != a
