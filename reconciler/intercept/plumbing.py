"""Host plumbing of redirecting Intercepts, as declared state: what a namespace needs, what
it has, and the operations between them. Pure; intercept/host.py observes and executes.

Per namespace with an Intercept: the policy rule `fwmark MARK/MARK lookup TABLE`,
the route `local default dev lo table TABLE`, and net.ipv4.conf.lo.accept_local=1 (the seed's
three commands). bpfsync's rules and routes carry protocol RTPROT_BPFSYNC, so they are told
apart from everyone else's without any record; the sysctl's previous value cannot be read
back from the kernel once changed, so it is kept in the pinned ic_host map (with the
namespace's cookie: a recreated namespace starts from its defaults again) and restored when
the last redirecting Intercept of the namespace goes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from reconciler.core.attachments import CONFLICT, WAITING, AttachAction, Condition
from reconciler.intercept import tables as ict
from reconciler.intercept.model import Intercept, Routing

if TYPE_CHECKING:
    from reconciler.core.attachments import AttachPlan

RTPROT_BPFSYNC = 181
SYSCTL = "net.ipv4.conf.lo.accept_local"
ORPHAN_OWNER = "Intercept/(removed)"


@dataclass(frozen=True, slots=True, order=True)
class PolicyRule:
    priority: int
    mark: int
    mask: int
    table: int

    def __str__(self) -> str:
        return (f"ip rule priority {self.priority} fwmark {self.mark:#x}/{self.mask:#x} "
                f"lookup {self.table}")


@dataclass(frozen=True, slots=True)
class WantedPlumbing:
    netns: str | None
    routing: Routing
    owner: str

    @property
    def rule(self) -> PolicyRule:
        r = self.routing
        return PolicyRule(r.rule_priority, r.mark, r.mark, r.table)


@dataclass(frozen=True, slots=True)
class Record:
    """What ic_host holds for a namespace."""

    cookie: int
    accept_local_before: int  # IC_SYSCTL_UNTOUCHED: bpfsync did not change it


@dataclass(slots=True)
class SeenPlumbing:
    netns: str | None
    exists: bool
    cookie: int | None = None
    rules: list[PolicyRule] = field(default_factory=list)  # bpfsync's (protocol 181)
    routes: list[int] = field(default_factory=list)  # tables holding bpfsync's local default
    other_defaults: dict[int, str] = field(default_factory=dict)  # table -> someone's default
    accept_local: int | None = None
    record: Record | None = None

    @property
    def current_record(self) -> Record | None:
        """The record, unless it belongs to an earlier namespace of the same name."""
        r = self.record
        return r if r is not None and r.cookie == self.cookie else None


@dataclass(frozen=True, slots=True)
class PlumbingOperation:
    action: AttachAction
    netns: str | None
    item: str  # "rule", "route" or "sysctl"
    rule: PolicyRule | None = None  # rule
    table: int = 0  # route
    value: int = 0  # sysctl: the value to write
    before: int | None = None  # sysctl: the value to remember (set) or restore (remove)
    owner: str = ORPHAN_OWNER
    reason: str = ""
    drift: bool = False

    @property
    def where(self) -> str:
        return f"netns {self.netns}" if self.netns else "host"

    def describe(self) -> str:
        if self.item == "rule":
            what = str(self.rule)
        elif self.item == "route":
            what = f"ip route local default dev lo table {self.table}"
        else:
            what = f"sysctl {SYSCTL}={self.value}"
        return f"{what} ({self.where})"


def wanted(intercepts: dict[str, Intercept]) -> dict[str | None, WantedPlumbing]:
    """One plumbing per namespace with an Intercept (checks ensure they agree). Also where
    none redirects at the moment: connections redirected before a rule change keep their
    way to the proxy until they end; the policy rule matches marked packets only."""
    out: dict[str | None, WantedPlumbing] = {}
    for ic in sorted(intercepts.values(), key=lambda i: i.name):
        if ic.netns not in out:
            out[ic.netns] = WantedPlumbing(ic.netns, ic.routing, ic.ref)
    return out


def _add(seen: SeenPlumbing, w: WantedPlumbing, plan: AttachPlan,
         ops: list[PlumbingOperation]) -> None:
    # Drift, not news: bpfsync had made plumbing in this namespace and a part is gone.
    made = seen.current_record is not None
    rule = w.rule
    for r in seen.rules:
        if r != rule:
            ops.append(PlumbingOperation(AttachAction.DETACH, w.netns, "rule", rule=r,
                                         owner=w.owner, reason="routing changed"))
    if rule in seen.rules:
        plan.in_place += 1
    else:
        ops.append(PlumbingOperation(AttachAction.ATTACH, w.netns, "rule", rule=rule,
                                     owner=w.owner, drift=made,
                                     reason="removed outside bpfsync" if made else
                                     "redirected connections need it"))
    table = w.routing.table
    for tbl in seen.routes:
        if tbl != table:
            ops.append(PlumbingOperation(AttachAction.DETACH, w.netns, "route", table=tbl,
                                         owner=w.owner, reason="routing changed"))
    if table in seen.routes:
        plan.in_place += 1
    elif table in seen.other_defaults:
        what = seen.other_defaults[table]
        if what != "local dev lo":
            plan.conflicts.append(Condition(
                w.owner, f"table {table} ({'netns ' + w.netns if w.netns else 'host'}) "
                f"already has a default route bpfsync did not create ({what}); left "
                f"untouched. Choose another spec.routing.table", CONFLICT))
        else:
            plan.in_place += 1  # someone's own `local default dev lo`: it does the job
    else:
        ops.append(PlumbingOperation(AttachAction.ATTACH, w.netns, "route", table=table,
                                     owner=w.owner, drift=made,
                                     reason="removed outside bpfsync" if made else
                                     "redirected connections need it"))
    if seen.accept_local == 1:
        plan.in_place += 1
    else:
        record = seen.current_record
        before = record.accept_local_before if record else seen.accept_local
        ops.append(PlumbingOperation(AttachAction.REPLACE, w.netns, "sysctl", value=1,
                                     before=before, owner=w.owner, drift=made,
                                     reason=f"was {seen.accept_local}"
                                     + (", changed outside bpfsync" if made else "")))


def _remove(seen: SeenPlumbing, ops: list[PlumbingOperation], reason: str) -> None:
    for r in seen.rules:
        ops.append(PlumbingOperation(AttachAction.DETACH, seen.netns, "rule", rule=r,
                                     reason=reason))
    for tbl in seen.routes:
        ops.append(PlumbingOperation(AttachAction.DETACH, seen.netns, "route", table=tbl,
                                     reason=reason))
    record = seen.current_record
    if record is not None and record.accept_local_before != ict.IC_SYSCTL_UNTOUCHED and (
            seen.accept_local == 1):
        ops.append(PlumbingOperation(AttachAction.DETACH, seen.netns, "sysctl",
                                     value=record.accept_local_before,
                                     before=record.accept_local_before,
                                     reason=reason + f"; restoring {record.accept_local_before}"))


def compute_plumbing_plan(want: dict[str | None, WantedPlumbing],
                          seen: dict[str | None, SeenPlumbing],
                          plan: AttachPlan) -> list[PlumbingOperation]:
    """seen: every wanted namespace and every namespace ic_host has a record of. Namespaces
    that do not exist are waited for (wanted) or forgotten (not wanted)."""
    ops: list[PlumbingOperation] = []
    for netns, w in sorted(want.items(), key=lambda kv: kv[0] or ""):
        s = seen.get(netns) or SeenPlumbing(netns, exists=False)
        if not s.exists:
            plan.waiting.append(Condition(
                w.owner, f"network namespace {netns} not found; routing for redirected "
                f"connections not set up until it exists", WAITING))
            continue
        _add(s, w, plan, ops)
    for netns, s in sorted(seen.items(), key=lambda kv: kv[0] or ""):
        if netns not in want and s.exists:
            _remove(s, ops, "no Intercept here any more")
    return ops


def forget(seen: dict[str | None, SeenPlumbing], want: dict[str | None, WantedPlumbing]
           ) -> list[str | None]:
    """Namespaces whose ic_host record goes once their plumbing is removed (or that are gone)."""
    return sorted((n for n, s in seen.items() if n not in want and s.record is not None),
                  key=lambda n: n or "")
