"""TC attachments: what should be attached where, what is, and the operations between them.

Pure, like plan.py: the kernel shell (kernel/tc.py, kernel/programs.py) observes filters and
compiles programs; this module only compares. A filter is bpfsync's when it sits at bpfsync's
handle with a name starting with FILTER_PREFIX; anything else is foreign and never touched.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.attachments import (
    CONFLICT,
    FILTER_HANDLE,
    FILTER_PREFIX,
    WAITING,
    WARNING,
    AttachAction,
    AttachPlan,
    Condition,
    Hook,
    Seen,
)
from reconciler.gue.model import Interface
from reconciler.gue.tables import GUE_OVERHEAD
from reconciler.intercept.model import Intercept

FUNCTIONS = {"ingress": "ti_ingress", "egress": "ti_egress"}


@dataclass(frozen=True, slots=True, order=True)
class ProgramConfig:
    """Compile-time behaviour of the programs (the seed's TABLE-CONFIG, per interface)."""

    role: str
    replies_tunnel: bool
    fib_lookup: bool

    def describe(self) -> str:
        parts = [f"role {self.role}"]
        if self.role == "node":
            parts.append("replies " + ("tunnel" if self.replies_tunnel else "direct"))
        if self.fib_lookup:
            parts.append("fibLookup")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True, order=True)
class InterceptProgram:
    """Compile-time configuration of an Intercept's programs: ic_egress of Intercept ic_id,
    or (ic_id 0) ic_lo, the namespace's socket assignment on lo's ingress."""

    ic_id: int
    mark: int
    proxy_mark: int

    def describe(self) -> str:
        if not self.ic_id:
            return f"assign to proxies, mark {self.mark:#x}"
        return f"intercept {self.ic_id}, mark {self.mark:#x}, proxyMark {self.proxy_mark:#x}"


Config = ProgramConfig | InterceptProgram


def function_of(config: Config, direction: str) -> str:
    """The program (function in its C source) a configuration runs at a direction."""
    if isinstance(config, InterceptProgram):
        return "ic_egress" if config.ic_id else "ic_lo"
    return FUNCTIONS[direction]


@dataclass(frozen=True, slots=True)
class Wanted:
    hook: Hook
    priority: int
    config: Config
    owner: str  # "Interface/name"
    encapsulates: bool  # egress that adds GUE headers: the MTU check applies


def wanted(interfaces: dict[str, Interface]) -> list[Wanted]:
    out = []
    for iface in sorted(interfaces.values(), key=lambda i: i.name):
        config = ProgramConfig(iface.role, iface.replies_tunnel, iface.fib_lookup)
        for direction, on in (("ingress", iface.ingress), ("egress", iface.egress)):
            if on:
                encap = direction == "egress" and (iface.role == "gateway" or iface.replies_tunnel)
                out.append(Wanted(Hook(iface.device, iface.netns, direction), iface.priority,
                                  config, iface.ref, encap))
    return out


def wanted_intercepts(intercepts: dict[str, Intercept]) -> list[Wanted]:
    """Each Intercept's egress program; lo's ingress program once per namespace with an
    Intercept (whether it redirects now or not: connections redirected before a rule change
    still arrive there), at the smallest priority of the namespace's Intercepts."""
    out = []
    lo: dict[str | None, list[Intercept]] = {}
    for ic in sorted(intercepts.values(), key=lambda i: i.name):
        r = ic.routing
        out.append(Wanted(Hook(ic.device, ic.netns, "egress"), ic.priority,
                          InterceptProgram(ic.id, r.mark, r.proxy_mark), ic.ref, False))
        lo.setdefault(ic.netns, []).append(ic)
    for netns, ics in sorted(lo.items(), key=lambda kv: kv[0] or ""):
        out.append(Wanted(Hook("lo", netns, "ingress"), min(i.priority for i in ics),
                          InterceptProgram(0, ics[0].routing.mark, 0), ics[0].ref, False))
    return out


@dataclass(frozen=True, slots=True)
class AttachOperation:
    action: AttachAction
    hook: Hook
    priority: int
    config: Config | None  # None for detach
    owner: str
    reason: str
    drift: bool = False

    def describe(self) -> str:
        what = f"tc {self.hook} prio {self.priority}"
        if self.config is None:
            return what + ": bpfsync's filter"
        return f"{what}: {function_of(self.config, self.hook.direction)} ({self.config.describe()})"


