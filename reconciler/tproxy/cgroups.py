"""Cgroup attachments of transparent proxies: which programs should be linked to which
cgroups, what is, and the steps between them (core/attachments.py). Pure; tproxy/attach.py
observes and executes through tproxy/host.py.

Every attachment is a BPF link pinned at <pin root>/links/cg:<cgroup>:<hook>, so it outlives
every process, and is multi-attach: programs others attached to the same cgroup run as
before and are never looked at. A changed program is swapped into the same link
(BPF_LINK_UPDATE): interception never pauses.

The data path runs in a cgroup of its own, derived from the pin root, which bpfsync creates:
its listeners are made there (so getsockopt(SO_ORIGINAL_DST) on their accepted sockets runs
tp_getsockopt, attached there) and its outbound connections are never intercepted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from reconciler.core.attachments import WAITING, AttachAction, Condition, Phase, Planned, Step
from reconciler.core.naming import escape_path
from reconciler.core.state import DesiredState
from reconciler.steering.model import proxy_netns
from reconciler.tproxy.model import TransparentProxy

NAME = "tproxy"  # the capability's name: its host facts are handed back under it
LINK_PREFIX = "cg:"
HOOKS = ("getsockopt", "sock_ops", "connect4", "connect6")  # attach order; detach in reverse
CONNECT_HOOKS = ("connect4", "connect6")  # one program per TransparentProxy
DATAPATH_PARENT = "/bpfsync"
ORPHAN_OWNER = "TransparentProxy/(cgroup link)"


def datapath_cgroup(pin_root: Path) -> str:
    """The data path's cgroup for a pin root, e.g. /bpfsync/sys-fs-bpf-bpfsync (named as its
    run directory is, so that two pin roots never share one)."""
    return f"{DATAPATH_PARENT}/{escape_path(pin_root)}"


def level(cgroup: str) -> int:
    """Depth in the hierarchy (the root "/" is 0), as bpf_get_current_ancestor_cgroup_id
    counts it."""
    return len([p for p in cgroup.split("/") if p])


def program(hook: str, tp_id: int | None = None) -> str:
    """Name of the BPF function for a hook (connect4 and connect6 have one per
    TransparentProxy)."""
    return f"tp_{hook}_{tp_id}" if hook in CONNECT_HOOKS else f"tp_{hook}"


@dataclass(frozen=True)
class HostFacts:
    """Host facts (tproxy/host.py reads them) that the desired tables of transparent proxies and
    their cgroup links depend on."""

    netns_cookie: int | None = None  # of the Proxies' namespace; None: it does not exist
    cgroup_ids: dict[str, int] = field(default_factory=dict)  # existing cgroups only


@dataclass(frozen=True, slots=True, order=True)
class CgroupHook:
    cgroup: str
    hook: str

    def __str__(self) -> str:
        return f"cgroup {self.cgroup} {self.hook}"

    @property
    def pin_name(self) -> str:
        # bpffs refuses '.', '/' cannot be in a name: percent-encode both (and ':')
        return f"{LINK_PREFIX}{quote(self.cgroup, safe='').replace('.', '%2E')}:{self.hook}"

    @classmethod
    def from_pin_name(cls, name: str) -> CgroupHook | None:
        if not name.startswith(LINK_PREFIX) or name.endswith("~new"):
            return None
        path, _, hook = name[len(LINK_PREFIX):].rpartition(":")
        if hook not in HOOKS or not path:
            return None
        return cls(unquote(path), hook)


@dataclass(frozen=True, slots=True)
class WantedCgroup:
    hook: CgroupHook
    program: str
    owner: str


@dataclass(frozen=True, slots=True)
class SeenCgroup:
    hook: CgroupHook
    link_id: int
    program: str | None  # name of the program the link runs
    tag: str | None
    alive: bool  # the link's cgroup is the one at that path now (not removed or recreated)


@dataclass(frozen=True, slots=True)
class CgroupLink:
    """The pinned link at a cgroup hook, running program (None: detach)."""

    hook: CgroupHook
    program: str | None = None

    def describe(self) -> str:
        return f"{self.hook}: {self.program or 'link'}"

    @property
    def place(self) -> str:
        return str(self.hook)

    def to_json(self) -> dict[str, Any]:
        return {"link": {"type": "cgroup", "cgroup": self.hook.cgroup, "hook": self.hook.hook},
                "program": self.program}

    def phase(self, action: AttachAction) -> Phase:
        return Phase.PROGRAMS


def wanted(state: DesiredState, pin_root: Path) -> list[WantedCgroup]:
    out = []
    for tp in sorted(state.of(TransparentProxy).values(), key=lambda x: x.id):
        out.append(WantedCgroup(CgroupHook(tp.cgroup, "sock_ops"), program("sock_ops"), tp.ref))
        for hook in CONNECT_HOOKS:
            out.append(WantedCgroup(CgroupHook(tp.cgroup, hook), program(hook, tp.id), tp.ref))
    if state.of(TransparentProxy):
        owner = f"TransparentProxy/{min(state.of(TransparentProxy))}"
        out.insert(0, WantedCgroup(CgroupHook(datapath_cgroup(pin_root), "getsockopt"),
                                   program("getsockopt"), owner))
    return out


def compute_cgroup_plan(want: list[WantedCgroup], seen: list[SeenCgroup],
                        exists: dict[str, bool], tags: dict[str, frozenset[str]] | None
                        ) -> Planned:
    """exists: cgroup path -> present on this host; tags: acceptable tags by program, None
    when programs cannot be compiled yet. Cgroups that do not exist are waited for."""
    out = Planned()
    steps: list[Step] = []
    by_hook = {s.hook: s for s in seen}
    wanted_hooks = {w.hook for w in want}
    for s in seen:
        if s.hook not in wanted_hooks or not s.alive:
            why = ("the cgroup was removed or recreated" if not s.alive else
                   "no longer in YAML")
            owner = next((w.owner for w in want if w.hook == s.hook), ORPHAN_OWNER)
            steps.append(Step(AttachAction.DETACH, CgroupLink(s.hook), owner, why))
    waiting: set[str] = set()
    for w in want:
        if not exists.get(w.hook.cgroup, False):
            if w.hook.cgroup not in waiting:
                waiting.add(w.hook.cgroup)
                out.condition(w.owner, f"cgroup {w.hook.cgroup} not found; interception not "
                              f"attached there until it exists", WAITING)
            continue
        s = by_hook.get(w.hook)
        target = CgroupLink(w.hook, w.program)
        if s is None or not s.alive:
            steps.append(Step(AttachAction.ATTACH, target, w.owner, "declared in YAML"))
        elif tags is not None and (s.program != w.program or s.tag not in tags.get(
                w.program, frozenset())):
            steps.append(Step(AttachAction.REPLACE, target, w.owner,
                              "program changed (swapped in the same link)"))
        else:
            out.in_place += 1
    order = {h: i for i, h in enumerate(HOOKS)}
    detach = sorted((o for o in steps if o.action is AttachAction.DETACH),
                    key=lambda o: -order[o.target.hook.hook])
    rest = sorted((o for o in steps if o.action is not AttachAction.DETACH),
                  key=lambda o: order[o.target.hook.hook])
    # Detaches first: a dead link may hold the pin name the new one takes.
    out.steps = detach + rest
    return out


def plan(state: DesiredState, pin_root: Path, seen: list[SeenCgroup], facts: HostFacts,
         tags: dict[str, frozenset[str]] | None) -> Planned:
    """The cgroup links state wants against those seen. The data path's own cgroup counts as
    existing: apply creates it (Capability.facts) before anything is attached."""
    tps = state.of(TransparentProxy)
    if not tps and not seen:
        return Planned()
    want = wanted(state, pin_root)
    exists = {w.hook.cgroup: w.hook.cgroup in facts.cgroup_ids
              or w.hook.cgroup == datapath_cgroup(pin_root) for w in want}
    out = compute_cgroup_plan(want, seen, exists, tags)
    if tps and facts.netns_cookie is None:  # said first: nothing works without it
        out.conditions.insert(0, Condition(
            f"TransparentProxy/{min(tps)}", f"network namespace {proxy_netns(state)} of the "
            f"Proxies not found; nothing is intercepted until it exists", WAITING))
    return out
