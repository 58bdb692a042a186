"""The transparent-proxy programs' counters (TP_STATS, TP6_STATS) and tracking-map pressure."""

from __future__ import annotations

from reconciler.kernel.maps import PinnedTables
from reconciler.tproxy import tables as tpt


def tproxy_counters(tables: PinnedTables) -> dict[int, dict[str, int]]:
    """TP_STATS and TP6_STATS by TransparentProxy id (0: questions nothing answered), by
    counter name; ids never counted are left out."""
    four = tables.counter_rows(tpt.TP_STATS, tpt.TP_STAT_NAMES, set())
    six = tables.counter_rows(tpt.TP6_STATS, tpt.TP6_STAT_NAMES, set())
    zero4, zero6 = dict.fromkeys(tpt.TP_STAT_NAMES, 0), dict.fromkeys(tpt.TP6_STAT_NAMES, 0)
    return {tp: {**four.get(tp, zero4), **six.get(tp, zero6)} for tp in four.keys() | six}


def tracked(tables: PinnedTables) -> tuple[int, int]:
    """Intercepted connections the programs track now, IPv4 (tp_conns) and native IPv6
    (tp_conns6): map pressure."""
    seen = tables.read((tpt.TP_CONNS, tpt.TP_CONNS6))
    return len(seen[tpt.TP_CONNS.name]), len(seen.get(tpt.TP_CONNS6.name, {}))
