"""The desired state: every valid resource of a directory, by kind and name."""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.core.errors import Problem
from reconciler.gue.model import Interface, Service, Tunnel
from reconciler.intercept.model import Intercept
from reconciler.steering.model import Proxy
from reconciler.tproxy.model import TransparentProxy


@dataclass
class DesiredState:
    tunnels: dict[str, Tunnel] = field(default_factory=dict)
    services: dict[str, Service] = field(default_factory=dict)
    interfaces: dict[str, Interface] = field(default_factory=dict)
    proxies: dict[str, Proxy] = field(default_factory=dict)
    transparent: dict[str, TransparentProxy] = field(default_factory=dict)
    intercepts: dict[str, Intercept] = field(default_factory=dict)
    warnings: list[Problem] = field(default_factory=list)
    files: int = 0
    drift: dict[str, str] = field(default_factory=dict)  # "Kind/name" -> annotated policy

    @property
    def resource_count(self) -> int:
        return (len(self.tunnels) + len(self.services) + len(self.interfaces)
                + len(self.proxies) + len(self.transparent) + len(self.intercepts))

    @property
    def has_node_role(self) -> bool:
        """A node decapsulates to backends and reverse-NATs their replies (TI_REPLY)."""
        return any(i.role == "node" for i in self.interfaces.values())

    @property
    def proxy_netns(self) -> str | None:
        """The namespace of the steering link (checks ensure all Proxies share one)."""
        return next(iter(self.proxies.values())).netns if self.proxies else None
