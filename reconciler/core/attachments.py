"""What attaching programs shares, whatever the data path: a TC hook and what the kernel
holds there, the actions, and the attachment part of a plan (TC filters, sk_lookup links,
cgroup links, host plumbing). A filter is bpfsync's when it sits at bpfsync's handle with a
name starting with FILTER_PREFIX; anything else is foreign and never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.attach import AttachOperation
    from reconciler.intercept.plumbing import PlumbingOperation
    from reconciler.steering.links import LinkOperation
    from reconciler.tproxy.cgroups import CgroupOperation

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


@dataclass
class AttachPlan:
    operations: list[AttachOperation] = field(default_factory=list)
    conflicts: list[Condition] = field(default_factory=list)  # foreign things in our place
    warnings: list[Condition] = field(default_factory=list)
    waiting: list[Condition] = field(default_factory=list)  # what does not exist yet
    in_place: int = 0  # attachments already right
    links: list[LinkOperation] = field(default_factory=list)  # the sk_lookup link
    cgroups: list[CgroupOperation] = field(default_factory=list)  # transparent proxies' links
    plumbing: list[PlumbingOperation] = field(default_factory=list)  # Intercepts' routing
    forget_hosts: list[str | None] = field(default_factory=list)  # ic_host records to drop

    def changes(self) -> list[AttachOperation | LinkOperation | CgroupOperation
                              | PlumbingOperation]:
        """Every attachment operation, in execution order: routing is set up before the
        programs that need it and taken down after them."""
        up = [op for op in self.plumbing if op.action is not AttachAction.DETACH]
        down = [op for op in self.plumbing if op.action is AttachAction.DETACH]
        return [*up, *self.links, *self.operations, *self.cgroups, *down]


