"""The order every apply follows and what a failed one leaves behind, on the in-memory
kernel (reconciler/testing): upserts, then attachments, then deletes; a failure keeps what
ran before it, and the next plan, computed from what the kernel holds, finishes the job
without doing anything twice."""

from __future__ import annotations

import dataclasses

import pytest

from reconciler.core.attachments import AttachAction, AttachPlan, Hook, Planned, Step
from reconciler.core.compile import compile_tables
from reconciler.core.filters import TcFilter
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.execute import execute
from reconciler.gue.hooks import ProgramConfig
from reconciler.gue.model import Service
from reconciler.intercept.plumbing import Plumbing, PolicyRule
from reconciler.steering.links import SkLookupLink
from reconciler.testing import FakeKernel, InjectedFailure
from tests.unit.test_plan import state

FILTER = Step(AttachAction.ATTACH, TcFilter(Hook("eth0", None, "egress"), 7,
                                             ProgramConfig("gateway", True, False)),
              "Interface/up", "declared")


def _after() -> DesiredState:
    """From state(3): svc0 changed, svc2 gone, svc3 new."""
    s = state(3)
    services = s.of(Service)
    services["svc0"] = dataclasses.replace(services["svc0"], backend=dataclasses.replace(
        services["svc0"].backend, port=9090))
    del services["svc2"]
    services["svc3"] = dataclasses.replace(services["svc1"], name="svc3", service_id=3,
                                           proxy=dataclasses.replace(services["svc1"].proxy,
                                                                     port=1003))
    return s


def _kernel() -> FakeKernel:
    return FakeKernel({name: dict(e) for name, e in compile_tables(state(3)).entries.items()})


def _plan(kernel: FakeKernel, with_filter: bool = True):
    plan = compute_plan(compile_tables(_after()), kernel.tables)
    plan.attachments = AttachPlan([FILTER] if with_filter else [])
    return plan


def test_upserts_then_attachments_then_deletes_in_registry_order() -> None:
    kernel = _kernel()
    plan = _plan(kernel)
    written, attached = execute(plan, kernel)
    assert written == len(plan.operations) and attached == 1
    kinds = [step.split()[0] for step in kernel.steps]
    first_filter, first_delete = kinds.index("attach"), kinds.index("delete")
    assert set(kinds[:first_filter]) == {"write"} and set(kinds[first_delete:]) == {"delete"}
    assert first_filter < first_delete
    # within the upserts, the verify entry before the encap entry that relies on it
    writes = [s.split()[1] for s in kernel.steps if s.startswith("write")]
    assert writes.index("ti_verify") < writes.index("ti_encap")
    assert compute_plan(compile_tables(_after()), kernel.tables).operations == []


def _pending(plan, kernel: FakeKernel) -> set[tuple[str, bytes]]:
    """The plan's entry operations whose effect the kernel does not show yet."""
    held = kernel.tables
    return {(op.table, op.key) for op in plan.operations
            if (op.key in held.get(op.table, {}) if op.value is None
                else held.get(op.table, {}).get(op.key) != op.value)}


def test_attachments_run_by_phase_then_in_the_parts_order() -> None:
    """Routing the programs need is set up before any program and taken down after them,
    whatever order the parts planned in."""
    rule = PolicyRule(100, 1, 1, 100)
    down = Step(AttachAction.DETACH, Plumbing("blue", "rule", rule=rule), "Intercept/x", "gone")
    up = Step(AttachAction.ATTACH, Plumbing("red", "route", table=7), "Intercept/y", "new")
    link = Step(AttachAction.ATTACH, SkLookupLink("blue"), "Proxy/web", "new")
    plan = AttachPlan.of([Planned([down, up]), Planned([FILTER]), Planned([link])])
    assert plan.steps == [up, FILTER, link, down]
    kernel = FakeKernel()
    p = compute_plan(compile_tables(DesiredState()), {})
    p.attachments = plan
    assert execute(p, kernel) == (0, 4)
    assert kernel.steps == ["attach route table 7 (netns red)", "attach tc eth0 egress prio 7",
                            "attach sk_lookup link in netns blue",
                            f"detach {rule} (netns blue)"]


@pytest.mark.parametrize("fail_at", ["write", "attach", "delete"])
def test_a_failed_apply_keeps_what_ran_and_the_next_one_finishes(fail_at: str) -> None:
    kernel = _kernel()
    plan = _plan(kernel)
    rehearsal = FakeKernel({n: dict(e) for n, e in kernel.tables.items()})
    execute(plan, rehearsal)
    # fail at the second batch of writes, at the filter, or at the first batch of deletes
    index = [i for i, step in enumerate(rehearsal.steps) if step.startswith(fail_at)]
    kernel.fail_at = 1 + index[1 if fail_at == "write" else 0]
    with pytest.raises(InjectedFailure):
        execute(plan, kernel)
    assert kernel.steps == rehearsal.steps[:len(kernel.steps)]  # all before it, in order
    deletes = {(op.table, op.key) for op in plan.operations if op.value is None}
    upserts = {(op.table, op.key) for op in plan.operations} - deletes
    pending = _pending(plan, kernel)
    if fail_at != "delete":  # deletes run last: no entry a program may still use is gone
        assert deletes <= pending
    if fail_at in ("attach", "delete"):  # every upsert is done before any attachment
        assert not upserts & pending
    assert ("tc eth0 egress prio 7" in kernel.attached) == (fail_at == "delete")
    if fail_at == "write":
        assert upserts & pending and upserts - pending  # some written, some not
    # the next plan, computed from what the kernel holds, is exactly what is left to do
    rest = _plan(kernel, with_filter=fail_at != "delete")
    assert {(op.table, op.key) for op in rest.operations} == pending
    kernel.steps = []
    written, _ = execute(rest, kernel)
    assert written == len(pending)  # nothing done twice
    assert compute_plan(compile_tables(_after()), kernel.tables).operations == []
