"""GUE ping targets, schedule and wire bytes (pure)."""

from __future__ import annotations

import struct

from reconciler import tables as t
from reconciler.pinger import Schedule, ping_payload, targets
from reconciler.secrets import Secret

KEY = Secret(b"tunnel-key-0001".ljust(16, b"\0"))


def table(**over) -> dict[bytes, bytes]:
    out = {}
    for tid, remote, ping_ms, key in (
            (1, ("192.0.2.9", 6080), 500, KEY),    # pings
            (2, None, None, KEY),                   # learns: never pings
            (3, ("192.0.2.9", 7000), None, None)):  # fixed, no ping
        k = t.tunnel_key(tid)
        out[k] = t.tunnel_value(k, ("192.0.2.1", 6080), remote, key, ping_ms)
    return out


def test_only_ping_tunnels_are_targets() -> None:
    got = targets(table())
    assert list(got) == [1]
    assert got[1].local == ("192.0.2.1", 6080) and got[1].remote == ("192.0.2.9", 6080)
    assert got[1].interval_s == 0.5 and got[1].key == KEY


def test_payload_is_the_documented_gue_control_message() -> None:
    raw = ping_payload(100, KEY)
    vch, ctype, flags, tid, key = struct.unpack("!BBHI16s", raw)
    assert (vch >> 6, (vch >> 5) & 1, vch & 0x1F) == (0, 1, 5)  # version 0, C, Hlen 5
    assert (ctype, flags, tid, key) == (1, 0, 100, KEY.value) and len(raw) == 4 + 4 * 5


def test_schedule_pings_new_tunnels_at_once_then_by_interval() -> None:
    s = Schedule({})
    cur = targets(table())
    assert [x.tunnel_id for x in s.update(0.0, cur)] == [1]
    assert s.update(0.3, cur) == []
    assert [x.tunnel_id for x in s.update(0.5, cur)] == [1]
    assert s.update(0.6, {}) == [] and s.due == {}
