from collections import Counter

from reconciler.datapath.balancer import Pool, Target
from reconciler.steering.model import HealthCheck

A, B, C = ("a", 1, "192.0.2.1"), ("b", 1, "192.0.2.2"), ("c", 1, "192.0.2.3")


class Turns(Pool):
    """A pool that keeps its own turn, as one worker's proxy keeps a lone Shared's."""

    turn = 0

    def pick(self) -> Target | None:
        target, self.turn = self.pick_at(self.turn)
        return target


def test_round_robin_is_even_and_skips_unhealthy() -> None:
    pool = Turns(HealthCheck())
    pool.set_targets([A, B, C], 0)
    picks = Counter(pool.pick().address for _ in range(300))  # type: ignore[union-attr]
    assert set(picks.values()) == {100}
    pool.targets[1].healthy = False
    picks = Counter(pool.pick().address for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"192.0.2.1": 150, "192.0.2.3": 150}


def test_all_down_gives_none() -> None:
    pool = Turns(HealthCheck())
    pool.set_targets([A], 0)
    pool.targets[0].healthy = False
    assert pool.pick() is None


def test_fall_and_rise_need_consecutive_results() -> None:
    pool = Turns(HealthCheck(rise=2, fall=3))
    pool.set_targets([A], 0)
    t = pool.targets[0]
    assert [pool.record(t, False) for _ in range(2)] == [None, None]
    assert pool.record(t, True) is None  # a success resets the failure count
    assert [pool.record(t, False) for _ in range(3)] == [None, None, "down"]
    assert pool.pick() is None
    assert [pool.record(t, True), pool.record(t, True)] == [None, "up"]
    assert pool.pick() is t


def test_changes_keep_health_and_drain_removed_targets_with_connections() -> None:
    pool = Turns(HealthCheck())
    pool.set_targets([A, B], 0)
    a, b = pool.targets
    a.healthy = False
    b.active = 2
    removed = pool.set_targets([A, C], 5.0)
    assert removed == [b] and b.removed_at == 5.0
    assert pool.targets[0] is a and not a.healthy  # state kept across the change
    assert pool.draining == [b]
    assert pool.pick().address == "192.0.2.3"  # type: ignore[union-attr]


def test_switching_checks_off_puts_down_targets_back() -> None:
    pool = Turns(HealthCheck())
    pool.set_targets([A], 0)
    pool.targets[0].healthy = False
    pool.health = HealthCheck(enabled=False)
    pool.set_targets([A], 1.0)
    assert pool.pick() is pool.targets[0]
