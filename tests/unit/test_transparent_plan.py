"""Transparent proxies, pure half: loading, compiled entries, and the cgroup link plan."""

from __future__ import annotations

from pathlib import Path

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.core.attachments import AttachAction
from reconciler.core.compile import compile_tables
from reconciler.load.directory import load_directory
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import (
    CgroupHook,
    HostFacts,
    SeenCgroup,
    compute_cgroup_plan,
    datapath_cgroup,
    level,
    wanted,
)
from reconciler.tproxy.model import TransparentProxy
from tests.unit.helpers import write_tree

PIN = Path("/sys/fs/bpf/bpfsync-unit")
DOCS = """\
apiVersion: bpfsync/v1
kind: Proxy
metadata: {name: egress}
spec: {id: 5}
---
apiVersion: bpfsync/v1
kind: TransparentProxy
metadata: {name: apps}
spec:
  id: 2
  cgroup: /system.slice/app.service
  proxy: egress
  intercept:
    - destinations: [198.51.100.0/24, 203.0.113.0/24]
      ports: [80, "8000-8001"]
  exclude:
    - destinations: [198.51.100.9/32]
  excludeCgroups: [/system.slice/app.service/agent]
  whenProxyDown: direct
"""


def _state(tmp_path: Path):
    return load_directory(write_tree(tmp_path, {"a.yaml": DOCS}))


def test_loaded_resource(tmp_path: Path) -> None:
    tp = _state(tmp_path).of(TransparentProxy)["apps"]
    assert (tp.id, tp.cgroup, tp.proxy, tp.fail_open) == (2, "/system.slice/app.service",
                                                          "egress", True)
    assert [str(n) for n in tp.intercept[0].destinations] == ["198.51.100.0/24",
                                                              "203.0.113.0/24"]
    assert [str(p) for p in tp.exclude[0].ports] == ["*"]


def test_compiled_entries(tmp_path: Path) -> None:
    state = _state(tmp_path)
    mine = datapath_cgroup(PIN)
    facts = HostFacts(netns_cookie=4242, cgroup_ids={mine: 77, "/system.slice/app.service": 9,
                                                     "/system.slice/app.service/agent": 11})
    out = compile_tables(state, facts={"tproxy": facts}, pin_root=PIN)
    config = out.entries[tpt.TP_CONFIG.name]
    assert list(config) == [t.slot_key(2)]
    value = registry.decode_value(tpt.TP_CONFIG.name, config[t.slot_key(2)])
    assert value == {"proxySlot": 5, "failOpen": True, "ipv6": "direct", "netnsCookie": 4242,
                     "excludedCgroups": [{"id": 77, "level": level(mine)},
                                         {"id": 11, "level": 3}]}
    rules = sorted(registry.describe_key(tpt.TP_RULES.name, k) for k in out.entries[tpt.TP_RULES.name])
    assert len(rules) == 2 * 3 + 1  # 2 prefixes x 3 ports, 1 exclude
    assert "exclude 198.51.100.9/32 port *" in rules
    assert "intercept 203.0.113.0/24 port 8001" in rules
    assert all(o == "TransparentProxy/apps" for o in out.owners[tpt.TP_RULES.name].values())
    # Without the Proxies' namespace nothing is written (the plan says it waits).
    assert not compile_tables(state, facts={"tproxy": HostFacts()}, pin_root=PIN).entries[tpt.TP_CONFIG.name]


def test_pin_names_round_trip() -> None:
    for path in ("/", "/a.b/c:d/e%f", "/system.slice/app.service"):
        hook = CgroupHook(path, "connect4")
        assert "/" not in hook.pin_name and "." not in hook.pin_name
        assert CgroupHook.from_pin_name(hook.pin_name) == hook
    assert CgroupHook.from_pin_name("sk_lookup:x") is None
    assert level("/") == 0 and level("/a/b") == 2


def _seen(hook: CgroupHook, program: str, alive: bool = True) -> SeenCgroup:
    return SeenCgroup(hook, 1, program, "tag-" + program, alive)


