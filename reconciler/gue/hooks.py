"""Where GUE's TC programs run: an Interface's ingress and egress, each with the Interface's
compile-time configuration (the seed's TABLE-CONFIG). Pure; core/filters.py plans them."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.core.attachments import Hook
from reconciler.core.filters import Wanted
from reconciler.core.state import DesiredState
from reconciler.gue.model import Interface, Tunnel
from reconciler.gue.tables import GUE_OVERHEAD, GUE_OVERHEAD6

FUNCTIONS = {"ingress": "ti_ingress", "egress": "ti_egress"}


@dataclass(frozen=True, slots=True, order=True)
class ProgramConfig:
    """Compile-time behaviour of the programs (the seed's TABLE-CONFIG, per interface)."""

    role: str
    replies_tunnel: bool
    fib_lookup: bool

    def describe(self) -> str:
        parts = [f"role {self.role}"]
        if self.role == "node":
            parts.append("replies " + ("tunnel" if self.replies_tunnel else "direct"))
        if self.fib_lookup:
            parts.append("fibLookup")
        return ", ".join(parts)

    def function(self, direction: str) -> str:
        return FUNCTIONS[direction]


def wanted(state: DesiredState) -> list[Wanted]:
    """Each Interface's enabled directions; an egress that adds GUE headers (a gateway's, or
    a node's that replies through the tunnel) carries the overhead the MTU check uses: an
    IPv6 underlay's (76 bytes) as soon as one Tunnel has IPv6 endpoints, else IPv4's (56)."""
    ipv6 = any(":" in t.local.address for t in state.of(Tunnel).values())
    overhead = GUE_OVERHEAD6 if ipv6 else GUE_OVERHEAD
    out = []
    for iface in sorted(state.of(Interface).values(), key=lambda i: i.name):
        config = ProgramConfig(iface.role, iface.replies_tunnel, iface.fib_lookup)
        for direction, on in (("ingress", iface.ingress), ("egress", iface.egress)):
            if on:
                encap = direction == "egress" and (iface.role == "gateway" or iface.replies_tunnel)
                out.append(Wanted(Hook(iface.device, iface.netns, direction), iface.priority,
                                  config, iface.ref, overhead if encap else 0,
                                  "GUE" if encap else ""))
    return out
