"""TC filters as an attachment part, the pure half: which program each hook should run, what
the kernel holds there, and the steps between them. Shared by every data path with TC
programs (GUE's Interfaces, Intercepts): they all sit at bpfsync's handle, so one planner
sees every hook at once — one data path's filter is never taken for a leftover of another.

A data path's TcPrograms (core/capability.py) says which hooks its resources want, with a
configuration (its own frozen dataclass) that names the program and compiles it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from reconciler.core.attachments import (
    CONFLICT,
    FILTER_HANDLE,
    WAITING,
    WARNING,
    AttachAction,
    Hook,
    Phase,
    Planned,
    Seen,
    Step,
)


class Config(Protocol):
    """A program's compile-time configuration; hashable (programs are compiled once per
    configuration and their tags compared per (configuration, direction))."""

    def describe(self) -> str: ...

    def function(self, direction: str) -> str:
        """The program (function in its C source) run at direction."""
        ...


@dataclass(frozen=True, slots=True)
class Wanted:
    """A hook a resource wants a program at. overhead: bytes the program adds to a packet
    (encapsulation, named by encapsulation), for the MTU warning; 0 when it adds none."""

    hook: Hook
    priority: int
    config: Any  # a Config
    owner: str  # "Kind/name"
    overhead: int = 0
    encapsulation: str = ""


@dataclass(frozen=True, slots=True, order=True)
class TcFilter:
    """bpfsync's filter at a hook and priority, running config's program (None: detach)."""

    hook: Hook
    priority: int
    config: Any = None  # a Config, None for detach

    def describe(self) -> str:
        what = self.place
        if self.config is None:
            return what + ": bpfsync's filter"
        return f"{what}: {self.program} ({self.config.describe()})"

    @property
    def place(self) -> str:
        return f"tc {self.hook} prio {self.priority}"

    @property
    def program(self) -> str:
        return str(self.config.function(self.hook.direction))

    def to_json(self) -> dict[str, Any]:
        return {"hook": {"device": self.hook.device, "netns": self.hook.netns,
                         "direction": self.hook.direction, "priority": self.priority},
                "program": self.describe().split(": ", 1)[1]}

    def phase(self, action: AttachAction) -> Phase:
        return Phase.PROGRAMS


@dataclass(frozen=True, slots=True, order=True)
class TcRestore:
    """The program a filter ran before an apply that replaced or removed it, kept pinned at
    pin (under the pin root's "confirm" directory) until the change is confirmed; put back
    at hook and priority (replacing what runs there, or added again) by a revert."""

    hook: Hook
    priority: int
    function: str
    pin: str

    def describe(self) -> str:
        return f"{self.place}: {self.function} (the program it ran before)"

    @property
    def place(self) -> str:
        return f"tc {self.hook} prio {self.priority}"

    def to_json(self) -> dict[str, Any]:
        return {"hook": {"device": self.hook.device, "netns": self.hook.netns,
                         "direction": self.hook.direction, "priority": self.priority},
                "program": f"{self.function} (the program it ran before)"}

    def phase(self, action: AttachAction) -> Phase:
        return Phase.PROGRAMS


def _mtu(w: Wanted, s: Seen, out: Planned) -> None:
    if not (w.overhead and s.mtu and s.others_mtu and s.mtu < s.others_mtu + w.overhead):
        return
    out.condition(
        w.owner, f"{w.hook.device} MTU {s.mtu} leaves no room for the {w.overhead}-byte "
        f"{w.encapsulation} overhead: full-size packets from the other devices (MTU "
        f"{s.others_mtu}) would become {s.others_mtu + w.overhead} bytes; raise the MTU to "
        f"{s.others_mtu + w.overhead} or lower the route MTU / clamp TCP MSS", WARNING)


def compute_filter_plan(want: list[Wanted], seen: dict[Hook, Seen],
                        tags: dict[tuple[Any, str], frozenset[str]] | None,
                        leftover_owner: Any = lambda seen: f"Interface/({seen.hook})"
                        ) -> Planned:
    """tags: acceptable tags per (config, direction); None when programs cannot be compiled
    yet (tables missing), so any attached program is taken as current. leftover_owner(seen):
    the made-up owner of filters at a hook nothing wants any more."""
    out = Planned()
    steps = out.steps
    wanted_hooks = {w.hook for w in want}
    for w in want:
        s = seen.get(w.hook) or Seen(w.hook, device_present=False)
        if not s.device_present:
            out.condition(w.owner, f"device {w.hook.device} not found"
                          + (f" in netns {w.hook.netns}" if w.hook.netns else "")
                          + f"; {w.hook.direction} program not attached", WAITING)
            continue
        blocking = [f for f in s.filters if not f.ours and f.priority == w.priority
                    and f.handle == FILTER_HANDLE]
        if blocking:
            out.condition(
                w.owner, f"{w.hook} prio {w.priority} handle {FILTER_HANDLE:#x} holds a filter "
                f"bpfsync did not create ({blocking[0].describe()}); left untouched. Choose "
                f"another spec.priority or remove that filter", CONFLICT)
            continue
        _mtu(w, s, out)
        ours = s.ours
        here = [f for f in ours if f.priority == w.priority]
        want_tags = None if tags is None else tags.get((w.config, w.hook.direction))
        target = TcFilter(w.hook, w.priority, w.config)
        if not here:
            steps.append(Step(AttachAction.ATTACH, target, w.owner, "declared in YAML"))
        else:
            f = here[0]
            stale_pin = s.pinned_id is not None and f.prog_id != s.pinned_id
            if want_tags is not None and f.tag not in want_tags:
                steps.append(Step(AttachAction.REPLACE, target, w.owner,
                                  "program or its configuration changed"))
            elif stale_pin or s.pinned_id is None:
                steps.append(Step(AttachAction.REPLACE, target, w.owner,
                                  "attached program is not the pinned one", drift=True))
            else:
                out.in_place += 1
        for f in ours:
            if f.priority != w.priority:
                steps.append(Step(AttachAction.DETACH, TcFilter(w.hook, f.priority), w.owner,
                                  f"priority changed to {w.priority}"))
    for hook in sorted(seen.keys() - wanted_hooks):
        s = seen[hook]
        for f in s.ours:
            steps.append(Step(AttachAction.DETACH, TcFilter(hook, f.priority),
                              leftover_owner(s), "no longer in YAML"))
        if not s.ours and s.pinned_id is not None:  # device gone: only the pin is left
            steps.append(Step(AttachAction.DETACH, TcFilter(hook, 0), leftover_owner(s),
                              "device gone; removing the leftover pin"))
    # stable: attach before detach (a moved filter is never missing)
    steps.sort(key=lambda op: op.action is AttachAction.DETACH)
    return out
