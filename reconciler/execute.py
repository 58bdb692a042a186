"""Executing a plan: the one order every apply follows, against a kernel shell (engine.py's
KernelExecutor) or the in-memory fake (reconciler/testing/fake_kernel.py).

1. Upserts, in plan order (the registry's order of tables), one batch per run of a table.
2. Attachments: host plumbing set up, sk_lookup links, TC filters, cgroup links, plumbing
   taken down — so a program attached here finds its entries written in 1.
3. Deletes, in plan order — after the programs that used the entries are gone.

Nothing is rolled back: the first step that fails raises, and every step before it stays
done. Each step is idempotent and plans are computed from what the kernel holds, so the next
apply goes the rest of the way without doing anything twice (README "How a plan is made").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from reconciler.core.attachments import AttachAction
from reconciler.core.plan import Operation, Plan

if TYPE_CHECKING:
    from reconciler.attach import AttachOperation
    from reconciler.intercept.plumbing import PlumbingOperation
    from reconciler.steering.links import LinkOperation
    from reconciler.tproxy.cgroups import CgroupOperation


class Executor(Protocol):
    """One kind of step each; every method is idempotent (writing an entry that is there,
    detaching what is gone are no-ops) and raises on failure."""

    def write(self, table: str, ops: list[Operation], delete: bool) -> None: ...
    def plumbing(self, ops: list[PlumbingOperation], forget: list[str | None]) -> None: ...
    def link(self, op: LinkOperation) -> None: ...
    def filter(self, op: AttachOperation) -> None: ...
    def cgroup(self, op: CgroupOperation) -> None: ...


def execute(plan: Plan, executor: Executor) -> tuple[int, int]:
    """Run plan; (entries written, attachment changes)."""
    written = 0
    for table, is_delete, ops in plan.batches():
        if not is_delete:
            executor.write(table, ops, delete=False)
            written += len(ops)
    a = plan.attachments
    executor.plumbing([op for op in a.plumbing if op.action is not AttachAction.DETACH], [])
    for link in a.links:
        executor.link(link)
    for op in a.operations:
        executor.filter(op)
    for cop in a.cgroups:
        executor.cgroup(cop)
    executor.plumbing([op for op in a.plumbing if op.action is AttachAction.DETACH],
                      a.forget_hosts)
    for table, is_delete, ops in plan.batches():
        if is_delete:
            executor.write(table, ops, delete=True)
            written += len(ops)
    return written, len(a.changes())
