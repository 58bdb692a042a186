from __future__ import annotations

import json

from reconciler.core import registry
from reconciler.core import tables as t
from reconciler.core.compile import compile_tables
from reconciler.core.model import Endpoint, Origin
from reconciler.core.plan import Action, PrunePolicy
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.gue import tables as gt
from reconciler.gue.model import KeySource, Service, Tunnel
from reconciler.load.secrets import Secret, decode_key
from reconciler.render import plan_json, plan_text

SECRET = "SUPERSECRETKEY12"


def state(n_services: int = 2, backend_port: int = 8080, key: str = SECRET) -> DesiredState:
    s = DesiredState()
    s.of(Tunnel)["t1"] = Tunnel("t1", 100, Endpoint("192.0.2.1", 6080), None, Origin("a.yaml", 0))
    s.of(Tunnel)["t2"] = Tunnel("t2", 101, Endpoint("192.0.2.1", 6080),
                             Endpoint("198.51.100.2", 6080), Origin("a.yaml", 1))
    for i in range(n_services):
        s.of(Service)[f"svc{i}"] = Service(
            f"svc{i}", 1, i, "tcp", Endpoint("203.0.113.10", 1000 + i),
            Endpoint("198.51.100.20", backend_port), "t1", decode_key(key), KeySource("inline"),
            Origin("b.yaml", i))
    return s


def observed_from(s: DesiredState) -> dict[str, dict[bytes, bytes]]:
    return {name: dict(entries) for name, entries in compile_tables(s).entries.items()}


def test_codec_round_trip_and_stamp() -> None:
    key = gt.endpoint_key("203.0.113.10", 80, 6)
    value = gt.encap_value(key, 100, 1, 2, Secret(b"k" * 16))
    assert len(key) == gt.ENCAP.key_size and len(value) == gt.ENCAP.value_size
    assert registry.decode_key(gt.ENCAP.name, key) == {"address": "203.0.113.10", "port": 80,
                                               "protocol": "tcp"}
    assert registry.decode_value(gt.ENCAP.name, value)["tunnelId"] == 100
    assert key[:4] == bytes([203, 0, 113, 10]) and key[4:6] == (80).to_bytes(2, "big")
    assert t.stamp_ok(key, value)
    assert not t.stamp_ok(key, value[:5] + b"\xff" + value[6:])
    for spec, value in ((gt.TUNNEL, gt.tunnel_value(gt.tunnel_key(1), ("192.0.2.1", 6080), None)),
                        (gt.DECAP, gt.decap_value(key)),
                        (gt.VERIFY, gt.verify_value(gt.sid_key(1, 2), Secret(b"x" * 16), key))):
        assert len(value) == spec.value_size


def test_first_plan_creates_tunnels_before_services() -> None:
    plan = compute_plan(compile_tables(state()), {})
    tables = [op.table for op in plan.operations]
    assert all(op.action is Action.CREATE for op in plan.operations)
    assert tables.index("ti_encap") > tables.index("ti_tunnel")
    assert tables.index("ti_encap") > tables.index("ti_decap")
    # 2 tunnels, 1 shared decap, 2x2 service, and first the 4 resources' names
    assert len(plan.operations) == 4 + 2 + 1 + 2 * 2
    assert tables[:4] == ["bs_names"] * 4
    decap = [op for op in plan.operations if op.table == "ti_decap"]
    assert len(decap) == 1


def test_in_sync_plan_is_empty() -> None:
    s = state()
    plan = compute_plan(compile_tables(s), observed_from(s))
    assert plan.in_sync and plan.operations == []


def test_one_field_change_is_one_update() -> None:
    before, after = state(), state(backend_port=9090)
    plan = compute_plan(compile_tables(after), observed_from(before))
    assert [(op.action, op.table, op.drift) for op in plan.operations] == [
        (Action.UPDATE, "ti_verify", False), (Action.UPDATE, "ti_verify", False)]
    assert plan.operations[0].reason == "changed in YAML"


def test_removed_resource_is_pruned_after_services_and_kept_when_disabled() -> None:
    before, after = state(3), state(2)
    plan = compute_plan(compile_tables(after), observed_from(before))
    assert [(op.action, op.table) for op in plan.operations] == [
        (Action.DELETE, "ti_encap"), (Action.DELETE, "ti_verify"), (Action.DELETE, "bs_names")]
    # named as declared (the names table), not after its ids (Service/svc-1-2)
    assert {op.owner for op in plan.operations} == {"Service/svc2"}
    kept = compute_plan(compile_tables(after), observed_from(before),
                        PrunePolicy(keep_kinds=frozenset({"Service"})))
    assert kept.in_sync and len(kept.kept) == 3
    assert compute_plan(compile_tables(after), observed_from(before),
                        PrunePolicy(enabled=False)).in_sync


