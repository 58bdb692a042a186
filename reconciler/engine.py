"""The reconcile pipeline: desired state from a directory, observed state from the kernel, the
plan between them, and its execution. Stateless: the kernel is read fresh every time."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.desired import compile_tables
from reconciler.errors import UnsafePlan
from reconciler.kernel.maps import PinnedTables, locked, open_tables
from reconciler.load import load_directory
from reconciler.plan import Observed, Plan, PrunePolicy, compute_plan
from reconciler.schema import Schemas
from reconciler.state import DesiredState


@dataclass(frozen=True)
class Result:
    state: DesiredState
    plan: Plan
    written: int = 0


def read_observed(pin_root: Path) -> Observed:
    tables = open_tables(pin_root, create=False)
    try:
        return tables.read()
    finally:
        tables.close()


def diff(directory: Path, pin_root: Path, prune: PrunePolicy | None = None,
         schemas: Schemas | None = None) -> Result:
    state = load_directory(directory, schemas)
    return Result(state, compute_plan(compile_tables(state), read_observed(pin_root), prune))


def apply(directory: Path, pin_root: Path, prune: PrunePolicy | None = None,
          allow_empty: bool = False, schemas: Schemas | None = None) -> Result:
    state = load_directory(directory, schemas)
    desired = compile_tables(state)
    tables: PinnedTables = open_tables(pin_root, create=True)
    try:
        with locked(pin_root):
            plan = compute_plan(desired, tables.read(), prune)
            if plan.empties_everything() and not allow_empty:
                raise UnsafePlan(
                    f"{directory} declares nothing, and applying it would delete all "
                    f"{plan.observed_total} entries bpfsync manages; pass --allow-empty if "
                    f"that is really what you want")
            written = tables.apply(plan)
    finally:
        tables.close()
    return Result(state, plan, written)
