"""The interception programs' counters (IC_STATS)."""

from __future__ import annotations

from reconciler.intercept import tables as ict
from reconciler.kernel.maps import PinnedTables


def intercept_counters(tables: PinnedTables) -> dict[int, dict[str, int]]:
    """IC_STATS by Intercept id, by counter name; only ids with a non-zero counter."""
    return tables.counter_rows(ict.IC_STATS, ict.IC_STAT_NAMES, set(), ict.IC_COUNTERS)
