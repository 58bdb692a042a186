"""An Intercept's first-match rules compiled into trie entries, and the rules that can never
match. Pure.

The program does one longest-prefix lookup on (intercept, proto, exact port, destination),
then on (intercept, proto, any port, destination), and walks at most IC_CHAIN candidates for
source ports. So the priorities are resolved here: for every prefix P some rule names on a
port, the rules that match at P are exactly those whose destination contains P (all
prefixes containing an address form a chain, and the lookup finds the longest), and the
entry lists them in priority order, cut after the first that has no source ports (it always
decides). Rules on any port are compiled into every named port's entries too, so the exact
lookup is complete wherever it hits.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache

from reconciler.core import tables as t
from reconciler.core.desired import CompileContext, DesiredTables
from reconciler.core.model import PortRange
from reconciler.core.state import DesiredState
from reconciler.intercept import tables as ict
from reconciler.intercept.model import Intercept, InterceptRule
from reconciler.steering.model import Proxy

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
ACTIONS = {"pass": ict.IC_ACTION_PASS, "drop": ict.IC_ACTION_DROP, "redirect": ict.IC_ACTION_REDIRECT}


@dataclass(frozen=True, slots=True)
class Candidate:
    sport_first: int  # 0: any
    sport_last: int
    action: int
    slot: int
    priority: int


@dataclass
class Compiled:
    entries: dict[bytes, bytes] = field(default_factory=dict)
    reachable: set[int] = field(default_factory=set)  # priorities of rules that can decide
    too_long: list[str] = field(default_factory=list)  # places with more than IC_CHAIN

    def shadowed(self, ic: Intercept) -> list[InterceptRule]:
        return [r for r in ic.rules if r.priority not in self.reachable]


def _any_port(rule: InterceptRule) -> bool:
    return any(p.wildcard for p in rule.ports)


def _uncovered(ranges: tuple[PortRange, ...], covered: list[tuple[int, int]]) -> bool:
    """Some source port of ranges (empty: all) is outside every covered range."""
    want = [(r.first, r.last) for r in ranges] or [(1, 65535)]
    for first, last in want:
        port = first
        for cf, cl in sorted(covered):
            if cl < port:
                continue
            if cf > port:
                break
            port = cl + 1
            if port > last:
                break
        if port <= last:
            return True
    return False


class _Coverage:
    """Whether a prefix's own region (addresses no longer prefix of the set takes) is empty."""

    def __init__(self, prefixes: set[Net]) -> None:
        self.prefixes = prefixes
        self.ancestors = {q.supernet(new_prefix=k) for q in prefixes for k in range(q.prefixlen)}
        self._full: dict[Net, bool] = {}

    def _full_cover(self, n: Net) -> bool:
        if n in self.prefixes:
            return True
        if n not in self.ancestors or n.prefixlen == n.max_prefixlen:
            return False
        if n not in self._full:
            self._full[n] = all(map(self._full_cover, n.subnets()))
        return self._full[n]

    def region_empty(self, p: Net) -> bool:
        return p.prefixlen < p.max_prefixlen and p in self.ancestors and all(
            map(self._full_cover, p.subnets()))


def _chain(rules: list[InterceptRule], slots: dict[str, int]) -> tuple[list[Candidate], set[int]]:
    """Candidates in order, and the priorities of rules that can decide among them."""
    out: list[Candidate] = []
    deciding: set[int] = set()
    covered: list[tuple[int, int]] = []
    for r in rules:
        if _uncovered(r.source_ports, covered):
            deciding.add(r.priority)
        action, slot = ACTIONS[r.action], slots.get(r.proxy or "", 0)
        if not r.source_ports:
            out.append(Candidate(0, 0, action, slot, r.priority))
            break
        for sp in r.source_ports:
            out.append(Candidate(sp.first, sp.last, action, slot, r.priority))
            covered.append((sp.first, sp.last))
    return out, deciding


def _port_entries(ic: Intercept, proto: int, port: int, rules: list[InterceptRule],
                  slots: dict[str, int], out: Compiled) -> None:
    by_prefix: dict[Net, list[InterceptRule]] = {}
    for r in rules:
        for d in r.destinations:
            by_prefix.setdefault(d, []).append(r)
    coverage: _Coverage | None = None
    for p in by_prefix:
        here = [r for k in range(p.prefixlen + 1)
                for r in by_prefix.get(p.supernet(new_prefix=k), ())]
        here.sort(key=lambda r: r.priority)
        chain, deciding = _chain(list(dict.fromkeys(here)), slots)
        if len(chain) > ict.IC_CHAIN:
            out.too_long.append(f"{p} port {port or '*'}/{t.PROTO_NAMES[proto]}: "
                                f"{len(chain)} candidates")
            continue
        if deciding - out.reachable:
            coverage = coverage or _Coverage(set(by_prefix))
            if not coverage.region_empty(p):
                out.reachable |= deciding
        key = ict.ic_key(ic.id, proto, port, str(p.network_address), p.prefixlen)
        out.entries[key] = ict.ic_rule_value(key, [
            (c.sport_first, c.sport_last, c.action, c.slot, c.priority) for c in chain])


@lru_cache(maxsize=64)
def compile_intercept(ic: Intercept, slots: tuple[tuple[str, int], ...]) -> Compiled:
    """slots: (Proxy name, listener slot) of the Proxies redirect rules name."""
    by_name = dict(slots)
    out = Compiled()
    for proto in sorted(t.PROTO_NAMES):
        rules = [r for r in ic.rules if proto in r.protocols]
        anywhere = [r for r in rules if _any_port(r)]
        by_port: dict[int, list[InterceptRule]] = {}
        for r in rules:
            if not _any_port(r):
                for pr in r.ports:
                    for port in range(pr.first, pr.last + 1):
                        by_port.setdefault(port, []).append(r)
        for port, named in sorted(by_port.items()):
            merged = sorted({id(r): r for r in (*named, *anywhere)}.values(),
                            key=lambda r: r.priority)
            _port_entries(ic, proto, port, merged, by_name, out)
        if anywhere:
            _port_entries(ic, proto, ict.IC_PORT_ANY, anywhere, by_name, out)
    return out


def entry_count(ic: Intercept) -> int:
    """An upper bound of the entries compile_intercept makes, cheap enough to check first."""
    total = 0
    for proto in t.PROTO_NAMES:
        rules = [r for r in ic.rules if proto in r.protocols]
        anywhere = sum(len(r.destinations) for r in rules if _any_port(r))
        for r in rules:
            if not _any_port(r):
                total += len(r.destinations) * sum(p.last - p.first + 1 for p in r.ports)
        named = min(65535, sum(p.last - p.first + 1 for r in rules if not _any_port(r)
                               for p in r.ports))
        total += anywhere * (1 + named)
    return total


def proxy_slots(state: DesiredState, ic: Intercept) -> tuple[tuple[str, int], ...]:
    """(name, listener slot) of the Proxies ic's redirect rules name and the state declares."""
    names = sorted({r.proxy for r in ic.rules if r.proxy and r.proxy in state.of(Proxy)})
    return tuple((n, state.of(Proxy)[n].id) for n in names)


def compile_intercepts(out: DesiredTables, state: DesiredState, _context: CompileContext) -> None:
    for ic in sorted(state.of(Intercept).values(), key=lambda x: x.id):
        for key, value in compile_intercept(ic, proxy_slots(state, ic)).entries.items():
            out.put(ict.ic_rules_table(key), key, value, ic.ref)
