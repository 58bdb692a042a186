"""Conditions: what planning found about a resource, readable as "Kind/name: message" and
taken apart without parsing."""

from __future__ import annotations

import json
import pickle

from reconciler.core.attachments import CONFLICT, WAITING, AttachPlan, Condition
from reconciler.core.filters import compute_filter_plan
from reconciler.core.state import DesiredState
from reconciler.gue.hooks import wanted
from reconciler.gue.model import Interface


def test_a_condition_reads_as_before_and_keeps_its_parts() -> None:
    c = Condition("Interface/up", "device eth9 not found; egress: not attached", WAITING)
    assert c == "Interface/up: device eth9 not found; egress: not attached"
    assert (c.owner, c.kind) == ("Interface/up", WAITING) and c.message.endswith("attached")
    assert json.loads(json.dumps([c])) == [str(c)]
    again = pickle.loads(pickle.dumps(c))
    assert again == c and again.owner == c.owner and again.kind == WAITING


def test_planning_names_the_owner_of_what_it_waits_for() -> None:
    iface = Interface("up", "eth9", "edge", "gateway", True, True, True, False, 7)
    state = DesiredState()
    state.add(iface)
    plan = AttachPlan.of([compute_filter_plan(wanted(state), {}, None)])
    assert [(c.owner, c.kind) for c in plan.waiting] == [("Interface/up", WAITING)] * 2
    assert CONFLICT != WAITING and not plan.conflicts
