"""Intercepts, pure half: first-match rules compiled into trie entries (checked by a lookup
written the way the BPF program does it), shadowed rules, and the host plumbing plan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.core.attachments import AttachAction, AttachPlan, Phase
from reconciler.core.errors import InvalidDesiredState
from reconciler.core.state import DesiredState
from reconciler.intercept import tables as ict
from reconciler.intercept.compile import compile_intercept, proxy_slots
from reconciler.intercept.model import Intercept, Routing
from reconciler.intercept.plumbing import (
    PolicyRule,
    Record,
    SeenPlumbing,
    WantedPlumbing,
    compute_plumbing_plan,
    forget,
)
from reconciler.load.directory import load_directory
from tests.unit.helpers import write_tree

PROXY = "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: egress}\nspec: {id: 5}\n"


def intercept(rules: str, tmp_path: Path) -> tuple[DesiredState, Intercept]:
    write_tree(tmp_path, {"a.yaml": PROXY + "---\napiVersion: bpfsync/v1\nkind: Intercept\n"
                          "metadata: {name: wan}\nspec:\n  id: 7\n  device: eth0\n  rules:\n"
                          + rules})
    state = load_directory(tmp_path)
    return state, state.of(Intercept)["wan"]


def decide(entries: dict[bytes, bytes], ic_id: int, proto: int, daddr: str, dport: int,
           sport: int) -> tuple[str, int] | None:
    """What ic_egress decides: longest prefix (in the trie of the address's family) on the
    exact port, then on any port, then the first candidate whose source ports match.
    (action, priority) or None (no rule)."""
    ip = ipaddress.ip_address(daddr)
    addr = int(ip)
    for port in (dport, ict.IC_PORT_ANY):
        best = None
        for key, value in entries.items():
            k = registry.decode_key(ict.IC_RULES.name, key)
            net = ipaddress.ip_network(k["prefix"])
            if (net.version == ip.version and k["id"] == ic_id and t.PROTO_NUMBERS[k["protocol"]] == proto
                    and ((k["port"] == "*" and port == 0) or k["port"] == port)
                    and addr & int(net.netmask) == int(net.network_address)
                    and (best is None or net.prefixlen > best[0])):
                best = (net.prefixlen, value)
        if best is None:
            continue
        for c in registry.decode_value(ict.IC_RULES.name, best[1])["rules"]:
            sp = c.get("sourcePorts")
            if sp is None or (isinstance(sp, int) and sp == sport) or (
                    isinstance(sp, str) and int(sp.split("-")[0]) <= sport <= int(
                        sp.split("-")[1])):
                return c["action"], c["priority"]
        return None
    return None


RULES = """\
    - {priority: 10, action: pass, destinations: [203.0.113.9/32], ports: [443]}
    - {priority: 20, action: redirect, proxy: egress, destinations: [203.0.113.0/24], ports: [80, 443]}
    - {priority: 30, action: drop, sourcePorts: ["1000-1999"]}
    - {priority: 40, action: pass, destinations: [203.0.113.0/25], ports: ["*"]}
    - {priority: 50, action: drop, destinations: [0.0.0.0/0], ports: [53], protocol: udp}
"""


def test_first_match_by_priority_not_by_prefix_length(tmp_path: Path) -> None:
    state, ic = intercept(RULES, tmp_path)
    compiled = compile_intercept(ic, proxy_slots(state, ic))
    e = compiled.entries
    assert decide(e, 7, 6, "203.0.113.9", 443, 40000) == ("pass", 10)
    assert decide(e, 7, 6, "203.0.113.9", 80, 40000) == ("redirect", 20)
    assert decide(e, 7, 6, "203.0.113.200", 443, 1500) == ("redirect", 20)  # 20 before 30
    assert decide(e, 7, 6, "198.51.100.1", 443, 1500) == ("drop", 30)  # source ports
    assert decide(e, 7, 6, "198.51.100.1", 443, 2500) is None  # nothing matches
    assert decide(e, 7, 6, "203.0.113.5", 22, 1500) == ("drop", 30)  # /25 "*" comes after
    assert decide(e, 7, 6, "203.0.113.5", 22, 2500) == ("pass", 40)
    assert decide(e, 7, 6, "203.0.113.200", 22, 2500) is None
    assert decide(e, 7, 17, "192.0.2.53", 53, 5353) == ("drop", 50)
    assert decide(e, 7, 17, "203.0.113.9", 443, 40000) is None  # tcp rules only
    redirect = [c for v in e.values() for c in registry.decode_value(ict.IC_RULES.name, v)["rules"]
                if c["action"] == "redirect"]
    assert redirect and all(c["proxySlot"] == 5 for c in redirect)
    assert compiled.shadowed(ic) == []
    # every key a value of the right size, stamped as bpfsync's
    assert all(len(k) == ict.IC_RULES.key_size and len(v) == ict.IC_RULES.value_size
               and t.stamp_ok(k, v) for k, v in e.items())


DUAL = """\
    - {priority: 10, action: pass, destinations: ['2001:db8::9/128'], ports: [443]}
    - {priority: 20, action: redirect, proxy: egress, ports: [80, 443],
       destinations: [203.0.113.0/24, '2001:db8::/64']}
    - {priority: 30, action: drop, destinations: [0.0.0.0/0, '::/0'], sourcePorts: ["1000-1999"]}
    - {priority: 40, action: pass, destinations: ['2001:db8::/65', 203.0.113.0/25], ports: ["*"]}
"""


@pytest.mark.parametrize(("rules", "addresses"), [
    (RULES, ("203.0.113.9", "203.0.113.1", "203.0.113.130", "198.51.100.7")),
    (DUAL, ("2001:db8::9", "2001:db8::1", "2001:db8::8000:0:0:1", "2001:db8:1::1",
            "203.0.113.1", "203.0.113.130")),
])
def test_brute_force_agrees_with_a_linear_first_match(tmp_path: Path, rules: str,
                                                       addresses: tuple[str, ...]) -> None:
    """Both families: IPv6 prefixes compile into ic_rules6 with the same resolution."""
    state, ic = intercept(rules, tmp_path)
    e = compile_intercept(ic, proxy_slots(state, ic)).entries
    assert {ict.ic_rules_table(k).name for k in e} == (
        {"ic_rules", "ic_rules6"} if rules is DUAL else {"ic_rules"})
    assert all(len(k) == ict.ic_rules_table(k).key_size for k in e)

    def linear(proto: int, daddr: str, dport: int, sport: int) -> tuple[str, int] | None:
        a = ipaddress.ip_address(daddr)
        for r in ic.rules:
            if proto in r.protocols and any(a in d for d in r.destinations) and any(
                    p.wildcard or p.first <= dport <= p.last for p in r.ports) and (
                    not r.source_ports or any(p.first <= sport <= p.last
                                              for p in r.source_ports)):
                return r.action, r.priority
        return None

    for proto in (6, 17):
        for daddr in addresses:
            for dport in (22, 53, 80, 443):
                for sport in (999, 1000, 1999, 2000):
                    assert decide(e, 7, proto, daddr, dport, sport) == linear(
                        proto, daddr, dport, sport), (proto, daddr, dport, sport)


def test_shadowed_rules_are_found(tmp_path: Path) -> None:
    rules = RULES + (
        "    - {priority: 60, action: drop, destinations: [203.0.113.9/32], ports: [80]}\n"
        "    - {priority: 70, action: drop, destinations: [10.0.0.0/25, 10.0.0.128/25], "
        "ports: [8080]}\n"
        "    - {priority: 90, action: pass, destinations: [10.0.0.0/24], ports: [8080]}\n")
    with pytest.raises(InvalidDesiredState) as exc:
        intercept(rules, tmp_path)
    text = "\n".join(map(str, exc.value.problems))
    assert "rule 60 (drop) can never match" in text and "overlapping it: 20, 30, 40" in text
    assert "rule 90 (pass) can never match" in text  # both /25 halves cover the /24
    assert "rule 40 (" not in text and "rule 70 (" not in text


def _items(planned) -> list[str]:
    return [o.target.item for o in planned.steps]


def test_plumbing_plan_creates_restores_and_reverts_exactly() -> None:
    routing = Routing()
    want = {"blue": WantedPlumbing("blue", routing, "Intercept/wan")}
    rule = PolicyRule(100, 1, 1, 100)
    fresh = SeenPlumbing("blue", True, cookie=9, accept_local=0)
    ops = compute_plumbing_plan(want, {"blue": fresh}).steps
    assert [(o.action, o.target.item) for o in ops] == [
        (AttachAction.ATTACH, "rule"), (AttachAction.ATTACH, "route"),
        (AttachAction.REPLACE, "sysctl")]
    assert not any(o.drift for o in ops) and ops[2].target.before == 0
    assert [o.phase for o in ops] == [Phase.SETUP] * 3
    # made before (record of this namespace): whatever is missing now is drift
    made = SeenPlumbing("blue", True, cookie=9, rules=[rule], routes=[],
                        accept_local=0, record=Record(9, 0))
    ops = compute_plumbing_plan(want, {"blue": made}).steps
    assert [(o.target.item, o.drift) for o in ops] == [("route", True), ("sysctl", True)]
    # in place: nothing to do
    done = SeenPlumbing("blue", True, cookie=9, rules=[rule], routes=[100], accept_local=1,
                        record=Record(9, 0))
    plan = compute_plumbing_plan(want, {"blue": done})
    assert plan.steps == [] and plan.in_place == 3
    # removed from YAML: rule, route, and accept_local back to 0; then the record goes
    ops = compute_plumbing_plan({}, {"blue": done}).steps
    assert [(o.action, o.target.item, o.target.value) for o in ops] == [
        (AttachAction.DETACH, "rule", 0), (AttachAction.DETACH, "route", 0),
        (AttachAction.DETACH, "sysctl", 0), (AttachAction.DETACH, "record", 0)]
    assert {o.phase for o in ops} == {Phase.TEARDOWN}
    assert forget({"blue": done}, {}) == ["blue"]
    # accept_local was already 1 before bpfsync: left as it is
    untouched = SeenPlumbing("blue", True, cookie=9, rules=[rule], routes=[100],
                             accept_local=1, record=Record(9, ict.IC_SYSCTL_UNTOUCHED))
    assert _items(compute_plumbing_plan({}, {"blue": untouched})) == ["rule", "route", "record"]
    # a record of an earlier namespace of the same name (other cookie) restores nothing:
    # only the record goes; as it does when the namespace is gone
    recreated = SeenPlumbing("blue", True, cookie=10, accept_local=1, record=Record(9, 0))
    assert _items(compute_plumbing_plan({}, {"blue": recreated})) == ["record"]
    [gone] = compute_plumbing_plan({}, {"blue": SeenPlumbing("blue", False,
                                                             record=Record(9, 0))}).steps
    assert (gone.target.item, gone.reason, gone.is_change) == (
        "record", "its namespace is gone", True)


def test_plumbing_conflicts_and_waits() -> None:
    want = {"blue": WantedPlumbing("blue", Routing(table=200), "Intercept/wan"),
            "gone": WantedPlumbing("gone", Routing(), "Intercept/other")}
    seen = {"blue": SeenPlumbing("blue", True, cookie=1, accept_local=1,
                                 other_defaults={200: "unicast"}),
            "gone": SeenPlumbing("gone", False)}
    plan = AttachPlan.of([compute_plumbing_plan(want, seen)])
    assert [o.target.item for o in plan.steps] == ["rule"]
    assert plan.conflicts and "table 200" in plan.conflicts[0]
    assert plan.waiting and "gone not found" in plan.waiting[0]
    # someone's own `local default dev lo` in the table does the job: not touched, not ours
    seen["blue"].other_defaults = {200: "local dev lo"}
    plan = AttachPlan.of([compute_plumbing_plan({"blue": want["blue"]}, {"blue": seen["blue"]})])
    assert [o.target.item for o in plan.steps] == ["rule"] and not plan.conflicts


def test_ipv6_plumbing_only_where_ipv6_is_redirected() -> None:
    routing = Routing()
    rule4, rule6 = PolicyRule(100, 1, 1, 100), PolicyRule(100, 1, 1, 100, 6)
    fresh = SeenPlumbing("blue", True, cookie=9, accept_local=0)
    want6 = {"blue": WantedPlumbing("blue", routing, "Intercept/wan", ipv6=True)}
    ops = compute_plumbing_plan(want6, {"blue": fresh}).steps
    assert [(o.target.item, o.target.rule or o.target.family) for o in ops] == [
        ("rule", rule4), ("route", 4), ("rule", rule6), ("route", 6), ("sysctl", 4)]
    assert [o.target.describe() for o in ops[2:4]] == [
        "ip -6 rule priority 100 fwmark 0x1/0x1 lookup 100 (netns blue)",
        "ip -6 route local default dev lo table 100 (netns blue)"]
    done = SeenPlumbing("blue", True, cookie=9, rules=[rule4, rule6], routes=[100],
                        routes6=[100], accept_local=1, record=Record(9, 0))
    plan = compute_plumbing_plan(want6, {"blue": done})
    assert plan.steps == [] and plan.in_place == 5
    # no IPv6 redirect any more: kept, like IPv4's, while the namespace has an Intercept
    # (connections redirected before keep their way); an IPv4-only one never makes them
    want4 = {"blue": WantedPlumbing("blue", routing, "Intercept/wan")}
    plan = compute_plumbing_plan(want4, {"blue": done})
    assert plan.steps == [] and plan.in_place == 5
    assert _items(compute_plumbing_plan(want4, {"blue": fresh})) == ["rule", "route", "sysctl"]
    # the Intercept gone: both families and the sysctl, then the record
    ops = compute_plumbing_plan({}, {"blue": done}).steps
    assert [(o.target.item, o.target.family) for o in ops] == [
        ("rule", 4), ("rule", 4), ("route", 4), ("route", 6), ("sysctl", 4), ("record", 4)]
    assert ops[1].target.rule == rule6


def test_ipv4_mapped_destinations_are_refused_with_the_ipv4_prefix(tmp_path: Path) -> None:
    with pytest.raises(InvalidDesiredState) as exc:
        intercept("    - {priority: 10, action: drop, destinations: ['::ffff:203.0.113.0/120']}\n",
                  tmp_path)
    text = "\n".join(map(str, exc.value.problems))
    assert "a.yaml:" in text and "write 203.0.113.0/24" in text
