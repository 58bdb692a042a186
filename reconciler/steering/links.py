"""The sk_lookup link of port steering: whether it should exist, what exists, and the
step between them (core/attachments.py). Pure; steering/attach.py observes and executes
through steering/host.py.

One link per pin root, in the Proxies' namespace, pinned at <pin root>/links/sk_lookup:<netns>
so that steering outlives every process (as in Cloudflare's tubular). A changed program is
swapped into the same link with BPF_LINK_UPDATE: no moment without steering.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.core.attachments import (
    WAITING,
    AttachAction,
    Phase,
    Planned,
    Step,
    escape_pin,
    unescape_pin,
)
from reconciler.core.state import DesiredState
from reconciler.steering.model import Proxy, proxy_netns

LINK_PREFIX = "sk_lookup:"
ORPHAN_OWNER = "Proxy/(steering link)"


def pin_name(netns: str | None) -> str:
    return LINK_PREFIX + escape_pin(netns or "")


def netns_of(pin: str) -> str | None:
    return unescape_pin(pin.removeprefix(LINK_PREFIX)) or None


@dataclass(frozen=True, slots=True)
class SeenLink:
    netns: str | None
    link_id: int
    tag: str | None  # of the program the link runs
    alive: bool  # the link's namespace is the one named netns now (not deleted or recreated)


@dataclass(frozen=True, slots=True, order=True)
class SkLookupLink:
    """The sk_lookup link of a namespace (None: bpfsync's own), running ps_dispatch."""

    netns: str | None

    def describe(self) -> str:
        return f"{self.place}: ps_dispatch"

    @property
    def place(self) -> str:
        return f"sk_lookup link in netns {self.netns or '(own)'}"

    def to_json(self) -> dict[str, Any]:
        return {"link": {"type": "sk_lookup", "netns": self.netns}, "program": "ps_dispatch"}

    def phase(self, action: AttachAction) -> Phase:
        return Phase.PROGRAMS


def compute_link_plan(state: DesiredState, seen: list[SeenLink], tags: frozenset[str] | None,
                      netns_exists: bool) -> Planned:
    """tags: acceptable program tags, None when the program cannot be compiled yet."""
    out = Planned()
    steering = sorted(p.name for p in state.of(Proxy).values() if p.ports)
    want = bool(steering)  # Proxies that only receive intercepted connections steer nothing
    netns = proxy_netns(state)
    owner = f"Proxy/{steering[0]}" if want else ORPHAN_OWNER
    current = None
    for link in seen:
        if want and link.netns == netns and link.alive and current is None:
            current = link
        else:
            why = ("namespace deleted or recreated" if not link.alive else "no Proxy left"
                   if not want else f"Proxies moved to netns {netns or '(own)'}")
            out.steps.append(Step(AttachAction.DETACH, SkLookupLink(link.netns),
                                  ORPHAN_OWNER if not want else owner, why))
    if want and not netns_exists:
        out.condition(owner, f"network namespace {netns} not found; steering not attached",
                      WAITING)
        return out
    # Detaches come first: a dead link may hold the pin name the new one takes.
    if want and current is None:
        out.steps.append(Step(AttachAction.ATTACH, SkLookupLink(netns), owner,
                              "declared in YAML"))
    elif current is not None and tags is not None and current.tag not in tags:
        out.steps.append(Step(AttachAction.REPLACE, SkLookupLink(netns), owner,
                              "program changed (swapped in the same link)"))
    elif current is not None:
        out.in_place += 1
    return out
