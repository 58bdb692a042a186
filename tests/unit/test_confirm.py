"""Confirm-or-revert and verified applies without a kernel: the record made from a plan, the
revert computed from it (exact, and never over an entry changed since), its file, and the
engine's apply with in-memory tables (reconciler/testing's FakeKernel holds them)."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler import engine
from reconciler.confirm import record as rec
from reconciler.confirm import revert, store
from reconciler.core import registry
from reconciler.core.attachments import AttachAction, AttachPlan, Step
from reconciler.core.compile import compile_tables
from reconciler.core.errors import KernelStateError, UnsafePlan
from reconciler.core.plan import Action, Operation
from reconciler.core.planning import compute_plan
from reconciler.core.verify import entry_differences
from reconciler.testing.fake_kernel import FakeKernel
from tests.unit.test_plan import SECRET, observed_from, state

ME = rec.Process(os.getpid(), store.this_process().start)
ROOT = Path("/nonexistent")


def copy(observed: dict[str, dict[bytes, bytes]]) -> dict[str, dict[bytes, bytes]]:
    return {t: dict(e) for t, e in observed.items()}


def test_reverting_restores_every_entry_exactly_creates_updates_and_deletes() -> None:
    before = observed_from(state(3))
    plan = compute_plan(compile_tables(state(2, backend_port=9090)), copy(before))
    kinds = {op.action for op in plan.operations}
    assert kinds == {Action.UPDATE, Action.DELETE}  # svc2 gone, the others changed
    kernel = FakeKernel(copy(before))
    engine.execute(plan, kernel)
    assert kernel.tables != before
    back, changed = rec.revert_plan(rec.undo_of(plan), kernel.tables)
    assert changed == []
    engine.execute(back, kernel)
    assert {t: e for t, e in kernel.tables.items() if e} == {t: e for t, e in before.items() if e}
    # the revert is a plan like any other: upserts (in the registry's order) before deletes
    actions = [op.action for op in back.operations]
    assert actions == sorted(actions, key=lambda a: a is Action.DELETE)
    assert all(op.reason == rec.REASON for op in back.operations)
    assert back.count(Action.CREATE) == plan.count(Action.DELETE)


def test_an_entry_changed_since_is_left_alone_and_one_never_written_needs_nothing() -> None:
    before = observed_from(state(1))
    plan = compute_plan(compile_tables(state(1, backend_port=9090)), copy(before))
    undo = rec.undo_of(plan)
    # the apply died before writing anything: nothing to do
    back, changed = rec.revert_plan(undo, copy(before))
    assert back.operations == [] and changed == []
    # written, then one entry rewritten by someone else
    kernel = FakeKernel(copy(before))
    engine.execute(plan, kernel)
    first = plan.operations[0]
    kernel.tables[first.table][first.key] = b"\x01" * len(first.value or b"")
    back, changed = rec.revert_plan(undo, kernel.tables)
    assert len(back.operations) == len(plan.operations) - 1
    assert changed == [f"{first.owner}: {first.table} entry changed since the apply; left as "
                       f"it is"]


def test_the_record_round_trips_and_never_shows_its_bytes() -> None:
    plan = compute_plan(compile_tables(state(1)), {})
    r = rec.new(plan, 30, "/srv/bpfsync", "abc123", ME, 1000.0)
    r = replace(r, deadline=1030.0, guard=ME)
    assert rec.decode(rec.encode(r)) == r
    secret = SECRET.encode()
    assert any(secret in (u.wrote or b"") for u in r.undo)  # the key is in what it wrote
    assert secret.hex() in rec.encode(r).decode()  # (hex in the root-only file)
    for text in (repr(r), r.describe(1000.0), r.describe(1010.0)):
        assert SECRET not in text and secret.hex() not in text
    assert r.describe(1010.0).endswith("reverts in 20 s")
    with pytest.raises(ValueError) as exc:
        rec.decode(rec.encode(r).replace(b'"format":1', b'"format":9'))
    assert "abc123" not in str(exc.value)
    with pytest.raises(ValueError):
        rec.decode(b"\xff" + secret)


def test_due_at_the_deadline_or_when_the_apply_died_while_executing() -> None:
    r = rec.new(compute_plan(compile_tables(state(1)), {}), 5, "d", "", ME, 100.0)
    assert revert.due(r, 10**9) is None  # still executing, and its applier (us) lives
    dead = rec.Process(ME.pid, ME.start + 1)  # our pid, another start: not us
    assert revert.due(replace(r, applier=dead), 101.0) == (
        "its apply stopped before it was done")
    timed = replace(r, deadline=105.0)
    assert revert.due(timed, 104.9) is None
    assert revert.due(timed, 105.0) == "not confirmed within 5 s"
    assert revert.due(timed.resolve(rec.CONFIRMED, "confirmed by x", 104.0), 200.0) is None


def test_the_record_file_is_trusted_only_when_root_only(tmp_path: Path) -> None:
    r = rec.new(compute_plan(compile_tables(state(1)), {}), 5, "d", "", ME, 100.0)
    store.write(tmp_path, r)
    assert store.read(tmp_path) == r
    assert store.path(tmp_path).stat().st_mode & 0o777 == 0o600
    store.path(tmp_path).chmod(0o622)
    with pytest.raises(KernelStateError, match="owner or mode"):
        store.read(tmp_path)
    store.path(tmp_path).write_bytes(b'{"format": 1, "state": "pending"}')
    store.path(tmp_path).chmod(0o600)
    with pytest.raises(KernelStateError, match="not a pending-change record"):
        store.read(tmp_path)
    assert store.read(tmp_path / "none") is None


def test_verification_names_each_entry_the_kernel_does_not_hold() -> None:
    plan = compute_plan(compile_tables(state(1)), {})
    kernel = FakeKernel()
    engine.execute(plan, kernel)
    assert entry_differences(plan.operations, kernel.tables) == []
    first, second = plan.operations[:2]
    del kernel.tables[first.table][first.key]
    kernel.tables[second.table][second.key] = b"\0"
    diffs = entry_differences(plan.operations, kernel.tables)
    assert diffs == [f"{first.owner}: {first.table} entry missing after it was written",
                     f"{second.owner}: {second.table} entry holds another value than was "
                     f"written"]


class Tables:
    """PinnedTables over a FakeKernel; drop: table whose writes the 'kernel' ignores."""

    capacities = registry.default_capacities()

    def __init__(self, kernel: FakeKernel, drop: str = "") -> None:
        self.kernel, self.drop = kernel, drop

    def read(self, specs):
        return {s.name: dict(self.kernel.tables.get(s.name, {})) for s in specs}

    def entries(self, spec):
        return list(self.kernel.tables.get(spec.name, {}).items())

    def read_keys(self, spec, keys):
        return {k: v for k in keys if (v := self.kernel.tables.get(spec.name, {}).get(k))}

    def write(self, table, ops, delete):
        if table != self.drop:
            self.kernel.write(table, ops, delete)

    def close(self) -> None:
        pass


@pytest.fixture
def fake(monkeypatch, tmp_path: Path):
    """The engine over in-memory tables, its run directory in tmp_path."""
    kernel = FakeKernel()
    holder = {"tables": Tables(kernel)}
    monkeypatch.setattr(engine, "open_pinned",
                        lambda root, create, capacity=None: holder["tables"])
    monkeypatch.setattr(engine, "host_facts", lambda state, root, create: {})
    monkeypatch.setattr(engine, "locked", lambda root, wait=0: nullcontext())
    monkeypatch.setattr(engine.attach, "plan_attachments", lambda context: AttachPlan())
    monkeypatch.setattr(revert, "run_directory", lambda root: tmp_path)
    return kernel, holder


def test_apply_confirm_revert_and_confirm_through_the_engine(fake) -> None:
    kernel, _ = fake
    root = Path("/nonexistent")
    engine.apply_state(state(2), root)
    before = copy(kernel.tables)
    guards: list[str] = []
    confirm = engine.Confirm(30, lambda r: guards.append(r.id) or ME)
    result = engine.apply_state(state(2, backend_port=9090), root, confirm=confirm)
    assert result.pending is not None and guards == [result.pending.id]
    assert result.pending.guard == ME and result.pending.deadline is not None
    assert kernel.tables != before
    with pytest.raises(revert.PendingConfirmation, match="awaits confirmation"):
        engine.apply_state(state(2), root)  # nobody applies over it
    reverted = engine.revert_pending(root, "by hand")
    assert reverted is not None and reverted.record.state == rec.REVERTED
    assert kernel.tables == before
    assert engine.revert_pending(root, "again") is None
    # confirmed: kept, and the next apply goes ahead
    engine.apply_state(state(2, backend_port=9090), root, confirm=confirm)
    kept = engine.confirm_pending(root, "a test")
    assert isinstance(kept, rec.Pending) and kept.outcome == "confirmed by a test"
    with pytest.raises(revert.NothingPending, match="the last one: confirmed by a test"):
        engine.confirm_pending(root, "a test")
    assert engine.apply_state(state(2, backend_port=9090), root).plan.in_sync


def test_an_overdue_change_is_reverted_by_the_next_apply(fake, tmp_path: Path) -> None:
    kernel, _ = fake
    root = Path("/nonexistent")
    engine.apply_state(state(2), root)
    before = copy(kernel.tables)
    confirm = engine.Confirm(30, lambda r: None)
    engine.apply_state(state(3), root, confirm=confirm)
    overdue = store.read(tmp_path)
    store.write(tmp_path, replace(overdue, deadline=1.0))
    result = engine.apply_state(state(2), root)  # the guard died too: this apply reverts
    assert result.reverted is not None and result.plan.in_sync
    assert kernel.tables == before


def test_an_unverified_apply_fails_and_a_confirming_one_reverts_at_once(fake) -> None:
    kernel, holder = fake
    root = Path("/nonexistent")
    engine.apply_state(state(2), root)
    before = copy(kernel.tables)
    holder["tables"] = Tables(kernel, drop="ti_verify")  # a kernel that ignores these writes
    with pytest.raises(engine.ApplyNotVerified, match="ti_verify entry holds another value"):
        engine.apply_state(state(2, backend_port=9090), root)
    kernel.tables = copy(before)
    with pytest.raises(engine.ApplyNotVerified):
        engine.apply_state(state(2, backend_port=9090), root,
                           confirm=engine.Confirm(30, lambda r: None))
    assert kernel.tables == before  # reverted at once, not after 30 s
    assert engine.read_pending(root).outcome.startswith("reverted: the apply did not verify")


def test_confirm_within_refuses_what_it_cannot_undo(fake, monkeypatch) -> None:
    from reconciler.steering.links import SkLookupLink

    step = Step(AttachAction.REPLACE, SkLookupLink("ns1"), "Proxy/web", "program changed")
    monkeypatch.setattr(engine.attach, "plan_attachments", lambda context: AttachPlan([step]))
    with pytest.raises(UnsafePlan, match="Proxy/web: replace sk_lookup link in netns ns1"):
        engine.apply_state(state(1), Path("/nonexistent"),
                           confirm=engine.Confirm(30, lambda r: None))
    assert fake[0].tables == {}  # refused before anything was written


def test_an_attach_is_undone_by_a_detach_kept_in_the_record() -> None:
    from reconciler import attach
    from reconciler.core.attachments import AttachContext, Hook
    from reconciler.core.filters import TcFilter
    from reconciler.core.state import DesiredState

    hook = Hook("eth0", "ns1", "egress")
    steps = [Step(AttachAction.ATTACH, TcFilter(hook, 7, config=object()), "Intercept/wan",
                  "declared in YAML")]
    back, cannot = attach.undo(AttachContext(DesiredState(), Path("/nonexistent")), steps)
    assert cannot == [] and back == [Step(AttachAction.DETACH, TcFilter(hook, 7),
                                          "Intercept/wan", "reverting an unconfirmed apply")]
    r = rec.new(compute_plan(compile_tables(state(1)), {}), 5, "d", "", ME, 1.0, tuple(back))
    assert rec.decode(rec.encode(r)).steps == tuple(back)
    forged = rec.encode(r).replace(b"reconciler.core.filters:TcFilter", b"os:system")
    with pytest.raises(ValueError, match="not a pending-change record"):
        rec.decode(forged)


def test_the_daemon_refuses_rather_than_reverts_an_overdue_change(fake, tmp_path: Path) -> None:
    """The daemon reverts in its own time (and then holds the change back): an apply of
    its own finding an overdue change is refused, not reverted on the way."""
    root = Path("/nonexistent")
    engine.apply_state(state(2), root)
    engine.apply_state(state(3), root, confirm=engine.Confirm(30, lambda r: None))
    store.write(tmp_path, replace(store.read(tmp_path), deadline=1.0))
    daemon = engine.Confirm(30, lambda r: None, revert_due=False)
    with pytest.raises(revert.PendingConfirmation, match="is due to be reverted"):
        engine.apply_state(state(2), root, confirm=daemon)
    assert store.read(tmp_path).pending


def test_the_gate_holds_everything_while_suspended_and_a_rejected_change_after(
        fake, tmp_path: Path, monkeypatch) -> None:
    from reconciler.core import drift
    from reconciler.daemon import gate as gates
    from reconciler.daemon.gate import SUSPENDED, ApplyGate

    kernel, _ = fake
    started: list[str] = []  # no guard process from a unit test
    monkeypatch.setattr(gates.guard, "spawn", lambda root, rid: started.append(rid))
    root = Path("/nonexistent")
    engine.apply_state(state(2), root)
    plan = compute_plan(compile_tables(state(3)), copy(kernel.tables))
    gate = ApplyGate(30, root)
    assert gate.command("suspend") == {"ok": True, "suspended": True}
    split = drift.Split(plan)
    held = gate.select(split)
    assert held.in_sync and len(split.held) == len(plan.operations)
    assert {h.policy for h in split.held} == {SUSPENDED}
    assert gate.command("resume") == {"ok": True, "suspended": False}
    assert gate.take_request() and not gate.take_request()  # resume reconciles at once
    # a change applied, not confirmed, reverted: held back while the YAML asks for it
    result = engine.apply_state(state(3), root, confirm=gate.confirm(state(3)))
    gate.started(result.pending)
    assert started == [result.pending.id]
    engine.revert_pending(root, "by hand")
    gate.tick()
    assert gate.pending is None and "reverted: by hand" in gate.rejected_note
    again = compute_plan(compile_tables(state(3)), copy(kernel.tables))
    asked = len(again.operations)
    assert asked and gate.select(drift.Split(again)).operations == []
    assert gate.report()["confirmation"]["heldEntries"] == asked
    # the YAML moves on: nothing of the rejected change is asked for; forgotten
    other = compute_plan(compile_tables(state(2, backend_port=9090)), copy(kernel.tables))
    assert gate.select(drift.Split(other)).operations == other.operations
    assert gate.rejected_note is None


def test_plumbing_is_undone_both_ways() -> None:
    from reconciler.intercept.plumbing import (
        ORPHAN_OWNER,
        Plumbing,
        PolicyRule,
        Record,
        SeenPlumbing,
        undo_plumbing,
    )

    rule = PolicyRule(100, 1, 1, 100)
    add = [Step(AttachAction.ATTACH, Plumbing("ns", "rule", rule=rule), "Intercept/a", "x"),
           Step(AttachAction.ATTACH, Plumbing("ns", "route", table=100), "Intercept/a", "x"),
           Step(AttachAction.REPLACE, Plumbing("ns", "sysctl", value=1, before=0),
                "Intercept/a", "x")]
    fresh = {"ns": SeenPlumbing("ns", True, cookie=7, accept_local=0)}
    back, cannot = undo_plumbing(add, fresh)
    assert cannot == []
    assert [(s.action, s.target.item) for s in back] == [
        (AttachAction.DETACH, "sysctl"), (AttachAction.DETACH, "route"),
        (AttachAction.DETACH, "rule"), (AttachAction.DETACH, "record")]
    assert back[0].target.value == 0 and back[-1].owner == ORPHAN_OWNER
    # removed: added again, accept_local taken again, the record rewritten by the first
    # addition (so no step of its own)
    made = {"ns": SeenPlumbing("ns", True, cookie=7, accept_local=1, record=Record(7, 0))}
    remove = [Step(AttachAction.DETACH, Plumbing("ns", "rule", rule=rule), ORPHAN_OWNER, "x"),
              Step(AttachAction.DETACH, Plumbing("ns", "sysctl", value=0, before=0),
                   ORPHAN_OWNER, "x"),
              Step(AttachAction.DETACH, Plumbing("ns", "record"), ORPHAN_OWNER, "x")]
    back, cannot = undo_plumbing(remove, made)
    assert cannot == []
    assert [(s.action, s.target.item, s.target.value, s.target.before) for s in back] == [
        (AttachAction.REPLACE, "sysctl", 1, 0), (AttachAction.ATTACH, "rule", 0, None)]


def test_links_are_undone_with_the_program_they_ran() -> None:
    from reconciler.core.attachments import Kept, undo_links
    from reconciler.steering.links import SkLookupLink

    steps = [Step(AttachAction.ATTACH, SkLookupLink("a"), "Proxy/a", "x"),
             Step(AttachAction.REPLACE, SkLookupLink("b"), "Proxy/b", "x"),
             Step(AttachAction.DETACH, SkLookupLink("c"), "Proxy/c", "x"),
             Step(AttachAction.DETACH, SkLookupLink("d"), "Proxy/d", "x")]
    pins = {"b": "/p/confirm/b", "c": "/p/confirm/c"}
    back, cannot = undo_links(steps, lambda t: t, lambda t: pins.get(t.netns))
    assert cannot == [steps[3]]  # no link there to keep a program of
    assert [(s.action, s.target) for s in back] == [
        (AttachAction.ATTACH, Kept(SkLookupLink("c"), "/p/confirm/c")),
        (AttachAction.REPLACE, Kept(SkLookupLink("b"), "/p/confirm/b")),
        (AttachAction.DETACH, SkLookupLink("a"))]
    r = rec.new(compute_plan(compile_tables(state(1)), {}), 5, "d", "", ME, 1.0, tuple(back))
    assert rec.decode(rec.encode(r)).steps == tuple(back)  # Kept round-trips in the record


def test_a_resource_asks_the_daemon_for_confirmation_by_annotation(tmp_path: Path) -> None:
    from reconciler.core.errors import InvalidDesiredState
    from reconciler.daemon.gate import ApplyGate
    from reconciler.load.directory import load_directory
    from tests.unit.helpers import service, tunnel, write_tree

    asked = tunnel().replace("  name: t1\n", "  name: t1\n  annotations:\n"
                                             "    bpfsync.dev/confirm-within: \"30\"\n")
    d = write_tree(tmp_path / "d", {"t.yaml": asked, "s.yaml": service()})
    loaded = load_directory(d)
    assert loaded.confirm == {"Tunnel/t1": 30.0}
    plan = compute_plan(compile_tables(loaded), {})
    within = ApplyGate(None, ROOT).confirm(loaded).within_for
    assert within is not None and within(plan) == 30.0  # it is among the changed resources
    service_only = [op for op in plan.operations if op.owner == "Service/web"]
    assert within(type(plan)(operations=service_only)) is None  # not asked: no confirmation
    drift_only = [Operation(Action.UPDATE, op.table, op.key, op.value, op.old, op.owner,
                            "changed outside bpfsync", drift=True) for op in plan.operations]
    assert within(type(plan)(operations=drift_only)) is None  # drift corrections need none
    assert ApplyGate(60, ROOT).confirm(loaded).within_for(plan) == 60.0  # the longer
    (d / "t.yaml").write_text(asked.replace('"30"', '"soon"'))
    with pytest.raises(InvalidDesiredState) as exc:
        load_directory(d)
    assert any("t.yaml:6:" in str(p) and "'soon' is not a number of seconds from 1 to 86400"
               in str(p) for p in exc.value.problems), exc.value.problems
