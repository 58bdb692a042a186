"""Host plumbing of redirecting Intercepts, as declared state: what a namespace needs, what it
has, and the steps between them (core/attachments.py). Pure; intercept/attach.py observes and
executes through intercept/host.py. Per namespace with an Intercept: the policy rule `fwmark
MARK/MARK lookup TABLE`, the route `local default dev lo table TABLE`, and
net.ipv4.conf.lo.accept_local=1 (the seed's three commands); where an Intercept of the
namespace redirects IPv6 destinations, the IPv6 rule and route too (`ip -6`; IPv6 has no
accept_local to set), kept from then on like the IPv4 ones; a namespace or host without IPv6
needs none.
bpfsync's rules and routes carry protocol RTPROT_BPFSYNC, so they are told apart from everyone
else's without any record; the sysctl's previous value cannot be read back from the kernel
once changed, so it is kept in the pinned ic_host map (with the namespace's cookie: a
recreated namespace starts from its defaults again) and restored when the last redirecting
Intercept of the namespace goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reconciler.core.attachments import (
    CONFLICT,
    UNDO_REASON,
    WAITING,
    AttachAction,
    Phase,
    Planned,
    Step,
    Undo,
)
from reconciler.intercept import tables as ict
from reconciler.intercept.model import Intercept, Routing

RTPROT_BPFSYNC = 181
SYSCTL = "net.ipv4.conf.lo.accept_local"
ORPHAN_OWNER = "Intercept/(removed)"


@dataclass(frozen=True, slots=True, order=True)
class PolicyRule:
    priority: int
    mark: int
    mask: int
    table: int
    family: int = 4  # 4: `ip rule`, 6: `ip -6 rule`

    def __str__(self) -> str:
        ip = "ip -6" if self.family == 6 else "ip"
        return (f"{ip} rule priority {self.priority} fwmark {self.mark:#x}/{self.mask:#x} "
                f"lookup {self.table}")


@dataclass(frozen=True, slots=True)
class WantedPlumbing:
    netns: str | None
    routing: Routing
    owner: str
    ipv6: bool = False  # an Intercept here redirects IPv6 destinations

    def rule_of(self, family: int) -> PolicyRule:
        r = self.routing
        return PolicyRule(r.rule_priority, r.mark, r.mark, r.table, family)

    @property
    def rule(self) -> PolicyRule:
        return self.rule_of(4)


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
    rules: list[PolicyRule] = field(default_factory=list)  # bpfsync's (protocol 181), both families
    routes: list[int] = field(default_factory=list)  # tables holding bpfsync's local default
    other_defaults: dict[int, str] = field(default_factory=dict)  # table -> someone's default
    routes6: list[int] = field(default_factory=list)  # the same for IPv6
    other_defaults6: dict[int, str] = field(default_factory=dict)
    accept_local: int | None = None
    record: Record | None = None

    @property
    def current_record(self) -> Record | None:
        """The record, unless it belongs to an earlier namespace of the same name."""
        r = self.record
        return r if r is not None and r.cookie == self.cookie else None


@dataclass(frozen=True, slots=True)
class Plumbing:
    """One piece of a namespace's plumbing (netns None: the host's): item "rule", "route",
    "sysctl", or "record" (bpfsync's ic_host record of it, forgotten once the plumbing is
    gone)."""

    netns: str | None
    item: str
    rule: PolicyRule | None = None  # rule
    table: int = 0  # route
    value: int = 0  # sysctl: the value to write
    before: int | None = None  # sysctl: the value to remember (set) or restore (remove)
    family: int = 4  # route: 4 or 6 (a rule's family is the rule's)

    @property
    def where(self) -> str:
        return f"netns {self.netns}" if self.netns else "host"

    def describe(self) -> str:
        if self.item == "rule":
            what = str(self.rule)
        elif self.item == "route":
            ip = "ip -6" if self.family == 6 else "ip"
            what = f"{ip} route local default dev lo table {self.table}"
        elif self.item == "sysctl":
            what = f"sysctl {SYSCTL}={self.value}"
        else:
            what = "bpfsync's record of its plumbing (ic_host)"
        return f"{what} ({self.where})"

    @property
    def place(self) -> str:
        route = f"{'IPv6 ' if self.family == 6 else ''}route table {self.table}"
        what = {"rule": str(self.rule), "route": route,
                "sysctl": f"sysctl {SYSCTL}"}.get(self.item, "record")
        return f"{what} ({self.where})"

    def to_json(self) -> dict[str, Any]:
        item: dict[str, Any] = {"type": self.item, "netns": self.netns}
        if self.rule is not None:
            r = self.rule
            item.update(priority=r.priority, fwmark=r.mark, mask=r.mask, table=r.table)
            if r.family == 6:
                item["family"] = 6
        elif self.item == "route":
            item.update(route="local default dev lo", table=self.table)
            if self.family == 6:
                item["family"] = 6
        elif self.item == "sysctl":
            item.update(sysctl=SYSCTL, value=self.value)
        return {"plumbing": item}

    def phase(self, action: AttachAction) -> Phase:
        """Set up before the programs that need it, taken down after them."""
        return Phase.TEARDOWN if action is AttachAction.DETACH else Phase.SETUP


def wanted(intercepts: dict[str, Intercept]) -> dict[str | None, WantedPlumbing]:
    """One plumbing per namespace with an Intercept (checks ensure they agree). Also where
    none redirects at the moment: connections redirected before a rule change keep their
    way to the proxy until they end; the policy rule matches marked packets only."""
    out: dict[str | None, WantedPlumbing] = {}
    ipv6 = {ic.netns for ic in intercepts.values() if any(
        r.action == "redirect" and any(d.version == 6 for d in r.destinations) for r in ic.rules)}
    for ic in sorted(intercepts.values(), key=lambda i: i.name):
        if ic.netns not in out:
            out[ic.netns] = WantedPlumbing(ic.netns, ic.routing, ic.ref, ic.netns in ipv6)
    return out


def _step(out: Planned, action: AttachAction, target: Plumbing, owner: str, reason: str,
          drift: bool = False) -> None:
    out.steps.append(Step(action, target, owner, reason, drift))


def _add_family(seen: SeenPlumbing, w: WantedPlumbing, out: Planned, family: int) -> None:
    """One family's policy rule and local default route: made (or put back) when wanted, the
    ones bpfsync made and no longer wants taken away."""
    made = seen.current_record is not None
    rules = [r for r in seen.rules if r.family == family]
    routes, others = ((seen.routes, seen.other_defaults) if family == 4
                      else (seen.routes6, seen.other_defaults6))
    # IPv6's are made where an IPv6 destination is redirected, then kept like IPv4's while the
    # namespace has an Intercept (connections redirected before a rule change keep their way)
    wanted = family == 4 or w.ipv6 or bool(rules or routes)
    rule = w.rule_of(family)
    # Drift, not news: bpfsync had made plumbing in this namespace and a part is gone.
    gone = "removed outside bpfsync" if made else "redirected connections need it"
    why = "routing changed"
    for r in rules:
        if r != rule or not wanted:
            _step(out, AttachAction.DETACH, Plumbing(w.netns, "rule", rule=r), w.owner, why)
    if wanted and rule in rules:
        out.in_place += 1
    elif wanted:
        _step(out, AttachAction.ATTACH, Plumbing(w.netns, "rule", rule=rule), w.owner, gone,
              made)
    table = w.routing.table
    for tbl in routes:
        if tbl != table or not wanted:
            _step(out, AttachAction.DETACH, Plumbing(w.netns, "route", table=tbl, family=family),
                  w.owner, why)
    if not wanted:
        return
    if table in routes:
        out.in_place += 1
    elif table in others:
        what = others[table]
        if what != "local dev lo":
            out.condition(
                w.owner, f"{'IPv6 ' if family == 6 else ''}table {table} "
                f"({'netns ' + w.netns if w.netns else 'host'}) already has a default route "
                f"bpfsync did not create ({what}); left untouched. Choose another "
                f"spec.routing.table", CONFLICT)
        else:
            out.in_place += 1  # someone's own `local default dev lo`: it does the job
    else:
        _step(out, AttachAction.ATTACH, Plumbing(w.netns, "route", table=table, family=family),
              w.owner, gone, made)


def _add(seen: SeenPlumbing, w: WantedPlumbing, out: Planned) -> None:
    made = seen.current_record is not None
    _add_family(seen, w, out, 4)
    _add_family(seen, w, out, 6)
    if seen.accept_local == 1:
        out.in_place += 1
    else:
        record = seen.current_record
        before = record.accept_local_before if record else seen.accept_local
        _step(out, AttachAction.REPLACE, Plumbing(w.netns, "sysctl", value=1, before=before),
              w.owner, f"was {seen.accept_local}" + (", changed outside bpfsync" if made else ""),
              made)


def _remove(seen: SeenPlumbing, out: Planned, reason: str) -> None:
    for r in seen.rules:
        _step(out, AttachAction.DETACH, Plumbing(seen.netns, "rule", rule=r), ORPHAN_OWNER,
              reason)
    for tbl in seen.routes:
        _step(out, AttachAction.DETACH, Plumbing(seen.netns, "route", table=tbl), ORPHAN_OWNER,
              reason)
    for tbl in seen.routes6:
        _step(out, AttachAction.DETACH, Plumbing(seen.netns, "route", table=tbl, family=6),
              ORPHAN_OWNER, reason)
    record = seen.current_record
    if record is not None and record.accept_local_before != ict.IC_SYSCTL_UNTOUCHED and (
            seen.accept_local == 1):
        was = record.accept_local_before
        _step(out, AttachAction.DETACH, Plumbing(seen.netns, "sysctl", value=was, before=was),
              ORPHAN_OWNER, reason + f"; restoring {was}")


def compute_plumbing_plan(want: dict[str | None, WantedPlumbing],
                          seen: dict[str | None, SeenPlumbing]) -> Planned:
    """seen: every wanted namespace and every namespace ic_host has a record of. Namespaces
    that do not exist are waited for (wanted) or forgotten (not wanted): the records of
    namespaces left behind are dropped last, once their plumbing is removed."""
    out = Planned()
    for netns, w in sorted(want.items(), key=lambda kv: kv[0] or ""):
        s = seen.get(netns) or SeenPlumbing(netns, exists=False)
        if not s.exists:
            out.condition(w.owner, f"network namespace {netns} not found; routing for "
                          f"redirected connections not set up until it exists", WAITING)
            continue
        _add(s, w, out)
    for netns, s in sorted(seen.items(), key=lambda kv: kv[0] or ""):
        if netns not in want and s.exists:
            _remove(s, out, "no Intercept here any more")
    for netns in forget(seen, want):
        gone = not seen[netns].exists
        _step(out, AttachAction.DETACH, Plumbing(netns, "record"), ORPHAN_OWNER,
              "its namespace is gone" if gone else "no Intercept here any more")
    return out


def forget(seen: dict[str | None, SeenPlumbing], want: dict[str | None, WantedPlumbing]
           ) -> list[str | None]:
    """Namespaces whose ic_host record goes once their plumbing is removed (or that are gone)."""
    return sorted((n for n, s in seen.items() if n not in want and s.record is not None),
                  key=lambda n: n or "")


def undo_plumbing(steps: list[Step], seen: dict[str | None, SeenPlumbing]) -> Undo:
    """What puts a namespace's plumbing back as seen before steps: a rule or route added is
    removed, one removed is added again; accept_local gets back the value it has now; the
    record is dropped when the steps write it, and written again as it was (intercept/host
    writes it before the first addition, from the sysctl step) when they drop it."""
    back: list[Step] = []
    cannot: list[Step] = []
    for s in reversed(steps):
        p: Plumbing = s.target
        now = seen.get(p.netns)
        if p.item in ("rule", "route"):
            again = (AttachAction.DETACH if s.action is AttachAction.ATTACH
                     else AttachAction.ATTACH)
            back.append(Step(again, p, s.owner, UNDO_REASON))
        elif p.item == "sysctl" and now is not None and now.accept_local is not None:
            was = now.accept_local
            record = now.current_record
            if s.action is AttachAction.DETACH:  # bpfsync's change given back: take it again
                before = record.accept_local_before if record else was
                back.append(Step(AttachAction.REPLACE, Plumbing(p.netns, "sysctl", value=was,
                                                                before=before),
                                 s.owner, UNDO_REASON))
            else:
                back.append(Step(AttachAction.DETACH, Plumbing(p.netns, "sysctl", value=was,
                                                               before=was), s.owner,
                                 UNDO_REASON))
        elif p.item != "record":
            cannot.append(s)
    for netns in dict.fromkeys(s.target.netns for s in steps
                               if s.action is not AttachAction.DETACH):
        now = seen.get(netns)
        if now is None or now.current_record is None:
            back.append(Step(AttachAction.DETACH, Plumbing(netns, "record"), ORPHAN_OWNER,
                             UNDO_REASON))
    return back, cannot
