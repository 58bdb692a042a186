"""The GUE data path's kinds (TrueIngress): tunnels, services and the interfaces the TC
programs run on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.core.state import DesiredState

from reconciler.core.model import Endpoint, Named, Origin
from reconciler.load.secrets import KeySource, Secret

DEFAULT_GUE_PORT = 6080


@dataclass(frozen=True, slots=True)
class Tunnel(Named):
    name: str
    id: int
    local: Endpoint
    remote: Endpoint | None  # None: learned from GUE pings, owned by the data path
    origin: Origin | None = None
    key: Secret | None = None  # authenticates pings; required to learn or to send pings
    key_source: KeySource | None = None
    ping_interval_ms: int | None = None  # this end sends pings to remote (node / PureGW)
    next_key: Secret | None = None  # a second accepted key while keys rotate; never sent

    kind = "Tunnel"


@dataclass(frozen=True, slots=True)
class Service(Named):
    name: str
    group_id: int
    service_id: int
    protocol: str
    proxy: Endpoint
    backend: Endpoint
    tunnel: str
    key: Secret
    key_source: KeySource
    origin: Origin | None = None
    next_key: Secret | None = None  # a second accepted key while keys rotate; never sent

    kind = "Service"


ROLES = ("gateway", "node")


@dataclass(frozen=True, slots=True)
class Interface(Named):
    """Where the TC programs are attached, and how they behave there (TABLE-CONFIG)."""

    name: str
    device: str
    netns: str | None  # named network namespace (/run/netns/NAME); None: bpfsync's own
    role: str  # "gateway": encapsulate by destination; "node": decapsulate to the backend
    replies_tunnel: bool  # node: replies encapsulated back (standard) or sent direct (DSO)
    ingress: bool
    egress: bool
    fib_lookup: bool
    priority: int
    origin: Origin | None = None

    kind = "Interface"

    @property
    def place(self) -> str:
        return f"{self.device}@{self.netns}" if self.netns else self.device




def has_node_role(state: DesiredState) -> bool:
    """A node decapsulates to backends and reverse-NATs their replies (TI_REPLY)."""
    return any(i.role == "node" for i in state.of(Interface).values())
