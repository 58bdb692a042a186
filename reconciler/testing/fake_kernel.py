"""An in-memory kernel for execute(): tables as dicts, attachments as sets, every step logged,
and a failure injected at any step — so the engine's order and what a failed apply leaves
behind get fast unit tests (the real-kernel tests stay as they are)."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.core.attachments import AttachAction, Step
from reconciler.core.errors import KernelStateError
from reconciler.core.plan import Operation
from reconciler.core.tables import Observed


class InjectedFailure(KernelStateError):
    """The failure FakeKernel was told to raise."""


@dataclass
class FakeKernel:
    """tables: what the maps hold (read it back as the observed state of the next plan);
    attached: the attachment steps in place, by what they attach to (Target.place); steps:
    each step run, as "write ti_tunnel", "delete ti_encap", "attach tc eth0 egress prio 7",
    ...; fail_at: the 1-based number of the step that raises InjectedFailure (counted over
    the kernel's life)."""

    tables: Observed = field(default_factory=dict)
    attached: dict[str, Step] = field(default_factory=dict)
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

    def attach(self, steps: list[Step]) -> None:
        for step in steps:
            place = step.target.place
            self._step(f"{step.action.value} {place}")
            if step.action is AttachAction.DETACH:
                self.attached.pop(place, None)
            else:
                self.attached[place] = step
