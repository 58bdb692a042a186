"""Backend selection and health state of one proxy. Pure: no sockets, no clock.

Backends are (host, port) as written in YAML, each expanded to the addresses its host
resolves to; an address is one target. Round-robin walks the targets in a stable order,
skipping unhealthy ones, so N connections over K healthy targets differ by at most one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reconciler.steering.model import HealthCheck, hostport


@dataclass(eq=False)
class Target:
    host: str
    port: int
    address: str
    healthy: bool = True
    successes: int = 0  # consecutive, while unhealthy
    failures: int = 0  # consecutive, while healthy
    active: int = 0  # connections proxied to it now
    removed_at: float | None = None  # no longer declared (draining)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.host, self.port, self.address)

    def __str__(self) -> str:
        where = hostport(self.host, self.port)
        return where if self.host == self.address else f"{where} ({self.address})"


@dataclass
class Pool:
    health: HealthCheck
    targets: list[Target] = field(default_factory=list)  # declared, in YAML order
    draining: list[Target] = field(default_factory=list)  # removed, connections may remain

    def set_targets(self, wanted: list[tuple[str, int, str]], now: float) -> list[Target]:
        """Declare the targets (keeping the health of those that stay); returns the ones
        removed."""
        old = {t.key: t for t in self.targets}
        kept = [old.pop(k, None) or Target(*k) for k in dict.fromkeys(wanted)]
        for t in kept:
            t.removed_at = None
            if not self.health.enabled:  # checks switched off: nothing can bring it back
                t.healthy = True
        removed = list(old.values())
        for t in removed:
            t.removed_at = now
        self.draining = [t for t in self.draining + removed if t.active and t.key not in
                         {k.key for k in kept}]
        self.targets = kept
        return removed

    def pick_at(self, turn: int) -> tuple[Target | None, int]:
        """The first healthy target from position turn (modulo the targets), and the turn
        after it; None when every target is down. The turn is the caller's to keep (the
        workers share one: datapath/shared.py)."""
        n = len(self.targets)
        for i in range(n):
            j = (turn + i) % n
            if self.targets[j].healthy:
                return self.targets[j], (j + 1) % n
        return None, turn

    def record(self, target: Target, ok: bool) -> str | None:
        """Apply one check result; returns "up" or "down" when the target changes state."""
        if not self.health.enabled:
            return None
        if ok:
            target.failures = 0
            if not target.healthy:
                target.successes += 1
                if target.successes >= self.health.rise:
                    target.healthy, target.successes = True, 0
                    return "up"
        else:
            target.successes = 0
            if target.healthy:
                target.failures += 1
                if target.failures >= self.health.fall:
                    target.healthy, target.failures = False, 0
                    return "down"
        return None
