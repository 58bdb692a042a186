"""Proxies in the pure core: compiled entries, minimal plans, the link planner, get's view."""

from __future__ import annotations

from pathlib import Path

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.core.attachments import AttachAction
from reconciler.core.compile import compile_tables
from reconciler.core.plan import Action
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.load.directory import load_directory
from reconciler.steering import proxyconf
from reconciler.steering import tables as st
from reconciler.steering.inventory import port_ranges as _port_ranges
from reconciler.steering.inventory import proxies
from reconciler.steering.links import SeenLink, compute_link_plan, netns_of, pin_name
from reconciler.steering.model import Proxy
from tests.unit.helpers import write_tree

PROXY = """\
apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: {name}}}
spec:
  id: {id}
  netns: blue
  ports: {ports}
  destinations: [203.0.113.0/24, 198.51.100.7]
  backends: [{backends}]
"""


def load(tmp: Path, **docs: str) -> DesiredState:
    return load_directory(write_tree(tmp, {f"{k}.yaml": v for k, v in docs.items()}))


def doc(name: str = "web", pid: int = 1, ports: str = '[80, "8000-8002", "*"]',
        backends: str = '"192.0.2.10:8080", "app.internal:8080"') -> str:
    return PROXY.format(name=name, id=pid, ports=ports, backends=backends)


def test_entries_per_port_and_prefix_with_wildcard(tmp_path: Path) -> None:
    state = load(tmp_path, web=doc())
    p = state.of(Proxy)["web"]
    assert [str(r) for r in p.ports] == ["*", "80", "8000-8002"]
    desired = compile_tables(state)
    steer = desired.entries[st.STEER.name]
    assert len(steer) == 5 * 2  # (wildcard + 4 ports) x 2 prefixes
    key = st.steer_key(0, "198.51.100.7", 32)
    assert key in steer and registry.decode_key(st.STEER.name, key) == {
        "port": "*", "protocol": "tcp", "prefix": "198.51.100.7/32"}
    assert registry.decode_value(st.STEER.name, steer[key]) == {"slot": 1}
    config = desired.entries[st.PROXY.name][t.slot_key(1)]
    assert len(config) == st.PROXY_CONFIG_SIZE and t.stamp_ok(t.slot_key(1), config)
    rc = proxyconf.decode(1, st.proxy_config(config))
    assert rc.backends == (("192.0.2.10", 8080), ("app.internal", 8080))
    assert (rc.connect_timeout, rc.max_connections, rc.drain_timeout) == (5.0, 10000, None)


def test_preconnect_reaches_the_data_path_and_leaves_other_entries_as_they_were(
        tmp_path: Path) -> None:
    """preconnect is in a Proxy's configuration only when it is set: an entry written before
    it existed keeps its bytes (no write after an upgrade)."""
    without = compile_tables(load(tmp_path / "a", web=doc())).entries[st.PROXY.name]
    assert b"preconnect" not in without[t.slot_key(1)]
    with_it = compile_tables(load(tmp_path / "b", web=doc() + "  preconnect: 4\n"))
    config = with_it.entries[st.PROXY.name][t.slot_key(1)]
    assert proxyconf.decode(1, st.proxy_config(config)).preconnect == 4
    assert proxyconf.decode(1, st.proxy_config(without[t.slot_key(1)])).preconnect == 0


def test_backend_change_is_one_write_and_ports_change_only_their_entries(tmp_path: Path) -> None:
    before = compile_tables(load(tmp_path / "a", web=doc()))
    observed = {name: dict(entries) for name, entries in before.entries.items()}
    after = compile_tables(load(tmp_path / "b", web=doc(backends='"192.0.2.11:8080"')))
    plan = compute_plan(after, observed)
    assert [(op.action, op.table) for op in plan.operations] == [(Action.UPDATE, st.PROXY.name)]
    after = compile_tables(load(tmp_path / "c", web=doc(ports='[80, "8000-8003", "*"]')))
    plan = compute_plan(after, observed)
    assert [(op.action, op.table) for op in plan.operations] == [
        (Action.CREATE, st.STEER.name)] * 2


def test_removal_deletes_steering_before_the_configuration(tmp_path: Path) -> None:
    observed = {n: dict(e) for n, e in compile_tables(load(tmp_path, web=doc())).entries.items()}
    plan = compute_plan(compile_tables(DesiredState()), observed)
    tables = [op.table for op in plan.operations]
    assert tables.index(st.PROXY.name) > max(i for i, x in enumerate(tables) if x == st.STEER.name)
    assert {op.owner for op in plan.operations} == {"Proxy/web"}


def test_link_plan() -> None:
    state = DesiredState()
    assert compute_link_plan(state, [], None, True).steps == []
    gone = [SeenLink("blue", 7, "aa", True)]
    [op] = compute_link_plan(state, gone, None, True).steps
    assert (op.action, op.reason) == (AttachAction.DETACH, "no Proxy left")


def test_link_plan_with_a_proxy(tmp_path: Path) -> None:
    state = load(tmp_path, web=doc())
    [op] = compute_link_plan(state, [], frozenset({"aa"}), True).steps
    assert (op.action, op.target.netns, op.owner) == (AttachAction.ATTACH, "blue", "Proxy/web")
    plan = compute_link_plan(state, [SeenLink("blue", 7, "aa", True)], frozenset({"aa"}), True)
    assert plan.steps == [] and plan.in_place == 1
    [op] = compute_link_plan(state, [SeenLink("blue", 7, "bb", True)], frozenset({"aa"}),
                             True).steps
    assert op.action is AttachAction.REPLACE
    # The namespace was deleted and made again: the old link is dead, a new one is made
    # (after the dead one's pin, which has the same name, is removed).
    ops = compute_link_plan(state, [SeenLink("blue", 7, "aa", False)], frozenset({"aa"}),
                            True).steps
    assert [o.action for o in ops] == [AttachAction.DETACH, AttachAction.ATTACH]
    plan = compute_link_plan(state, [], None, False)
    assert plan.steps == []
    assert "network namespace blue not found" in plan.conditions[0]


def test_pin_names_escape_dots() -> None:
    assert pin_name("a.b") == "sk_lookup:a%2Eb" and netns_of(pin_name("a.b")) == "a.b"
    assert netns_of(pin_name(None)) is None


def test_get_folds_ports_back() -> None:
    assert _port_ranges([0, 80, 8000, 8001, 8002, 9000]) == ["*", 80, "8000-8002", 9000]


def test_get_proxies_from_tables(tmp_path: Path) -> None:
    desired = compile_tables(load(tmp_path, web=doc()))
    [d] = proxies(desired.entries, {1: {"lookups": 3, "steered": 2, "no_listener": 1,
                                        "assign_error": 0}}, None)
    assert d["metadata"]["name"] == "web"
    assert d["spec"]["ports"] == ["*", 80, "8000-8002"]
    assert d["spec"]["destinations"] == ["198.51.100.7/32", "203.0.113.0/24"]
    assert d["status"]["steering"] == {"entries": 10}
    assert d["status"]["counters"]["noListener"] == 1 and d["status"]["dataPath"] == "not running"


def test_text_diff_abbreviates_port_ranges(tmp_path: Path) -> None:
    from reconciler.render import plan_text

    state = load(tmp_path, web=doc(ports='["1000-1999"]'))
    plan = compute_plan(compile_tables(state), {})
    text = plan_text(plan, "dir", state)
    assert text.count("+ ps_dest") == 20
    assert "... and 1980 more ps_dest entries (-o json lists all)" in text
    assert "Plan: 2,002 to create" in text
