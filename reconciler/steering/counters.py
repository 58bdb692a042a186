"""The steering program's counters (PS_STATS)."""

from __future__ import annotations

from reconciler.kernel.maps import PinnedTables
from reconciler.steering import tables as st


def steering_counters(tables: PinnedTables) -> dict[int, dict[str, int]]:
    """PS_STATS by slot (0: every lookup) and counter name; slots never hit are left out."""
    return tables.counter_rows(st.PS_STATS, st.PS_STAT_NAMES, {0})
