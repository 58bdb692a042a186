"""Where the interception programs run: each Intercept's device egress, and lo's ingress of
every namespace with an Intercept (socket assignment to the proxies). Pure; core/filters.py
plans them."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.attachments import Hook
from reconciler.core.filters import Wanted
from reconciler.core.state import DesiredState
from reconciler.intercept.model import Intercept

FUNCTIONS = frozenset({"ic_egress", "ic_lo"})


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

    def function(self, direction: str) -> str:
        return "ic_egress" if self.ic_id else "ic_lo"


def wanted(state: DesiredState) -> list[Wanted]:
    """Each Intercept's egress program; lo's ingress program once per namespace with an
    Intercept (whether it redirects now or not: connections redirected before a rule change
    still arrive there), at the smallest priority of the namespace's Intercepts."""
    out = []
    lo: dict[str | None, list[Intercept]] = {}
    for ic in sorted(state.of(Intercept).values(), key=lambda i: i.name):
        r = ic.routing
        out.append(Wanted(Hook(ic.device, ic.netns, "egress"), ic.priority,
                          InterceptProgram(ic.id, r.mark, r.proxy_mark), ic.ref))
        lo.setdefault(ic.netns, []).append(ic)
    for netns, ics in sorted(lo.items(), key=lambda kv: kv[0] or ""):
        out.append(Wanted(Hook("lo", netns, "ingress"), min(i.priority for i in ics),
                          InterceptProgram(0, ics[0].routing.mark, 0), ics[0].ref))
    return out
