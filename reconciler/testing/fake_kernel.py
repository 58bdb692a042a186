"""An in-memory kernel for execute(): tables as dicts, attachments as sets, every step logged,
and a failure injected at any step — so the engine's order and what a failed apply leaves
behind get fast unit tests (the real-kernel tests stay as they are)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from reconciler.core.attachments import AttachAction
from reconciler.core.errors import KernelStateError
from reconciler.core.plan import Operation
from reconciler.core.tables import Observed

if TYPE_CHECKING:
    from reconciler.attach import AttachOperation
    from reconciler.intercept.plumbing import PlumbingOperation
    from reconciler.steering.links import LinkOperation
    from reconciler.tproxy.cgroups import CgroupOperation


class InjectedFailure(KernelStateError):
    """The failure FakeKernel was told to raise."""


@dataclass
class FakeKernel:
    """tables: what the maps hold (read it back as the observed state of the next plan);
    attached: the attachments in place, by what they attach to; steps: each step run, as
    "write ti_tunnel", "delete ti_encap", "filter attach eth0 egress", ...; fail_at: the
    1-based number of the step that raises InjectedFailure (counted over the kernel's life)."""

    tables: Observed = field(default_factory=dict)
    attached: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    fail_at: int | None = None

    def _step(self, name: str) -> None:
        if self.fail_at is not None and len(self.steps) + 1 == self.fail_at:
            self.fail_at = None
            raise InjectedFailure(f"injected failure at step {len(self.steps) + 1}: {name}")
        self.steps.append(name)

    def write(self, table: str, ops: list[Operation], delete: bool) -> None:
        self._step(f"{'delete' if delete else 'write'} {table}")
        entries = self.tables.setdefault(table, {})
        for op in ops:
            if delete:
                entries.pop(op.key, None)
            else:
                assert op.value is not None
                entries[op.key] = op.value

    def _attachment(self, kind: str, where: str, op: Any) -> None:
        self._step(f"{kind} {op.action.value} {where}")
        key = f"{kind} {where}"
        if op.action is AttachAction.DETACH:
            self.attached.pop(key, None)
        else:
            self.attached[key] = op

    def plumbing(self, ops: list[PlumbingOperation], forget: list[str | None]) -> None:
        for op in ops:
            self._attachment("plumbing", f"{op.item} {op.netns or '-'}", op)

    def link(self, op: LinkOperation) -> None:
        self._attachment("link", op.netns or "-", op)

    def filter(self, op: AttachOperation) -> None:
        self._attachment("filter", f"{op.hook} prio {op.priority}", op)

    def cgroup(self, op: CgroupOperation) -> None:
        self._attachment("cgroup", str(op.hook), op)