def _owner_of(seen: Seen) -> str:
    """The made-up owner of a leftover program, by the kind its filter name tells."""
    intercept = any(f.name.startswith(FILTER_PREFIX + "ic_") for f in seen.ours)
    return f"{'Intercept' if intercept else 'Interface'}/({seen.hook})"


def compute_attach_plan(want: list[Wanted], seen: dict[Hook, Seen],
                        tags: dict[tuple[Config, str], frozenset[str]] | None) -> AttachPlan:
    """tags: acceptable tags per (config, direction); None when programs cannot be compiled yet
    (tables missing), so any attached program is taken as current."""
    plan = AttachPlan()
    wanted_hooks = {w.hook for w in want}
    for w in want:
        s = seen.get(w.hook) or Seen(w.hook, device_present=False)
        if not s.device_present:
            plan.waiting.append(Condition(
                w.owner, f"device {w.hook.device} not found"
                + (f" in netns {w.hook.netns}" if w.hook.netns else "")
                + f"; {w.hook.direction} program not attached", WAITING))
            continue
        blocking = [f for f in s.filters if not f.ours and f.priority == w.priority
                    and f.handle == FILTER_HANDLE]
        if blocking:
            plan.conflicts.append(Condition(
                w.owner, f"{w.hook} prio {w.priority} handle {FILTER_HANDLE:#x} holds a filter "
                f"bpfsync did not create ({blocking[0].describe()}); left untouched. Choose "
                f"another spec.priority or remove that filter", CONFLICT))
            continue
        if w.encapsulates and s.mtu and s.others_mtu and s.mtu < s.others_mtu + GUE_OVERHEAD:
            plan.warnings.append(Condition(
                w.owner, f"{w.hook.device} MTU {s.mtu} leaves no room for the {GUE_OVERHEAD}-byte "
                f"GUE overhead: full-size packets from the other devices (MTU {s.others_mtu}) "
                f"would become {s.others_mtu + GUE_OVERHEAD} bytes; raise the MTU to "
                f"{s.others_mtu + GUE_OVERHEAD} or lower the route MTU / clamp TCP MSS", WARNING))
        ours = s.ours
        here = [f for f in ours if f.priority == w.priority]
        want_tags = None if tags is None else tags.get((w.config, w.hook.direction))
        if not here:
            plan.operations.append(AttachOperation(
                AttachAction.ATTACH, w.hook, w.priority, w.config, w.owner, "declared in YAML"))
        else:
            f = here[0]
            stale_pin = s.pinned_id is not None and f.prog_id != s.pinned_id
            if want_tags is not None and f.tag not in want_tags:
                plan.operations.append(AttachOperation(
                    AttachAction.REPLACE, w.hook, w.priority, w.config, w.owner,
                    "program or its configuration changed"))
            elif stale_pin or s.pinned_id is None:
                plan.operations.append(AttachOperation(
                    AttachAction.REPLACE, w.hook, w.priority, w.config, w.owner,
                    "attached program is not the pinned one", drift=True))
            else:
                plan.in_place += 1
        for f in ours:
            if f.priority != w.priority:
                plan.operations.append(AttachOperation(
                    AttachAction.DETACH, w.hook, f.priority, None, w.owner,
                    f"priority changed to {w.priority}"))
    for hook in sorted(seen.keys() - wanted_hooks):
        s = seen[hook]
        for f in s.ours:
            plan.operations.append(AttachOperation(
                AttachAction.DETACH, hook, f.priority, None, _owner_of(s), "no longer in YAML"))
        if not s.ours and s.pinned_id is not None:  # device gone: only the pin is left
            plan.operations.append(AttachOperation(
                AttachAction.DETACH, hook, 0, None, _owner_of(s),
                "device gone; removing the leftover pin"))
    order = {AttachAction.ATTACH: 0, AttachAction.REPLACE: 0, AttachAction.DETACH: 1}
    plan.operations.sort(key=lambda op: order[op.action])  # stable: attach before detach
    return plan
