"""Executing a plan: the one order every apply follows, against a kernel shell (engine.py's
KernelExecutor) or the in-memory fake (reconciler/testing/fake_kernel.py).

1. Upserts, in plan order (the registry's order of tables), one batch per run of a table.
2. Attachments, in the plan's order (core/attachments.AttachPlan): host state the programs
   need set up (plumbing), programs attached, replaced or detached (TC filters, sk_lookup
   links, cgroup links), host state taken down — so a program attached here finds its
   entries written in 1.
3. Deletes, in plan order — after the programs that used the entries are gone.

Nothing is rolled back: the first step that fails raises, and every step before it stays
done. Each step is idempotent and plans are computed from what the kernel holds, so the next
apply goes the rest of the way without doing anything twice (README "How a plan is made").
"""

from __future__ import annotations

from typing import Protocol

from reconciler.core.attachments import Step
from reconciler.core.plan import Operation, Plan


class Executor(Protocol):
    """Every method is idempotent (writing an entry that is there, detaching what is gone
    are no-ops) and raises on failure."""

    def write(self, table: str, ops: list[Operation], delete: bool) -> None: ...

    def attach(self, steps: list[Step]) -> None:
        """Run the steps in order (each by the part it belongs to)."""
        ...


def execute(plan: Plan, executor: Executor) -> tuple[int, int]:
    """Run plan; (entries written, attachment changes)."""
    written = 0
    for table, is_delete, ops in plan.batches():
        if not is_delete:
            executor.write(table, ops, delete=False)
            written += len(ops)
    steps = plan.attachments.changes()
    if steps:
        executor.attach(steps)
    for table, is_delete, ops in plan.batches():
        if is_delete:
            executor.write(table, ops, delete=True)
            written += len(ops)
    return written, len(steps)
