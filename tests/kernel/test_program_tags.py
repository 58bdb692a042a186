"""What the program tag cache (kernel/tagcache.py) rests on, checked with BCC: a program's
tags do not depend on the pin root it is compiled against (its path only says where the
pinned maps are, and the tag zeroes map references), while a flag that changes the program
changes them. Each program is compiled against two fresh pin roots whose maps the first
apply created."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.engine import open_pinned
from reconciler.gue import programs as gue
from reconciler.gue.hooks import ProgramConfig
from reconciler.intercept import programs as intercept
from reconciler.intercept.hooks import InterceptProgram
from reconciler.kernel.programs import Compiler
from reconciler.steering import programs as steering
from reconciler.tproxy import programs as tproxy
from tests.kernel import owned

NODE = ProgramConfig("node", replies_tunnel=True, fib_lookup=False)
GATEWAY = ProgramConfig("gateway", replies_tunnel=False, fib_lookup=False)
# (what, the tags of one program compiled by compiler against pin root)
PROGRAMS: list[tuple[str, Callable[[Compiler, Path], Any]]] = [
    ("gue node ingress", lambda c, r: c.tags(gue.compiled(c, r, NODE), "ti_ingress")),
    ("gue gateway egress", lambda c, r: c.tags(gue.compiled(c, r, GATEWAY), "ti_egress")),
    ("steering", steering.tags),
    ("intercept", lambda c, r: c.tags(intercept.compiled(
        c, r, InterceptProgram(1, 0x1, 0x2)), "ic_egress")),
    ("transparent", lambda c, r: tproxy.tags(c, r, (1, 2), ["tp_connect4_1", "tp_sock_ops"])),
]


@pytest.fixture
def two_pin_roots() -> Iterator[tuple[Path, Path]]:
    roots = (owned.pin_root("tags-a"), owned.pin_root("tags-b"))
    try:
        for root in roots:
            open_pinned(root, create=True).close()
        yield roots
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize(("what", "tags_of"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_tags_do_not_depend_on_the_pin_root(two_pin_roots: tuple[Path, Path], what: str,
                                            tags_of: Callable[[Compiler, Path], Any]) -> None:
    found = []
    for root in two_pin_roots:
        compiler = Compiler()  # no cache: BCC compiles each
        try:
            found.append(tags_of(compiler, root))
        finally:
            compiler.close()
    assert found[0] == found[1], what


def test_a_flag_that_changes_the_program_changes_its_tags(
        two_pin_roots: tuple[Path, Path]) -> None:
    root = two_pin_roots[0]
    compiler = Compiler()
    try:
        node = compiler.tags(gue.compiled(compiler, root, NODE), "ti_ingress")
        gateway = compiler.tags(gue.compiled(compiler, root, GATEWAY), "ti_ingress")
    finally:
        compiler.close()
    assert node.isdisjoint(gateway)
