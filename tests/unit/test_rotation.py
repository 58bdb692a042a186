"""Key rotation (pure): nextKey in YAML, where the two accepted keys go, what each step of a
rotation writes, and which key pings are signed with."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

from reconciler.core.compile import compile_tables
from reconciler.core.errors import InvalidDesiredState
from reconciler.core.model import Endpoint, Origin
from reconciler.core.plan import Action
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.datapath.pinger import targets
from reconciler.gue import tables as gt
from reconciler.gue.compile import accepted_slots
from reconciler.gue.model import KeySource, Service, Tunnel
from reconciler.load.directory import load_directory
from reconciler.load.secrets import Secret
from reconciler.render import plan_text
from tests.unit.helpers import write_tree

OLD, NEW = Secret(b"old-key".ljust(16, b"\0")), Secret(b"new-key".ljust(16, b"\0"))


def state(key: Secret, next_key: Secret | None) -> DesiredState:
    s = DesiredState()
    s.of(Tunnel)["t1"] = Tunnel("t1", 100, Endpoint("192.0.2.2", 6080),
                             Endpoint("192.0.2.1", 6080), Origin("a.yaml", 0), key,
                             KeySource("env", "K"), 200, next_key)
    s.of(Service)["web"] = Service("web", 1, 1, "tcp", Endpoint("203.0.113.10", 80),
                                Endpoint("198.51.100.20", 8080), "t1", key,
                                KeySource("env", "K"), Origin("b.yaml", 0), next_key)
    return s


def observed(s: DesiredState) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(e) for name, e in compile_tables(s).entries.items()}


def test_accepted_keys_sit_in_byte_order_whichever_is_sent() -> None:
    low, high = sorted((OLD, NEW), key=lambda k: k.value)
    assert accepted_slots(OLD, NEW) == accepted_slots(NEW, OLD) == (low, high)
    assert accepted_slots(OLD, None) == (OLD, None)
    assert accepted_slots(OLD, OLD) == (OLD, None)


def test_each_rotation_step_writes_only_what_it_must_and_never_moves_a_key_in_use() -> None:
    steps = [state(OLD, None), state(OLD, NEW), state(NEW, OLD), state(NEW, None)]
    for before, after in itertools.pairwise(steps):
        plan = compute_plan(compile_tables(after), observed(before))
        tables = [op.table for op in plan.operations]
        if after is steps[2]:  # the swap: the senders change, the accepted keys stay put
            assert gt.VERIFY.name not in tables and gt.NEXT_KEY_TABLE.name not in tables
            assert set(tables) == {gt.TUNNEL.name, gt.ENCAP.name}
        # an accepted key is written to TI_NEXT before TI_VERIFY can lose it
        if gt.NEXT_KEY_TABLE.name in tables and gt.VERIFY.name in tables:
            writes = [x for x in tables if x in (gt.NEXT_KEY_TABLE.name, gt.VERIFY.name)]
            first_next = writes.index(gt.NEXT_KEY_TABLE.name)
            deletes_next = any(op.action is Action.DELETE and op.table == gt.NEXT_KEY_TABLE.name
                               for op in plan.operations)
            assert deletes_next or first_next == 0
        shown = plan_text(plan, Path("."))
        assert "old-key" not in shown and "new-key" not in shown
    assert compute_plan(compile_tables(steps[3]), observed(steps[3])).operations == []


def test_pings_are_signed_with_the_key_that_is_sent() -> None:
    for key, nxt in ((OLD, None), (OLD, NEW), (NEW, OLD), (NEW, None)):
        obs = observed(state(key, nxt))
        got = targets(obs[gt.TUNNEL.name], lambda o=obs: o[gt.NEXT_KEY_TABLE.name])
        assert got[100].key == key


def test_a_send_next_tunnel_without_its_next_entry_pings_nothing_yet() -> None:
    obs = observed(state(NEW, OLD) if NEW.value > OLD.value else state(OLD, NEW))
    assert targets(obs[gt.TUNNEL.name], dict) == {}


TUNNEL_YAML = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {name: t1}
spec:
  id: 100
  local: {address: 192.0.2.1, port: 6080}
  remote: learn
"""


def test_next_key_yaml(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("K_NEXT", "next-key")
    good = tmp_path / "good"
    write_tree(good, {"t.yaml": TUNNEL_YAML + "  keyFrom: {file: web.key}\n"
                      "  nextKeyFrom: {env: K_NEXT}\n"})
    s = load_directory(good)
    assert s.of(Tunnel)["t1"].next_key == Secret(b"next-key".ljust(16, b"\0"))
    assert dataclasses.replace(s.of(Tunnel)["t1"], next_key=None).next_key is None


def test_next_key_mistakes_are_located(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("K_SAME", "unit-test-key")
    cases = {
        "no-key": ("  nextKey: only-next\n", "nextKey needs a key"),
        "both": ("  keyFrom: {file: web.key}\n  nextKey: a\n  nextKeyFrom: {env: K_SAME}\n",
                 "give at most one of nextKey or nextKeyFrom"),
        "unreadable": ("  keyFrom: {file: web.key}\n  nextKeyFrom: {file: missing.key}\n",
                       "missing.key"),
    }
    for name, (extra, message) in cases.items():
        d = tmp_path / name
        write_tree(d, {"t.yaml": TUNNEL_YAML + extra})
        try:
            load_directory(d)
        except InvalidDesiredState as exc:
            text = str(exc) + "\n".join(str(p) for p in getattr(exc, "problems", []))
            assert message in text, (name, text)
            assert "t.yaml:" in text, name
        else:
            raise AssertionError(f"{name}: accepted")
