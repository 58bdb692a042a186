"""Standby workers (datapath/standby.py): when a worker after the first joins the accepting
and when it stands by again, from every worker's load reports and the host's idle time;
the load reports in the shared table; BPFSYNC_WORKER_JOIN."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.datapath import shared
from reconciler.datapath.standby import (
    JOIN,
    LEAVE_AFTER,
    SATURATED,
    STALE,
    Standby,
    host_idle,
    join_load,
)

NOW = 1000.0
SPARE = (10.0, NOW - 0.1), (10.1, NOW)  # host idle seconds over 0.1 s: one CPU spare
FULL = (10.0, NOW - 0.1), (10.0, NOW)  # no idle time at all


def _check(s: Standby, loads: list[float], idle: tuple[tuple[float, float], ...] = SPARE,
           now: float = NOW, ages: list[float] | None = None) -> bool:
    """Two checks (the host's idle time needs two samples), the loads reported now."""
    reports = [(load, now - (ages[i] if ages else 0.0)) for i, load in enumerate(loads)]
    s.check(reports, now - 0.1, idle[0])
    return s.check(reports, now, idle[1])


def test_the_first_worker_always_accepts_and_the_others_stand_by() -> None:
    assert Standby(0).accepting and Standby(0).check([(0.0, 0.0)], NOW, None)
    assert not Standby(1).accepting
    assert not _check(Standby(1), [0.5, 0.0])
    assert not _check(Standby(2), [0.9, 0.2, 0.0])  # the mean of those before: 0.55


def test_join_zero_means_every_worker_accepts_at_all_times() -> None:
    s = Standby(3, join=0.0)
    assert s.accepting and _check(s, [0.0] * 4, FULL)


def test_a_worker_joins_when_those_before_are_busy_and_the_host_has_a_cpu_to_spare() -> None:
    assert _check(Standby(1), [JOIN, 0.0])
    assert _check(Standby(2), [0.9, 0.8, 0.0])
    # without idle CPUs it would only add wake-ups to full ones; unless those before are
    # saturated (the bottleneck: one more gets the proxy a larger share of the CPUs)
    assert not _check(Standby(1), [0.9, 0.0], FULL)
    assert _check(Standby(1), [SATURATED, 0.0], FULL)
    assert not _check(Standby(2), [1.0, 0.8, 0.0], FULL)


def test_a_stale_report_counts_as_a_worker_not_serving_and_the_next_joins_at_once() -> None:
    """Stopped, killed, or stuck in a long turn: its report ages; no spare CPU needed."""
    s = Standby(1)
    assert s.check([(0.0, NOW - STALE - 0.01), (0.0, NOW)], NOW, None)
    never = Standby(1)  # a worker that never reported (it is starting)
    assert never.check([(0.0, 0.0), (0.0, NOW)], NOW, FULL[1])


def test_it_stands_by_again_after_a_quiet_second_not_before() -> None:
    s = Standby(1)
    assert _check(s, [0.9, 0.0])
    # carried by the first worker alone, the load would be 0.7: stays
    for _ in range(3 * LEAVE_AFTER):
        assert s.check([(0.4, NOW), (0.3, NOW)], NOW, None)
    for i in range(LEAVE_AFTER):
        assert s.check([(0.3, NOW), (0.2, NOW)], NOW, None) is (i < LEAVE_AFTER - 1)
    assert not s.accepting
    # a quiet spell broken by one busy check starts counting again
    t = Standby(1)
    _check(t, [0.9, 0.0])
    for _ in range(LEAVE_AFTER - 1):
        t.check([(0.1, NOW), (0.1, NOW)], NOW, None)
    t.check([(0.5, NOW), (0.4, NOW)], NOW, None)
    for _ in range(LEAVE_AFTER - 1):
        assert t.check([(0.1, NOW), (0.1, NOW)], NOW, None)


def test_it_stays_while_a_worker_before_it_is_not_serving() -> None:
    s = Standby(1)
    assert s.check([(0.0, NOW - 5), (0.0, NOW)], NOW, None)
    for _ in range(3 * LEAVE_AFTER):
        assert s.check([(0.0, NOW - 5), (0.0, NOW)], NOW, None)


@pytest.mark.parametrize(("text", "value"), [(None, JOIN), ("", JOIN), ("0", 0.0),
                                             ("0.5", 0.5), ("1", 1.0)])
def test_join_load_reads_the_variable(text: str | None, value: float) -> None:
    assert join_load(text) == value


@pytest.mark.parametrize("text", ["-0.1", "1.5", "nan", "busy", "9" * 400])
def test_join_load_refuses_anything_else_without_echoing_it_whole(text: str) -> None:
    with pytest.raises(ValueError, match="BPFSYNC_WORKER_JOIN") as err:
        join_load(text)
    assert len(str(err.value)) < 160


def test_each_worker_reports_its_load_in_the_shared_table(tmp_path: Path) -> None:
    path = tmp_path / "shared"
    shared.create(path)
    views = [shared.Shared(path, i, 3) for i in range(3)]
    views[0].report_load(0.25, NOW)
    views[2].report_load(1.0, NOW + 1)
    assert views[1].loads() == [(0.25, NOW), (0.0, 0.0), (1.0, NOW + 1)]
    assert shared.Shared(None).loads() == [(0.0, 0.0)]
    for v in views:
        v.close()


def test_the_hosts_idle_time_is_read_from_proc_stat() -> None:
    first, then = host_idle(), host_idle()
    assert 0 <= first[0] <= then[0] and first[1] <= then[1]
