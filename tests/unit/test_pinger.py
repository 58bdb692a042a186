"""GUE ping targets, schedule and wire bytes (pure)."""

from __future__ import annotations

import struct

from reconciler.datapath.pinger import Schedule, ping_clock_ns, ping_payload, targets
from reconciler.gue import tables as gt
from reconciler.gue.siphash import siphash24
from reconciler.load.secrets import Secret

KEY = Secret(b"tunnel-key-0001".ljust(16, b"\0"))


def table(**over) -> dict[bytes, bytes]:
    out = {}
    for tid, remote, ping_ms, key in (
            (1, ("192.0.2.9", 6080), 500, KEY),    # pings
            (2, None, None, KEY),                   # learns: never pings
            (3, ("192.0.2.9", 7000), None, None)):  # fixed, no ping
        k = gt.tunnel_key(tid)
        out[k] = gt.tunnel_value(k, ("192.0.2.1", 6080), remote, key, ping_ms)
    return out


def test_only_ping_tunnels_are_targets() -> None:
    got = targets(table())
    assert list(got) == [1]
    assert got[1].local == ("192.0.2.1", 6080) and got[1].remote == ("192.0.2.9", 6080)
    assert got[1].interval_s == 0.5 and got[1].key == KEY


def test_payload_is_the_documented_gue_control_message() -> None:
    raw = ping_payload(100, KEY, timestamp_ns=0x0102030405060708)
    vch, ctype, flags, tid, ts, mac = struct.unpack("!BBHIQ8s", raw)
    assert (vch >> 6, (vch >> 5) & 1, vch & 0x1F) == (0, 1, 5)  # version 0, C, Hlen 5
    assert (ctype, flags, tid, ts) == (1, 0, 100, 0x0102030405060708) and len(raw) == 4 + 4 * 5
    # The MAC covers the first 16 bytes, under the tunnel key, which is nowhere in the bytes.
    assert mac == siphash24(KEY.value, raw[:16]).to_bytes(8, "little")
    assert KEY.value[:8] not in raw and KEY.value[8:] not in raw
    assert ping_payload(100, KEY, 1)[16:] != ping_payload(100, KEY, 2)[16:]
    assert ping_payload(100, Secret(b"other".ljust(16, b"\0")), 1)[16:] != ping_payload(
        100, KEY, 1)[16:]


def test_default_timestamp_is_clock_tai_now() -> None:
    before = ping_clock_ns()
    (ts,) = struct.unpack_from("!Q", ping_payload(100, KEY), 8)
    assert before <= ts <= ping_clock_ns()


def test_siphash_reference_vectors() -> None:
    """From the SipHash paper's reference implementation (vectors.h): key 00..0f, message
    00..(n-1)."""
    key = bytes(range(16))
    assert siphash24(key, b"") == 0x726FDB47DD0E0E31
    assert siphash24(key, bytes(range(8))) == 0x93F5F5799A932462
    assert siphash24(key, bytes(range(15))) == 0xA129CA6149BE45E5
    assert siphash24(key, bytes(range(16))) == 0x3F2ACC7F57C29BDB


def test_schedule_pings_new_tunnels_at_once_then_by_interval() -> None:
    s = Schedule({})
    cur = targets(table())
    assert [x.tunnel_id for x in s.update(0.0, cur)] == [1]
    assert s.update(0.3, cur) == []
    assert [x.tunnel_id for x in s.update(0.5, cur)] == [1]
    assert s.update(0.6, {}) == [] and s.due == {}
