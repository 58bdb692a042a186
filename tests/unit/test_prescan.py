"""A directory with more resources than their tables hold is refused before it is parsed,
located at the first document past the capacity; what the count cannot see is left to the
cross-checks after parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.core.errors import InvalidDesiredState
from reconciler.gue.tables import MAX_SERVICES
from reconciler.load import directory
from reconciler.load.prescan import over_capacity
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
