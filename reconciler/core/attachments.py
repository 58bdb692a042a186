"""The one protocol every attachment follows, whatever the data path: TC filters, sk_lookup
links, cgroup links and host plumbing are each an attachment *part* that observes what the
kernel holds, plans Steps against what the desired state wants (pure), and executes them.

A Step is an action on a Target; the Target (each part's own dataclass) says what and where,
how it is shown, and in which Phase it runs. Planning returns conditions (waiting, conflict,
warning) beside the steps instead of writing into a shared plan.

Also here: a TC hook and what the kernel holds there. A filter is bpfsync's when it sits at
bpfsync's handle with a name starting with FILTER_PREFIX; anything else is foreign and never
touched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from itertools import groupby
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from reconciler.core.state import DesiredState
    from reconciler.kernel.programs import Compiler

WAITING, CONFLICT, WARNING = "waiting", "conflict", "warning"


class Condition(str):
    """Something planning found about a resource's attachments: WAITING (a device, namespace
    or cgroup that does not exist yet), CONFLICT (something bpfsync did not create holds its
    place; nothing is applied) or WARNING. It reads as "Kind/name: message", which is how
    every list of them is printed; owner, kind and message are there for whoever needs them
    apart (the daemon's per-resource status)."""

    owner: str
    kind: str
    message: str

    def __new__(cls, owner: str, message: str, kind: str) -> Condition:
        self = super().__new__(cls, f"{owner}: {message}")
        self.owner, self.kind, self.message = owner, kind, message
        return self

    def __getnewargs__(self) -> tuple[str, str, str]:  # type: ignore[override]
        return self.owner, self.message, self.kind


FILTER_HANDLE = 0xB5F
FILTER_PREFIX = "bpfsync:"
DIRECTIONS = ("ingress", "egress")


@dataclass(frozen=True, slots=True, order=True)
class Hook:
    """One TC hook: a direction of a device in a network namespace (None: bpfsync's own)."""

    device: str
    netns: str | None
    direction: str

    def __str__(self) -> str:
        where = f"{self.device}@{self.netns}" if self.netns else self.device
        return f"{where} {self.direction}"

    @property
    def pin_name(self) -> str:
        """File name of the program pin. ':' cannot occur in device or netns names; '.' can
        (eth0.100) but bpffs refuses it in names, so it is escaped, as is the escape."""
        return f"{escape_pin(self.device)}:{escape_pin(self.netns or '')}:{self.direction}"

    @classmethod
    def from_pin_name(cls, name: str) -> Hook | None:
        parts = name.split(":")
        if len(parts) != 3 or parts[2] not in DIRECTIONS or not parts[0]:
            return None
        return cls(unescape_pin(parts[0]), unescape_pin(parts[1]) or None, parts[2])


def escape_pin(name: str) -> str:
    """A name as a bpffs file name: '.' is refused there, so it is escaped (and the escape)."""
    return name.replace("%", "%25").replace(".", "%2E")


def unescape_pin(name: str) -> str:
    return name.replace("%2E", ".").replace("%25", "%")


@dataclass(frozen=True, slots=True)
class Filter:
    """A cls_bpf filter found on a hook."""

    priority: int
    handle: int
    name: str
    prog_id: int | None
    tag: str | None

    @property
    def ours(self) -> bool:
        return self.handle == FILTER_HANDLE and self.name.startswith(FILTER_PREFIX)

    def describe(self) -> str:
        return f"prio {self.priority} handle {self.handle:#x} {self.name or '(unnamed)'}"


@dataclass(slots=True)
class Seen:
    """What the kernel holds at one hook."""

    hook: Hook
    device_present: bool
    filters: list[Filter] = field(default_factory=list)
    pinned_id: int | None = None  # program id behind our pin, if pinned
    mtu: int | None = None
    others_mtu: int | None = None  # largest MTU of the namespace's other devices

    @property
    def ours(self) -> list[Filter]:
        return [f for f in self.filters if f.ours]


class AttachAction(Enum):
    ATTACH = "attach"
    REPLACE = "replace"
    DETACH = "detach"

    @property
    def sign(self) -> str:
        return {"attach": "+", "replace": "~", "detach": "-"}[self.value]


class Phase(IntEnum):
    """When a step runs within the attachments of an apply (execute.py): host state the
    programs need is set up before any program and taken down after them."""

    SETUP = 0
    PROGRAMS = 1
    TEARDOWN = 2


class Target(Protocol):
    """What a step acts on: a part's own frozen dataclass."""

    def describe(self) -> str:
        """One line, without values that could hold secrets: as diff shows it."""
        ...

    def to_json(self) -> dict[str, Any]:
        """Its fields in the JSON plan (e.g. {"hook": {...}, "program": ...})."""
        ...

    @property
    def place(self) -> str:
        """What it attaches to, the same whatever the action and program: the in-memory
        kernel (reconciler/testing) keys what is attached on it."""
        ...

    def phase(self, action: AttachAction) -> Phase: ...


@dataclass(frozen=True, slots=True)
class Step:
    """One attachment change: action on target, for owner ("Kind/name"; made up for what no
    resource claims), with the reason diff prints. drift: the kernel was changed outside
    bpfsync (the daemon's drift policy decides), rather than the YAML."""

    action: AttachAction
    target: Any  # a Target
    owner: str
    reason: str
    drift: bool = False

    def describe(self) -> str:
        return str(self.target.describe())

    @property
    def phase(self) -> Phase:
        return Phase(self.target.phase(self.action))

    @property
    def is_change(self) -> bool | None:
        """Drift or change as far as the step itself tells (core/plan.Change): drift when it
        repairs what was altered outside bpfsync; a change when it removes what no resource
        wants (its owner is gone); None: the owner's history decides (core/drift.py)."""
        if self.drift:
            return False
        return True if self.action is AttachAction.DETACH else None


@dataclass
class Planned:
    """What one part's planning found: the steps in its own order, the conditions of the
    resources it could not (yet) attach, and how many attachments were already right."""

    steps: list[Step] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    in_place: int = 0

    def condition(self, owner: str, message: str, kind: str) -> None:
        self.conditions.append(Condition(owner, message, kind))


@dataclass
class AttachPlan:
    """The attachment half of a plan: every part's steps, in execution order (by phase, then
    the parts' order, then each part's own), and their conditions."""

    steps: list[Step] = field(default_factory=list)
    conditions: list[Condition] = field(default_factory=list)
    in_place: int = 0  # attachments already right

    @classmethod
    def of(cls, parts: list[Planned]) -> AttachPlan:
        steps = [s for p in parts for s in p.steps]
        steps.sort(key=lambda s: s.phase)  # stable: within a phase, the parts' order
        return cls(steps, [c for p in parts for c in p.conditions],
                   sum(p.in_place for p in parts))

    def _kind(self, kind: str) -> list[Condition]:
        return [c for c in self.conditions if c.kind == kind]

    @property
    def conflicts(self) -> list[Condition]:
        """Foreign things in bpfsync's place: nothing is applied while there is one."""
        return self._kind(CONFLICT)

    @property
    def waiting(self) -> list[Condition]:
        """What does not exist yet (devices, namespaces, cgroups)."""
        return self._kind(WAITING)

    @property
    def warnings(self) -> list[Condition]:
        return self._kind(WARNING)

    def changes(self) -> list[Step]:
        return list(self.steps)


@dataclass(frozen=True)
class AttachContext:
    """What a part plans and executes with: the desired state, the pin root, the compiler
    (None when programs cannot be compiled yet: the pinned tables they use do not exist, so
    any attached program is taken as current) and each data path's host facts by
    capability name (Capability.facts)."""

    state: DesiredState
    pin_root: Path
    compiler: Compiler | None = None
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Attachments:
    """An attachment part. plan(context): observe the kernel and return the steps from what
    is to what context.state wants (the diff itself pure, in the part's planner module).
    execute(context, steps): run a run of consecutive steps of this part, in order; each
    idempotent (attaching what is there, detaching what is gone are no-ops); raises on
    failure. targets: the Target types its steps carry (how a step finds its part).

    undo(context, steps), before steps are executed (the kernel as it is then): the steps
    that put back exactly what steps change, in the order to run them (for a change that
    may have to be reverted: `apply --confirm-within`), and the steps it cannot undo."""

    name: str
    targets: tuple[type, ...]
    plan: Callable[[AttachContext], Planned]
    execute: Callable[[AttachContext, list[Step]], None]
    undo: Callable[[AttachContext, list[Step]], Undo] | None = None


Undo = tuple[list["Step"], list["Step"]]  # (steps that undo, steps that cannot be undone)
UNDO_REASON = "reverting an unconfirmed apply"
CONFIRM_DIR = "confirm"  # under the pin root: programs kept until a change is settled


@dataclass(frozen=True, slots=True)
class Kept:
    """The program `of` (a part's own target) ran before an apply that replaced it or
    removed it, kept pinned at pin (<pin root>/confirm/) until the change is confirmed; a
    revert puts it back there (ATTACH: made again, REPLACE: swapped in) and unpins it."""

    of: Any
    pin: str

    def describe(self) -> str:
        return f"{self.of.place}: the program it ran before"

    @property
    def place(self) -> str:
        return str(self.of.place)

    def to_json(self) -> dict[str, Any]:
        return {**self.of.to_json(), "program": "the program it ran before"}

    def phase(self, action: AttachAction) -> Phase:
        return Phase(self.of.phase(action))


def undo_links(steps: list[Step], detached: Callable[[Any], Any],
               keep: Callable[[Any], str | None]) -> Undo:
    """The undo of a part of pinned links: an ATTACH by a DETACH of detached(target); a
    REPLACE or DETACH by putting back the program keep(target) pinned (None: no link
    there, nothing to undo by)."""
    back: list[Step] = []
    cannot: list[Step] = []
    for s in reversed(steps):
        if s.action is AttachAction.ATTACH:
            back.append(Step(AttachAction.DETACH, detached(s.target), s.owner, UNDO_REASON))
        elif (pin := keep(s.target)) is None:
            cannot.append(s)
        else:
            again = AttachAction.REPLACE if s.action is AttachAction.REPLACE else (
                AttachAction.ATTACH)
            back.append(Step(again, Kept(detached(s.target), pin), s.owner, UNDO_REASON))
    return back, cannot


def runs(steps: list[Step], part_of: Callable[[Step], Attachments]
         ) -> Iterator[tuple[Attachments, list[Step]]]:
    """Consecutive steps grouped by the part that executes them, in order."""
    for part, group in groupby(steps, key=part_of):
        yield part, list(group)
