"""The names table (reconciler/names): declared names, files and revisions, written with the
entries they name, trusted only as bpfsync wrote them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from reconciler import render
from reconciler.core import registry
from reconciler.core.compile import compile_tables
from reconciler.core.model import Origin
from reconciler.core.plan import Action, Plan
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.gue import tables as gt
from reconciler.gue.inventory import services, tunnels
from reconciler.gue.model import Service
from reconciler.load.directory import load_directory
from reconciler.names import tables as nt
from tests.unit.helpers import write_tree
from tests.unit.test_plan import observed_from, state
from tests.unit.test_registry import EVERY_KIND

REV_A = "0123456789abcdef0123456789abcdef01234567"
REV_B = "fedcba9876543210fedcba9876543210fedcba98"


def _at(s: DesiredState, revision: str | None) -> DesiredState:
    s.revision = revision
    return s


def _plan(after: DesiredState, observed: dict[str, dict[bytes, bytes]]) -> Plan:
    """As engine plans: compiled against what the kernel holds (its recorded history)."""
    return compute_plan(compile_tables(after, observed=observed), observed)


def test_a_new_commit_that_changes_nothing_writes_nothing() -> None:
    before = _at(state(3), REV_A)
    plan = _plan(_at(state(3), REV_B), observed_from(before))
    assert plan.in_sync and plan.operations == []


def test_a_changed_resource_records_the_new_revision_and_only_it() -> None:
    before = _at(state(3), REV_A)
    after = _at(state(3), REV_B)
    svc = after.of(Service)["svc1"]
    after.of(Service)["svc1"] = dataclasses.replace(svc, proxy=dataclasses.replace(
        svc.proxy, port=4444))
    plan = _plan(after, observed_from(before))
    names = [op for op in plan.operations if op.table == "bs_names"]
    assert [(op.action, op.owner) for op in names] == [(Action.UPDATE, "Service/svc1")]
    assert plan.operations.index(names[0]) == 0  # names are written before the entries
    assert render.changes(names[0]) == [{"field": "revision", "from": REV_A[:12],
                                         "to": REV_B[:12]}]
    assert {op.owner for op in plan.operations} == {"Service/svc1"}


def test_a_moved_resource_records_its_new_file_when_it_is_next_written() -> None:
    before, after = state(2), state(2)
    svc = after.of(Service)["svc0"]
    after.of(Service)["svc0"] = dataclasses.replace(svc, origin=Origin("moved/c.yaml", 0))
    # the data path is as declared: in sync (the file that last applied it stays recorded)
    assert _plan(after, observed_from(before)).in_sync
    after.of(Service)["svc0"] = dataclasses.replace(after.of(Service)["svc0"], backend=(
        dataclasses.replace(svc.backend, port=9)))
    plan = _plan(after, observed_from(before))
    first = plan.operations[0]
    assert (first.action, first.table) == (Action.UPDATE, "bs_names")
    assert render.changes(plan.operations[0]) == [
        {"field": "file", "from": "b.yaml", "to": "moved/c.yaml"}]


def test_a_renamed_resource_is_a_change_of_its_name_alone() -> None:
    before, after = state(2), state(2)
    svc = after.of(Service).pop("svc0")
    after.of(Service)["web"] = dataclasses.replace(svc, name="web")
    plan = _plan(after, observed_from(before))
    assert [(op.action, op.table, op.owner) for op in plan.operations] == [
        (Action.UPDATE, "bs_names", "Service/web")]
    assert render.changes(plan.operations[0]) == [{"field": "name", "from": "svc0", "to": "web"}]


def test_files_are_named_relative_to_the_directory_and_long_paths_keep_their_end(
        tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"sub/t.yaml": EVERY_KIND["t.yaml"]})
    desired = compile_tables(load_directory(root))
    (value,) = desired.entries["bs_names"].values()
    assert nt.decode_value(value) == {"name": "t1", "file": "sub/t.yaml"}
    long = "d" * 200 + "/é" * 30 + "/tail.yaml"
    decoded = nt.decode_value(nt.names_value(nt.names_key("Tunnel/tunnel-1"), "t", long, None))
    assert decoded["file"].startswith("...") and decoded["file"].endswith("/é/tail.yaml")
    assert len(decoded["file"].encode()) <= nt.FILE_LEN


def test_revisions_read_back_short_and_dirty() -> None:
    key = nt.names_key("Tunnel/tunnel-1")
    assert nt.decode_value(nt.names_value(key, "t", "f", REV_A + "-dirty"))["revision"] == (
        REV_A[:12] + "-dirty")
    assert nt.decode_value(nt.names_value(key, "t", "f", REV_A[:12]))["revision"] == REV_A[:12]
    assert "revision" not in nt.decode_value(nt.names_value(key, "t", "f", "not-hex"))


def test_deletions_get_and_service_tunnel_refs_use_the_declared_names() -> None:
    observed = observed_from(state(3))
    plan = compute_plan(compile_tables(state(2)), observed)
    assert {op.owner for op in plan.operations} == {"Service/svc2"}
    assert "Service/svc2" in render.plan_text(plan, "d", state(2))
    shown = {d["metadata"]["name"]: d for d in services(observed)}
    assert set(shown) == {"svc0", "svc1", "svc2"}
    assert shown["svc2"]["spec"]["tunnel"] == "t1"
    assert shown["svc2"]["status"]["source"] == {"file": "b.yaml"}
    assert [d["metadata"]["name"] for d in tunnels(observed)] == ["t1", "t2"]


def test_without_names_entries_fall_back_to_ids() -> None:
    observed = observed_from(state(3))
    del observed["bs_names"]
    plan = compute_plan(compile_tables(state(2)), observed)
    assert {op.owner for op in plan.operations if op.action is Action.DELETE} == {
        "Service/svc-1-2"}
    assert [d["metadata"]["name"] for d in tunnels(observed)] == ["tunnel-100", "tunnel-101"]
    assert {d["spec"]["tunnel"] for d in services(observed)} == {"tunnel-100"}


def test_a_foreign_or_hostile_names_entry_names_nothing_and_is_removed_as_drift() -> None:
    observed = observed_from(state(3))
    names = observed["bs_names"]
    key = nt.names_key(gt.service_ref(1, 2))
    # an entry someone else wrote (no stamp): not trusted, even with a valid name
    names[key] = names[key][:-4] + b"\0\0\0\0"
    # a stamped entry whose name is terminal escapes: not a name either
    hostile_key = nt.names_key(gt.service_ref(1, 1))
    names[hostile_key] = nt.stamped(hostile_key, b"\x1b[31mevil".ljust(nt.NAME_LEN, b"\0")
                                    + names[hostile_key][nt.NAME_LEN:-4])
    # and a foreign key that is not a kernel ref at all
    names[b"\x1b]0;pwned\x07".ljust(nt.REF_LEN, b"\0")] = b"\0" * nt.NAMES.value_size
    plan = compute_plan(compile_tables(state(1)), observed)
    text = render.plan_text(plan, "d", state(1)) + render.plan_json(plan, state(1))
    assert "\x1b" not in text and "evil" not in text and "pwned" not in text
    owners = {op.owner for op in plan.operations}
    assert {"Service/svc-1-2", "Service/svc-1-1", "(unknown)/(unknown)"} <= owners
    foreign = [op for op in plan.operations if op.table == "bs_names" and op.drift]
    assert len(foreign) == 2 and all(op.action is Action.DELETE for op in foreign)


def test_every_kind_with_entries_has_a_kernel_ref_that_fits_the_key() -> None:
    for kind in registry.KINDS.values():
        has_entries = kind.name in registry.ENTRY_KINDS
        assert (kind.kernel_ref is not None) == has_entries, kind.name
    assert len(nt.names_key(gt.service_ref(2**32 - 1, 2**32 - 1))) == nt.REF_LEN
    assert len(nt.names_key("TransparentProxy/(id 4294967295)")) == nt.REF_LEN


def test_the_daemons_memo_compiles_what_a_fresh_compile_does() -> None:
    from reconciler.core.desired import CompileMemo

    memo = CompileMemo()
    observed = observed_from(_at(state(3), REV_A))
    after = _at(state(3), REV_B)
    for _ in range(2):  # cold, then by difference
        with_memo = compile_tables(after, memo, observed=observed)
        assert with_memo.entries["bs_names"] == compile_tables(
            after, observed=observed).entries["bs_names"] == observed["bs_names"]
    # a Service replaced (a new object) and one removed, as the parse cache hands them over
    svc = after.of(Service)["svc1"]
    after.of(Service)["svc1"] = dataclasses.replace(svc, backend=dataclasses.replace(
        svc.backend, port=9))
    del after.of(Service)["svc2"]
    plan = compute_plan(compile_tables(after, memo, observed=observed), observed)
    assert [(op.action, op.table, op.owner) for op in plan.operations if op.table == "bs_names"] == [
        (Action.UPDATE, "bs_names", "Service/svc1"), (Action.DELETE, "bs_names", "Service/svc2")]
    # another process applied meanwhile (a newer revision of svc0): that history is kept
    key = nt.names_key(gt.service_ref(1, 0))
    observed["bs_names"][key] = nt.names_value(key, "svc0", "b.yaml", REV_B)
    assert compute_plan(compile_tables(after, memo, observed=observed), observed).operations == [
        op for op in plan.operations if op.key != key] != []


def test_after_a_refresh_the_daemons_memo_and_the_kernel_agree() -> None:
    """Once a written resource's names entry is refreshed (new revision), the memo holds
    what was written: the next plan is in sync and finds the table equal at once."""
    from reconciler.core.desired import CompileMemo

    memo = CompileMemo()
    observed = observed_from(_at(state(3), REV_A))
    after = _at(state(3), REV_B)
    compile_tables(after, memo, observed=observed)
    svc = after.of(Service)["svc1"]
    after.of(Service)["svc1"] = dataclasses.replace(svc, backend=dataclasses.replace(
        svc.backend, port=9))
    plan = compute_plan(compile_tables(after, memo, observed=observed), observed)
    for op in plan.operations:  # executed
        observed[op.table][op.key] = op.value
    again = compile_tables(after, memo, observed=observed)
    assert again.entries["bs_names"] == observed["bs_names"]
    assert compute_plan(again, observed).in_sync
