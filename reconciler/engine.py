"""The reconcile pipeline: desired state from a directory, observed state from the kernel, the
plan between them, and its execution. Stateless: the kernel is read fresh every time.

Execution order: table entries are written first (so a newly attached program finds its
tunnels and services), then programs are attached, replaced or detached, then entries that
are no longer wanted are deleted (after the programs that used them are gone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from reconciler import attach as at
from reconciler.core import registry
from reconciler.core.attachments import WAITING, AttachAction, AttachPlan, Condition
from reconciler.core.compile import compile_tables
from reconciler.core.desired import CompileMemo
from reconciler.core.errors import KernelStateError, UnsafePlan
from reconciler.core.plan import Operation, Plan, PrunePolicy
from reconciler.core.planning import compute_plan
from reconciler.core.state import DesiredState
from reconciler.core.tables import MapSpec, Observed
from reconciler.execute import execute
from reconciler.gue.counters import gue_counters
from reconciler.gue.model import Interface
from reconciler.intercept import host as intercept_host
from reconciler.intercept import plumbing as pl
from reconciler.intercept.counters import intercept_counters
from reconciler.intercept.model import Intercept
from reconciler.intercept.plumbing import PlumbingOperation
from reconciler.kernel import links as kernel_links
from reconciler.kernel import tc
from reconciler.kernel.maps import PinnedTables, locked, open_tables
from reconciler.load.directory import load_directory
from reconciler.load.schema import Schemas
from reconciler.programs import Programs
from reconciler.steering import host as steering_host
from reconciler.steering import links as lk
from reconciler.steering.counters import steering_counters
from reconciler.steering.links import LinkOperation
from reconciler.steering.model import Proxy, proxy_netns
from reconciler.tproxy import cgroups as cg
from reconciler.tproxy import host as tproxy_host
from reconciler.tproxy import tables as tpt
from reconciler.tproxy.cgroups import CgroupOperation
from reconciler.tproxy.model import TransparentProxy


@dataclass(frozen=True)
class Result:
    state: DesiredState
    plan: Plan  # what was executed (a selection may have held part of the whole back)
    written: int = 0
    attached: int = 0


Select = Callable[[Plan], Plan]
T = TypeVar("T")


def open_pinned(pin_root: Path, create: bool) -> PinnedTables:
    """Every pinned map of every data path in the registry."""
    return open_tables(pin_root, create, registry.PINNED, registry.CREATED_BY_BCC)


def read_pinned(pin_root: Path, read: Callable[[PinnedTables], T]) -> T:
    """read(tables) on every pinned map, opened for the call (never created)."""
    tables = open_pinned(pin_root, create=False)
    try:
        return read(tables)
    finally:
        tables.close()


def read_observed(pin_root: Path, specs: tuple[MapSpec, ...] = registry.ENTRY_TABLES) -> Observed:
    return read_pinned(pin_root, lambda tables: tables.read(specs))


def read_stats(pin_root: Path) -> dict[str, int]:
    return read_pinned(pin_root, gue_counters)


def read_steer_stats(pin_root: Path) -> dict[int, dict[str, int]]:
    return read_pinned(pin_root, steering_counters)


def read_intercept_stats(pin_root: Path) -> dict[int, dict[str, int]]:
    """Intercept counters by id."""
    return read_pinned(pin_root, intercept_counters)


def _tproxy_ids(state: DesiredState) -> tuple[int, ...]:
    return tuple(sorted(tp.id for tp in state.of(TransparentProxy).values()))


def _cgroup_plan(state: DesiredState, pin_root: Path, programs: Programs | None,
                 facts: tproxy_host.HostFacts, plan: AttachPlan) -> None:
    seen = tproxy_host.observe(pin_root)
    if not state.of(TransparentProxy) and not seen:
        return
    want = cg.wanted(state, pin_root)
    # the data path's cgroup is created by apply before anything is attached
    exists = {w.hook.cgroup: w.hook.cgroup in facts.cgroup_ids
              or w.hook.cgroup == cg.datapath_cgroup(pin_root) for w in want}
    tags = None
    # BCC creates tp_orig at the first compilation: diff must not, so it compiles only then
    if (programs is not None and state.of(TransparentProxy)
            and (pin_root / "maps" / tpt.TP_ORIG.name).exists()):
        tags = programs.tproxy_tags(_tproxy_ids(state), sorted({w.program for w in want}))
    if state.of(TransparentProxy) and facts.netns_cookie is None:
        owner = f"TransparentProxy/{min(state.of(TransparentProxy))}"
        plan.waiting.append(Condition(owner, f"network namespace {proxy_netns(state)} of the "
                                             f"Proxies not found; nothing is intercepted until "
                                             f"it exists", WAITING))
    plan.cgroups = cg.compute_cgroup_plan(want, seen, exists, tags, plan)


def _attach_plan(state: DesiredState, pin_root: Path, programs: Programs | None,
                 facts: tproxy_host.HostFacts | None = None) -> AttachPlan:
    want = at.wanted(state.of(Interface)) + at.wanted_intercepts(state.of(Intercept))
    seen = tc.observe(pin_root, [w.hook for w in want])
    plan = AttachPlan()
    if want or seen:
        tags = None
        if programs is not None:
            tags = {(w.config, w.hook.direction): programs.tags(w.config, w.hook.direction)
                    for w in want}
        plan = at.compute_attach_plan(want, seen, tags)
    seen_links = steering_host.observe(pin_root)
    if state.of(Proxy) or seen_links:
        steer_tags = programs.steer_tags() if programs is not None and state.of(Proxy) else None
        plan.links = lk.compute_link_plan(state, seen_links, steer_tags,
                                          kernel_links.netns_exists(proxy_netns(state)), plan)
    _cgroup_plan(state, pin_root, programs, facts or tproxy_host.HostFacts(), plan)
    want_plumbing = pl.wanted(state.of(Intercept))
    seen_plumbing = intercept_host.observe(pin_root, want_plumbing)
    plan.plumbing = pl.compute_plumbing_plan(want_plumbing, seen_plumbing, plan)
    plan.forget_hosts = pl.forget(seen_plumbing, want_plumbing)
    return plan


def host_warnings(state: DesiredState, pin_root: Path) -> list[str]:
    """MTU warnings for declared devices that exist on this host (for `validate`)."""
    want = at.wanted(state.of(Interface))
    if not want:
        return []
    seen = tc.observe(pin_root, [w.hook for w in want])
    return at.compute_attach_plan(want, seen, None).warnings


def _programs_if_possible(tables: PinnedTables, pin_root: Path) -> Programs | None:
    """Programs compile against the pinned tables; before the first apply there are none."""
    return Programs(pin_root) if tables.complete() else None


def diff(directory: Path, pin_root: Path, prune: PrunePolicy | None = None,
         schemas: Schemas | None = None) -> Result:
    state = load_directory(directory, schemas)
    facts = tproxy_host.facts(state, pin_root, create=False)
    tables = open_pinned(pin_root, create=False)
    programs = (_programs_if_possible(tables, pin_root)
                if state.of(Interface) or state.of(Proxy) or state.of(TransparentProxy) or state.of(Intercept)
                else None)
    try:
        plan = compute_plan(compile_tables(state, facts=facts, pin_root=pin_root),
                            tables.read(registry.ENTRY_TABLES), prune)
        plan.attachments = _attach_plan(state, pin_root, programs, facts)
    finally:
        tables.close()
        if programs:
            programs.close()
    return Result(state, plan)


def apply(directory: Path, pin_root: Path, prune: PrunePolicy | None = None,
          allow_empty: bool = False, schemas: Schemas | None = None) -> Result:
    return apply_state(load_directory(directory, schemas), pin_root, prune, allow_empty,
                       where=str(directory))


def apply_state(state: DesiredState, pin_root: Path, prune: PrunePolicy | None = None,
                allow_empty: bool = False, select: Select | None = None,
                where: str = "the desired state", memo: CompileMemo | None = None) -> Result:
    """Plan against the kernel as it is now and execute; select may hold operations back
    (the daemon's drift policies). The plan is computed under the pin root's lock."""
    facts = tproxy_host.facts(state, pin_root, create=True)
    desired = compile_tables(state, memo, facts, pin_root)
    tables: PinnedTables = open_pinned(pin_root, create=True)
    programs = Programs(pin_root)
    try:
        with locked(pin_root):
            full = compute_plan(desired, tables.read(registry.ENTRY_TABLES), prune)
            full.attachments = _attach_plan(state, pin_root, programs, facts)
            plan = select(full) if select else full
            if plan.empties_everything() and not allow_empty:
                raise UnsafePlan(
                    f"{where} declares nothing, and applying it would delete all "
                    f"{plan.observed_total} entries bpfsync manages; pass --allow-empty if "
                    f"that is really what you want")
            if plan.attachments.conflicts:
                raise KernelStateError("nothing applied:\n  " +
                                       "\n  ".join(plan.attachments.conflicts))
            written, attached = execute(plan, KernelExecutor(pin_root, tables, programs,
                                                             _tproxy_ids(state)))
    finally:
        tables.close()
        programs.close()
    return Result(state, plan, written, attached)


class KernelExecutor:
    """execute()'s steps on the real kernel (see Executor)."""

    def __init__(self, pin_root: Path, tables: PinnedTables, programs: Programs,
                 tproxy_ids: tuple[int, ...]) -> None:
        self.pin_root, self.tables, self.programs = pin_root, tables, programs
        self.tproxy_ids = tproxy_ids

    def write(self, table: str, ops: list[Operation], delete: bool) -> None:
        self.tables.write(table, ops, delete)

    def plumbing(self, ops: list[PlumbingOperation], forget: list[str | None]) -> None:
        if ops or forget:
            intercept_host.execute(self.pin_root, ops, forget)

    def link(self, op: LinkOperation) -> None:
        if op.action is AttachAction.DETACH:
            steering_host.remove(self.pin_root, op.netns)
        elif op.action is AttachAction.ATTACH:
            steering_host.create(self.pin_root, op.netns, self.programs.load_steer())
        else:
            steering_host.update(self.pin_root, op.netns, self.programs.load_steer())

    def filter(self, op: at.AttachOperation) -> None:
        if op.action is AttachAction.DETACH:
            tc.detach(self.pin_root, op.hook, op.priority)
            return
        assert op.config is not None
        fd = self.programs.load(op.config, op.hook.direction)
        tc.attach(self.pin_root, op.hook, op.priority, fd,
                  replace=op.action is AttachAction.REPLACE,
                  function=at.function_of(op.config, op.hook.direction))

    def cgroup(self, op: CgroupOperation) -> None:
        if op.action is AttachAction.DETACH:
            tproxy_host.remove(self.pin_root, op.hook)
            return
        assert op.program is not None
        fd = self.programs.load_tproxy(self.tproxy_ids, op.hook.hook, op.program)
        if op.action is AttachAction.ATTACH:
            tproxy_host.create(self.pin_root, op.hook, fd)
        else:
            tproxy_host.update(self.pin_root, op.hook, fd)
