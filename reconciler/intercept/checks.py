"""Checks across Intercepts: ids, one per device, their Proxies, shared routing, rules that
can never match, capacity."""

from __future__ import annotations

from operator import attrgetter

from reconciler.core.checks import first_over, order, unique, unknown
from reconciler.core.findings import Finding
from reconciler.core.model import PortRange
from reconciler.core.state import DesiredState
from reconciler.gue.model import Interface
from reconciler.intercept.compile import compile_intercept, entry_count, proxy_slots
from reconciler.intercept.model import Intercept
from reconciler.intercept.tables import IC_CHAIN, IC_MAX_ENTRIES
from reconciler.load.locate import PathItem
from reconciler.steering.model import Proxy


def _rule_path(ic: Intercept, priority: int) -> tuple[PathItem, ...]:
    """Rules are kept sorted by priority; the document's order may differ."""
    return ("spec", "rules", [r.priority for r in ic.rules].index(priority))


def _ports_overlap(a: tuple[PortRange, ...], b: tuple[PortRange, ...]) -> bool:
    return any(x.wildcard or y.wildcard or (x.first <= y.last and y.first <= x.last)
               for x in a for y in b)


def _intercept_rules(state: DesiredState, ic: Intercept, invalid: set[str]) -> list[Finding]:
    out = []
    for r in ic.rules:
        if r.proxy is None:
            continue
        proxy = state.of(Proxy).get(r.proxy)
        if proxy is None:
            out += unknown("Proxy", r.proxy, state.of(Proxy), invalid, ic,
                            (*_rule_path(ic, r.priority), "proxy"))
        elif proxy.netns != ic.netns:
            out.append(Finding(ic.origin, ("spec", "netns"),
                               f"netns {ic.netns or '(bpfsync own)'} is not the namespace of "
                               f"{proxy.ref} ({proxy.netns or '(bpfsync own)'}): redirected "
                               f"connections are assigned to its listener, which lives there",
                               ic.ref))
    compiled = compile_intercept(ic, proxy_slots(state, ic))
    for where in compiled.too_long[:3]:
        out.append(Finding(ic.origin, ("spec", "rules"),
                           f"more than {IC_CHAIN} rules with sourcePorts overlap at {where}; "
                           f"the program checks at most {IC_CHAIN} per destination", ic.ref))
    for r in compiled.shadowed(ic):
        before = [o.priority for o in ic.rules if o.priority < r.priority
                  and set(o.protocols) & set(r.protocols) and _ports_overlap(o.ports, r.ports)
                  and any(a.overlaps(b) for a in o.destinations for b in r.destinations)]
        out.append(Finding(ic.origin, (*_rule_path(ic, r.priority), "priority"),
                           f"rule {r.priority} ({r.action}) can never match: every packet it "
                           f"matches is decided first by the rules before it (overlapping it: "
                           f"{', '.join(map(str, before[:5])) or 'none'}); give it a lower "
                           f"priority or remove it", ic.ref))
    return out


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    ics = sorted(state.of(Intercept).values(), key=order)
    out = unique(ics, attrgetter("id"), ("spec", "id"), lambda x: f"id {x.id}")
    out += unique(ics, lambda i: (i.netns, i.device), ("spec", "device"),
                   lambda i: f"device {i.place} (one Intercept per device)")
    egress = {(i.netns, i.device): i for i in state.of(Interface).values() if i.egress}
    routing: dict[str | None, Intercept] = {}
    over = first_over(ics, entry_count, IC_MAX_ENTRIES)
    for ic in ics:
        iface = egress.get((ic.netns, ic.device))
        if iface is not None:
            out.append(Finding(ic.origin, ("spec", "device"),
                               f"{iface.ref} runs its egress program on {ic.place}; one device "
                               f"takes one of them (set egress: false there, or intercept "
                               f"another device)", ic.ref))
        first = routing.setdefault(ic.netns, ic)
        if first.routing != ic.routing:
            out.append(Finding(ic.origin, ("spec", "routing"),
                               f"routing differs from {first.ref}'s: the Intercepts of one "
                               f"namespace share its policy rule, table and marks",
                               ic.ref, related=((first.origin, ("spec", "routing")),)
                               if first.origin else ()))
        if over and over[0] is ic:  # rules past the capacity are not checked one by one
            out.append(Finding(ic.origin, ("spec", "rules"),
                               f"the rules of all Intercepts compile to more than "
                               f"{IC_MAX_ENTRIES} entries (destinations x ports); use \"*\", "
                               f"wider prefixes or fewer port ranges", ic.ref))
            break
        out += _intercept_rules(state, ic, invalid)
    return out
