"""Checks across TransparentProxies: ids, one per cgroup, their Proxy, rule capacity."""

from __future__ import annotations

from operator import attrgetter

from reconciler.core.checks import order, over_capacity, unique, unknown
from reconciler.core.findings import Finding
from reconciler.core.model import destination_port_count
from reconciler.core.state import DesiredState
from reconciler.steering.model import Proxy
from reconciler.tproxy.model import TrafficMatch, TransparentProxy
from reconciler.tproxy.tables import TP_RULES, TP_RULES6


def rule_entry_count(matches: tuple[TrafficMatch, ...], version: int) -> int:
    """Trie entries of matches in the table of one address family (4 or 6)."""
    return sum(destination_port_count(m.destinations, m.ports, version) for m in matches)


def cross_check(state: DesiredState, invalid: set[str]) -> list[Finding]:
    tps = sorted(state.of(TransparentProxy).values(), key=order)
    out = unique(tps, attrgetter("id"), ("spec", "id"), lambda x: f"id {x.id}")
    out += unique(tps, attrgetter("cgroup"), ("spec", "cgroup"),
                   lambda x: f"cgroup {x.cgroup} (one TransparentProxy per cgroup)")
    for tp in tps:
        out += unknown("Proxy", tp.proxy, state.of(Proxy), invalid, tp, ("spec", "proxy"))
        for i, c in enumerate(tp.exclude_cgroups):
            if c == tp.cgroup:
                out.append(Finding(tp.origin, ("spec", "excludeCgroups", i),
                                   f"{c} is the intercepted cgroup itself: nothing would be "
                                   f"intercepted", tp.ref))
    for version, table in ((4, TP_RULES), (6, TP_RULES6)):
        out += over_capacity(tps, lambda tp, v=version: rule_entry_count(tp.intercept, v)
                             + rule_entry_count(tp.exclude, v), table.max_entries,
                             ("spec", "intercept"),
                             lambda total, v=version, t=table:
                                 f"ports x IPv{v} destinations of all TransparentProxies make "
                                 f"{total} rule entries, more than {t.name}'s {t.max_entries}; "
                                 f"use \"*\" or wider prefixes")
    return out


