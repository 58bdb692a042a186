"""Compiling a desired state into table entries: every data path's compile, in registry order."""

from __future__ import annotations

from typing import TYPE_CHECKING

from reconciler.core import registry
from reconciler.core.desired import CompileContext, CompileMemo, DesiredTables
from reconciler.core.state import DesiredState

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path
    from typing import Any


def compile_tables(state: DesiredState, memo: CompileMemo | None = None,
                   facts: Mapping[str, Any] | None = None,
                   pin_root: Path | None = None,
                   observed: Mapping[str, Mapping[bytes, bytes]] | None = None) -> DesiredTables:
    """The entries state wants in every owned table (each present, if empty). memo: the
    daemon's, kept between reconciles; facts (registry.host_facts) and pin_root: what the
    entries of some data paths are made of; observed: what the kernel holds, whose recorded
    history (the names table) is kept (core/desired.CompileContext)."""
    out = DesiredTables.empty(registry.OWNED_TABLES)
    context = CompileContext(memo, facts, pin_root, observed)
    for capability in registry.CAPABILITIES:
        capability.compile(out, state, context)
    return out
