"""Table capacities per pin root: the setting, the pin root's own size kept, and a directory
with more resources than the tables hold refused before it is parsed (located at the first
document past the capacity), what that count cannot see refused by the cross-checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core import capacity, registry
from reconciler.core.errors import BpfsyncError, InvalidDesiredState, KernelStateError
from reconciler.gue import tables as gt
from reconciler.gue.tables import MAX_SERVICES
from reconciler.load import directory
from reconciler.load.prescan import over_capacity
from reconciler.names.tables import NAMES
from tests.unit.helpers import service, tunnel, write_tree

DOC = ("apiVersion: bpfsync/v1\nkind: Service\nmetadata: {{name: s{i}}}\nspec: {{groupId: 1, "
       "serviceId: {i}, proxy: {{address: 203.0.113.10, port: 80}}, backend: {{address: "
       "198.51.100.20, port: 8080}}, tunnel: t1, keyFrom: {{file: web.key}}}}\n---\n")


def test_one_service_past_the_capacity_is_refused_unparsed(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    per_file = 20_000
    files = {"t.yaml": tunnel()}
    for f in range(MAX_SERVICES // per_file + 1):
        first = f * per_file
        last = min(first + per_file, MAX_SERVICES + 1)
        files[f"s{f:02d}.yaml"] = "".join(DOC.format(i=i) for i in range(first, last))
    root = write_tree(tmp_path / "d", files)

    def parse(*_args: object, **_kw: object) -> None:
        raise AssertionError("parsed although over capacity")

    monkeypatch.setattr(directory, "load_paths", parse)
    with pytest.raises(InvalidDesiredState) as exc:
        directory.load_directory(root)
    (problem,) = exc.value.problems
    last_file = f"s{MAX_SERVICES // per_file:02d}.yaml"
    line = 1 + 5 * (MAX_SERVICES % per_file) + 1  # the `kind:` line of the document past it
    assert str(problem.location) == f"{root / last_file}:{line}:1"
    assert problem.message.startswith(f"at least {MAX_SERVICES + 1:,} Services exceed the "
                                      f"table capacity of {MAX_SERVICES:,}")


def test_the_count_is_a_lower_bound(tmp_path: Path) -> None:
    """Only top-level `kind:` lines count (quoted or with a comment too); a block scalar's
    indented line or a flow-style document does not, and is left to the cross-checks."""
    root = write_tree(tmp_path, {
        "a.yaml": service("a", sid=1) + "---\n" + service("b", sid=2).replace(
            "kind: Service", "kind: 'Service'  # quoted"),
        "b.yaml": "apiVersion: bpfsync/v1\nkind: Tunnel\nmetadata:\n  name: t\n"
                  "  annotations: {note: x}\nspec: |\n  kind: Service\n",
        "c.yaml": "{apiVersion: bpfsync/v1, kind: Service, metadata: {name: c}}\n"})
    files = sorted(root.glob("*.yaml"))
    assert over_capacity(files, {"Service": 2}) == []
    (over,) = over_capacity(files, {"Service": 1, "Tunnel": 1})
    assert (Path(over.location.file).name, over.location.line) == ("a.yaml", 15)
    assert "at least 2 Services" in over.message


def test_capacity_settings_parse_with_located_complaints() -> None:
    groups = registry.CAPACITY_GROUPS
    assert capacity.parse("services=1048576, tunnels=131072", groups) == {
        "services": 1_048_576, "tunnels": 131_072}
    assert capacity.parse("", groups) == {}
    for text, says in (("service=2048", "GROUP one of services, tunnels"),
                       ("services", "expected GROUP=ENTRIES"),
                       ("services=1k", "a number from 1,024 to 16,777,216"),
                       ("services=" + "9" * 30, "a number from 1,024")):
        with pytest.raises(BpfsyncError, match=says):
            capacity.parse(text, groups)


def test_a_pin_root_keeps_the_size_its_tables_were_created_with() -> None:
    default = {"services": 131072, "tunnels": 65536}
    fresh = capacity.settle(default, {"services": 4096}, {})
    assert fresh.sizes == {"services": 4096, "tunnels": 65536}
    spec = fresh.spec(gt.VERIFY)
    assert (spec.name, spec.max_entries, fresh.spec(gt.TUNNEL) is gt.TUNNEL) == (
        "ti_verify", 4096, True)
    pinned = {"services": {"ti_verify": 4096, "ti_encap": 4096}}
    assert capacity.settle(default, {}, pinned).of("services") == 4096  # no flag needed
    assert capacity.settle(default, {"services": 4096}, pinned).of("services") == 4096
    with pytest.raises(KernelStateError, match=r"created for 4,096 entries.*cannot be resized"):
        capacity.settle(default, {"services": 8192}, pinned)
    with pytest.raises(KernelStateError, match=r"different sizes .*ti_encap 1,024, ti_verify"):
        capacity.settle(default, {}, {"services": {"ti_verify": 4096, "ti_encap": 1024}})


def test_the_cross_checks_bound_what_the_count_before_parsing_missed(tmp_path: Path) -> None:
    """Flow-style documents are not counted before parsing; after it, the pin root's
    capacity still refuses them, at the first resource past it."""
    flow = "".join(f"{{apiVersion: bpfsync/v1, kind: Tunnel, metadata: {{name: t{i}}}, spec: "
                   f"{{id: {i + 1}, local: {{address: 192.0.2.1}}, remote: {{address: "
                   f"198.51.100.2}}}}}}\n---\n" for i in range(3))
    root = write_tree(tmp_path, {"t.yaml": flow})
    small = capacity.Capacities({"services": 1024, "tunnels": 2})
    with pytest.raises(InvalidDesiredState) as exc:
        directory.load_directory(root, capacities=small)
    (problem,) = exc.value.problems
    assert (problem.resource, problem.location.line) == ("Tunnel/t2", 5)
    assert "3 Tunnels exceed the table capacity of 2 (tunnels;" in problem.message
    assert directory.load_directory(root).count("Tunnel") == 3  # the default holds them


def test_the_names_table_has_room_for_every_group_together() -> None:
    """bs_names holds one entry per resource of every kind: a new pin root's gets the other
    groups' capacities plus 65,536, never less than the default; a pinned one keeps its size,
    and capacities that need more than it has are refused before anything is made."""
    default = registry.default_capacities().sizes
    assert capacity.settle(default, {}, {}).of("names") == 262_144  # today's pin roots
    big = capacity.settle(default, {"services": 1_000_000}, {})
    assert big.of("names") == 1_000_000 + 65_536 + 65_536
    assert big.spec(NAMES).max_entries == big.of("names")
    assert capacity.settle(default, {"services": 2048}, {}).of("names") == 262_144
    pinned = {"names": {"bs_names": 262_144}}
    assert capacity.settle(default, {}, pinned).of("names") == 262_144
    with pytest.raises(KernelStateError, match=r"names table of this pin root was created for "
                                               r"262,144 entries .* need 431,072"):
        capacity.settle(default, {"services": 300_000}, pinned)
    with pytest.raises(BpfsyncError, match="GROUP one of services, tunnels"):
        capacity.parse("names=300000", registry.CAPACITY_GROUPS)


def test_more_resources_than_the_names_table_holds_are_refused_located(tmp_path: Path) -> None:
    flow = "".join(f"{{apiVersion: bpfsync/v1, kind: Tunnel, metadata: {{name: t{i}}}, spec: "
                   f"{{id: {i + 1}, local: {{address: 192.0.2.1}}, remote: {{address: "
                   f"198.51.100.2}}}}}}\n---\n" for i in range(4))
    root = write_tree(tmp_path, {"t.yaml": flow})
    small = capacity.Capacities({"services": 1024, "tunnels": 1024, "names": 3})
    with pytest.raises(InvalidDesiredState) as exc:
        directory.load_directory(root, capacities=small)
    (problem,) = exc.value.problems
    assert (problem.resource, problem.location.line) == ("Tunnel/t3", 7)
    assert "4 resources exceed the names table's capacity of 3" in problem.message
