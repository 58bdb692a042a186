"""The daemon's assembly by difference gives exactly what assembling from scratch gives (the
same resources in the same order, annotations, warnings, refusals: the key counts of the
checks of keys claimed twice are moved by the difference too), and its compile memos,
updated by the difference, the same entries, after every kind of edit; it takes the
difference only where that cannot differ."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reconciler.core.compile import compile_tables
from reconciler.core.desired import CompileMemo
from reconciler.core.errors import InvalidDesiredState
from reconciler.core.state import DesiredState
from reconciler.load.directory import load_directory
from reconciler.load.filecache import FileCache
from reconciler.load.schema import Schemas
from tests.unit.helpers import service, tunnel, write_tree


def _files(extra: dict[str, str] | None = None) -> dict[str, str]:
    files = {"t.yaml": tunnel()}
    for f in range(8):
        files[f"s{f}.yaml"] = "---\n".join(
            service(f"web{2 * f + i}", sid=2 * f + i, port=1000 + 2 * f + i) for i in (0, 1))
    return {**files, **(extra or {})}


def _seen(load: Any, memo: CompileMemo | None = None) -> tuple[Any, ...]:
    """Everything a consumer can see of a load: the state in order and the entries it
    compiles to (with memo: by its difference when it has one), or the refusal."""
    try:
        s: DesiredState = load()
    except InvalidDesiredState as exc:
        return ("invalid", [str(p) for p in exc.problems])
    compiled = compile_tables(s, memo)
    return ({k: list(v.items()) for k, v in s.resources.items()}, s.drift, s.confirm,
            [str(w) for w in s.warnings], s.files, compiled.entries, compiled.owners)


def _annotated(name: str, sid: int, port: int, annotation: str) -> str:
    return service(name, sid=sid, port=port).replace(
        f"name: {name}\n", f"name: {name}\n  annotations: {{{annotation}}}\n")


EDITS: list[tuple[str, dict[str, str], bool]] = [  # (what, files written, by difference)
    ("a port", {"s3.yaml": service("web6", sid=6, port=2006) + "---\n" +
                service("web7", sid=7, port=1007)}, True),
    ("a drift annotation", {"s3.yaml": _annotated("web6", 6, 2006, '"bpfsync.dev/drift": warn')
                            + "---\n" + service("web7", sid=7, port=1007)}, True),
    ("a confirm annotation instead", {"s3.yaml": _annotated(
        "web6", 6, 2006, '"bpfsync.dev/confirm-within": "30s"') + "---\n" +
        service("web7", sid=7, port=1007)}, True),
    ("two files at once", {"s1.yaml": service("web2", sid=2, port=3002) + "---\n" +
                           service("web3", sid=3, port=3003),
                           "s5.yaml": service("web10", sid=10, port=3010) + "---\n" +
                           service("web11", sid=11, port=3011)}, True),
    ("a Service added", {"s2.yaml": "---\n".join(service(f"web{i}", sid=i, port=1000 + i)
                                                 for i in (4, 5, 40))}, False),
    ("a Service renamed", {"s2.yaml": "---\n".join(service(f"web{i}", sid=i, port=1000 + i)
                                                   for i in (4, 41))}, False),
    # the names are as they were: the cross-checks, run over everything, refuse the clash
    ("a port clash with another file", {"s2.yaml": service("web4", sid=4, port=1004) +
                                        "---\n" + service("web41", sid=41, port=1000)}, True),
    ("the clash fixed", {"s2.yaml": service("web4", sid=4, port=1004) + "---\n" +
                         service("web41", sid=41, port=1041)}, True),
    ("a Service turned invalid", {"s4.yaml": service("web8", sid=8, port=1008) + "---\n" +
                                  service("web9", sid=9, port=1009).replace("tcp", "sctp")},
     False),
    ("and valid again", {"s4.yaml": service("web8", sid=8, port=1008) + "---\n" +
                         service("web9", sid=9, port=1009)}, False),
    ("a name defined twice", {"s6.yaml": service("web12", sid=12, port=1012) + "---\n" +
                              service("web0", sid=13, port=1013)}, False),
    ("and no longer", {"s6.yaml": service("web12", sid=12, port=1012) + "---\n" +
                       service("web13", sid=13, port=1013)}, False),
    ("after a clean state again", {"s6.yaml": service("web12", sid=12, port=4012) + "---\n" +
                                   service("web13", sid=13, port=1013)}, True),
    ("a file added", {"s9.yaml": service("web90", sid=90, port=1090)}, False),
    ("nothing", {}, True),
]


def test_by_difference_equals_from_scratch_after_every_edit(tmp_path: Path) -> None:
    root = write_tree(tmp_path, _files())
    cache = FileCache(clock=lambda: time.time() + 10)  # signatures trusted: only edits parse
    schemas, memo = Schemas(), CompileMemo()  # kept between loads, as the daemon keeps them
    _seen(lambda: load_directory(root, schemas, cache), memo)
    for what, files, by_difference in EDITS:
        write_tree(root, files)
        kept = _seen(lambda: load_directory(root, schemas, cache), memo)
        assert kept == _seen(lambda: load_directory(root, schemas)), what
        assert cache.assembly.by_difference is by_difference, what
