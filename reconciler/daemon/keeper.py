"""The daemon's hold on the data path: a supervisor in the namespace the desired state asks
for, moved when that changes, ticked by the daemon's loop."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from reconciler.core.errors import BpfsyncError
from reconciler.core.state import DesiredState
from reconciler.datapath.supervisor import Supervisor
from reconciler.gue.model import Interface
from reconciler.steering.model import Proxy, proxy_netns

if TYPE_CHECKING:
    from reconciler.daemon.record import DaemonConfig

log = logging.getLogger("bpfsync.daemon")
SLOTS_EVERY = 5.0  # the supervisor re-reads ps_proxy this often (and after each reconcile)


def datapath_netns(config: DaemonConfig, state: DesiredState) -> str | None:
    """Where the data path runs: as configured, else the Proxies' namespace, else the one
    namespace all Interfaces share, else bpfsync's own."""
    if config.datapath_netns:
        return config.datapath_netns
    if state.of(Proxy):
        return proxy_netns(state)
    spaces = {i.netns for i in state.of(Interface).values()}
    return spaces.pop() if len(spaces) == 1 else None


class DataPathKeeper:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.supervisor: Supervisor | None = None

    def tick(self, now: float, good: DesiredState) -> str | None:
        """Start, move or tick the supervisor; the error that stopped it, if any."""
        want = datapath_netns(self.config, good)
        sup = self.supervisor
        if sup is not None and sup.netns != want:
            log.info("data path moves from netns %s to %s", sup.netns or "(host)",
                     want or "(host)")
            sup.shutdown()
            sup = self.supervisor = None
        if sup is None:
            sup = self.supervisor = Supervisor(self.config.pin_root, want,
                                               self.config.worker_cmd, slots_every=SLOTS_EVERY,
                                               workers=self.config.datapath_workers)
        try:
            sup.tick(now)
        except (BpfsyncError, OSError) as exc:
            return str(exc)
        return None

    def proxies_changed(self) -> None:
        """After a reconcile: Proxies may have come or gone; read their slots at once."""
        if self.supervisor is not None:
            self.supervisor.slots_due = 0.0

    def shutdown(self) -> None:
        if self.supervisor is not None:
            self.supervisor.shutdown()
