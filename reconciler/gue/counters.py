"""The GUE programs' counters (TI_STATS), as status, get and metrics show them."""

from __future__ import annotations

from reconciler.gue import tables as gt
from reconciler.kernel.maps import PinnedTables


def gue_counters(tables: PinnedTables) -> dict[str, int]:
    """TI_STATS summed over CPUs, by counter name ({} before the first apply)."""
    per_slot = tables.counters(gt.STATS, gt.STATS_SLOTS)
    return {name: per_slot[i] for i, name in enumerate(gt.STAT_NAMES)} if per_slot else {}