def test_foreign_entries_are_drift() -> None:
    s = state()
    observed = observed_from(s)
    tkey = gt.tunnel_key(101)
    tampered = bytearray(observed["ti_tunnel"][tkey])
    tampered[4:8] = bytes([198, 51, 100, 9])
    observed["ti_tunnel"][tkey] = bytes(tampered)
    observed["ti_encap"][gt.endpoint_key("203.0.113.99", 80, 6)] = b"\0" * 32
    plan = compute_plan(compile_tables(s), observed)
    assert [(op.action, op.drift, op.reason) for op in plan.operations] == [
        (Action.UPDATE, True, "changed outside bpfsync"),
        (Action.DELETE, True, "added outside bpfsync")]


def test_emptying_everything_is_flagged() -> None:
    plan = compute_plan(compile_tables(DesiredState()), observed_from(state()))
    assert plan.empties_everything()
    assert not compute_plan(compile_tables(state(1)), observed_from(state())).empties_everything()


def test_batches_group_consecutive_same_table_operations() -> None:
    plan = compute_plan(compile_tables(state(5)), {})
    groups = [(table, is_delete, len(ops)) for table, is_delete, ops in plan.batches()]
    assert groups == [("bs_names", False, 7), ("ti_tunnel", False, 2), ("ti_decap", False, 1),
                      ("ti_verify", False, 5), ("ti_encap", False, 5)]


def test_secrets_never_rendered() -> None:
    before, after = state(key=SECRET), state(key="OTHERSECRETKEY99", backend_port=9)
    plan = compute_plan(compile_tables(after), observed_from(before))
    text, js = plan_text(plan, "dir", after), plan_json(plan, after)
    for out in (text, js, repr(plan.operations), repr(after.of(Service)["svc0"])):
        assert "SUPERSECRET" not in out and "OTHERSECRET" not in out
    assert "key: (sensitive value changed)" in text
    assert "backend: 198.51.100.20:8080 → 198.51.100.20:9" in text
    doc = json.loads(js)
    change = doc["resources"][0]["actions"][0]["changes"]
    assert {"field": "key", "sensitive": True} in change
    assert doc["resources"][0]["actions"][0]["after"]["key"] == "(sensitive)"
    created = compute_plan(compile_tables(after), {})
    assert "OTHERSECRET" not in plan_text(created, "dir") + plan_json(created)


def test_json_shape_is_stable() -> None:
    s = state(1)
    observed = observed_from(s)
    observed["ti_encap"][gt.endpoint_key("203.0.113.99", 80, 6)] = b"\1" * 32
    doc = json.loads(plan_json(compute_plan(compile_tables(state(2)), observed), s))
    assert list(doc) == ["formatVersion", "inSync", "summary", "resources", "drift", "kept",
                         "errors", "warnings"]
    assert doc["summary"] == {"create": 3, "update": 0, "delete": 1, "attach": 0, "detach": 0,
                              "drift": 1, "kept": 0, "desiredEntries": 11, "observedEntries": 9}
    assert doc["resources"][0]["resource"] == "Service/svc1"
    assert set(doc["resources"][0]["actions"][0]) == {
        "action", "resource", "table", "entry", "key", "before", "after", "changes", "reason",
        "drift"}
    assert doc["drift"][0]["reason"] == "added outside bpfsync"


def test_tables_compared_as_they_are_read_give_the_same_plan() -> None:
    """compute_plan with entries (each table read as it is compared, the engine's way) and
    with whole tables: the same operations, kept deletions and counts, in every case here:
    in sync, created, changed, removed, tampered with, foreign entries, emptied."""
    tampered = observed_from(state(3))
    tkey = gt.tunnel_key(101)
    tampered["ti_tunnel"][tkey] = tampered["ti_tunnel"][tkey][:4] + bytes(4) + \
        tampered["ti_tunnel"][tkey][8:]
    tampered["ti_encap"][gt.endpoint_key("203.0.113.99", 80, 6)] = b"\0" * 32
    cases = [(state(3), {}), (state(3), observed_from(state(3))),
             (state(3), observed_from(state(5))), (state(5), observed_from(state(3))),
             (state(3, backend_port=9), observed_from(state(3))), (state(3), tampered),
             (DesiredState(), observed_from(state(2)))]
    for prune in (PrunePolicy(), PrunePolicy(keep_kinds=frozenset({"Service"}))):
        for desired_state, observed in cases:
            reads: list[str] = []

            def entries(name: str, observed: dict[str, dict[bytes, bytes]] = observed,
                        reads: list[str] = reads) -> list[tuple[bytes, bytes]]:
                reads.append(name)
                return list(observed.get(name, {}).items())

            whole = compute_plan(compile_tables(desired_state), observed, prune)
            read = compute_plan(compile_tables(desired_state), observed, prune, entries)
            assert (read.operations, read.kept, read.observed_counts) == (
                whole.operations, whole.kept, whole.observed_counts)
            assert bool(whole.operations or whole.kept) == (observed != observed_from(desired_state))
            # a table is read once, and again (its keys) only when desired keys are missing
            assert all(reads.count(name) <= 2 for name in reads)