def test_cgroup_plan(tmp_path: Path) -> None:
    state = _state(tmp_path)
    want = wanted(state, PIN)
    app, mine = "/system.slice/app.service", datapath_cgroup(PIN)
    assert [(w.hook.cgroup, w.hook.hook, w.program) for w in want] == [
        (mine, "getsockopt", "tp_getsockopt"), (app, "sock_ops", "tp_sock_ops"),
        (app, "connect4", "tp_connect4_2"), (app, "connect6", "tp_connect6_2")]
    tags = {w.program: frozenset({"tag-" + w.program}) for w in want}
    exists = {app: True, mine: True}

    ops = compute_cgroup_plan(want, [], exists, tags).steps
    assert [(o.action, o.target.hook.hook) for o in ops] == [
        (AttachAction.ATTACH, "getsockopt"), (AttachAction.ATTACH, "sock_ops"),
        (AttachAction.ATTACH, "connect4"), (AttachAction.ATTACH, "connect6")]

    seen = [_seen(w.hook, w.program) for w in want]
    plan = compute_cgroup_plan(want, seen, exists, tags)
    assert plan.steps == [] and plan.in_place == 4

    changed = {**tags, "tp_connect4_2": frozenset({"new"})}
    ops = compute_cgroup_plan(want, seen, exists, changed).steps
    assert [(o.action, o.target.hook.hook) for o in ops] == [(AttachAction.REPLACE, "connect4")]

    # The cgroup was removed and made again: the dead links go, new ones come.
    dead = [_seen(w.hook, w.program, alive=w.hook.cgroup != app) for w in want]
    ops = compute_cgroup_plan(want, dead, exists, tags).steps
    assert [(o.action, o.target.hook.hook) for o in ops] == [
        (AttachAction.DETACH, "connect6"), (AttachAction.DETACH, "connect4"),
        (AttachAction.DETACH, "sock_ops"), (AttachAction.ATTACH, "sock_ops"),
        (AttachAction.ATTACH, "connect4"), (AttachAction.ATTACH, "connect6")]

    # The resource removed: the connect hooks go first, so no socket is redirected untracked.
    ops = compute_cgroup_plan([], seen, {}, None).steps
    assert [(o.action, o.target.hook.hook) for o in ops] == [
        (AttachAction.DETACH, "connect6"), (AttachAction.DETACH, "connect4"),
        (AttachAction.DETACH, "sock_ops"), (AttachAction.DETACH, "getsockopt")]

    # A cgroup that does not exist yet is waited for, not an error.
    plan = compute_cgroup_plan(want, [], {mine: True}, tags)
    assert [o.target.hook.hook for o in plan.steps] == ["getsockopt"]
    assert plan.conditions == [f"TransparentProxy/apps: cgroup {app} not found; interception "
                            f"not attached there until it exists"]


def test_ipv6_rules_go_to_their_own_trie_and_read_back(tmp_path: Path) -> None:
    docs = DOCS.replace("[198.51.100.0/24, 203.0.113.0/24]",
                        "[198.51.100.0/24, '2001:db8::/32', 203.0.113.0/24]").replace(
        "[198.51.100.9/32]", "['2001:db8::9/128']")
    state = load_directory(write_tree(tmp_path, {"a.yaml": docs}))
    tp = state.of(TransparentProxy)["apps"]
    assert [str(n) for n in tp.intercept[0].destinations] == [
        "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"]  # IPv4 first
    desired = compile_tables(state, facts={"tproxy": HostFacts(netns_cookie=7)}, pin_root=PIN)
    v4, v6 = desired.entries[tpt.TP_RULES.name], desired.entries[tpt.TP_RULES6.name]
    assert len(v4) == 2 * 3 and len(v6) == 3 + 1  # intercept: 3 ports per prefix; exclude: "*"
    key = tpt.tp_rule_key(2, tpt.TP_KIND_EXCLUDE, 0, "2001:db8::9", 128)
    assert len(key) == tpt.TP_RULES6.key_size and key in v6
    assert registry.decode_key(tpt.TP_RULES6.name, key) == {
        "id": 2, "rule": "exclude", "port": "*", "prefix": "2001:db8::9/128"}


def test_ipv4_mapped_rules_are_refused_with_the_ipv4_prefix(tmp_path: Path) -> None:
    import pytest

    from reconciler.core.errors import InvalidDesiredState

    docs = DOCS.replace("[198.51.100.9/32]", "['::ffff:198.51.100.9/128']")
    with pytest.raises(InvalidDesiredState) as exc:
        load_directory(write_tree(tmp_path, {"a.yaml": docs}))
    text = "\n".join(map(str, exc.value.problems))
    assert "a.yaml:" in text and "write 198.51.100.9/32" in text
