"""GUE pings: which tunnels want them, when each is due, and the bytes on the wire.

Pure; `bpfsync datapath` (datapath.py) reads the tunnel table, asks this module what to send,
and sends it. A ping is a GUE control message (C=1, ctype TI_GUE_CTYPE_PING, Hlen 5) whose
private data is the tunnel id, the sender's CLOCK_TAI in nanoseconds, and a SipHash-2-4 MAC of
both (and of the GUE base header) under the tunnel key; the key itself never travels. The far
end records the source address and port it sees as the tunnel's remote only when the MAC
matches one of the tunnel's keys, the timestamp is within TI_PING_WINDOW_NS of its own clock,
and it is newer than the last ping it accepted (bpf/README.md has the layout and the limits).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from reconciler.core import registry
from reconciler.gue import tables as gt
from reconciler.gue.siphash import siphash24
from reconciler.load.secrets import Secret

_SIGNED = struct.Struct("!BBHIQ")  # GUE base header, tunnel id, timestamp: what the MAC covers
_MAC = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class PingTarget:
    tunnel_id: int
    local: tuple[str, int]
    remote: tuple[str, int]
    interval_s: float
    key: Secret

    def describe(self) -> str:
        local, remote = (gt.endpoint_text({"address": a, "port": p})
                         for a, p in (self.local, self.remote))
        return f"tunnel {self.tunnel_id} {local} -> {remote} every {self.interval_s:g}s"


def targets(tunnel_table: dict[bytes, bytes],
            read_next: Callable[[], dict[bytes, bytes]] | None = None) -> dict[int, PingTarget]:
    """Tunnels with the ping flag, from raw TI_TUNNEL and TI_TUNNEL6 entries (in one dict: a
    tunnel id is in one of them), each with the key to sign with:
    the TI_NEXT key when the tunnel says so (a rotation's second half). read_next gives the
    TI_NEXT entries; it is called at most once, and only when a tunnel needs them."""
    out = {}
    next_table: dict[bytes, bytes] | None = None
    for key, value in tunnel_table.items():
        if len(value) not in (gt.TUNNEL.value_size, gt.TUNNEL6.value_size):
            continue
        v = registry.decode_value(gt.TUNNEL.name, value)
        if not v["flags"] & gt.TUNNEL_FLAG_PING or "key" not in v or v["remote"] == "learn":
            continue
        if v["flags"] & gt.TUNNEL_FLAG_SEND_NEXT:
            if next_table is None:
                next_table = read_next() if read_next else {}
            raw = next_table.get(gt.next_key(gt.NEXT_TUNNEL, key))
            if raw is None or len(raw) != gt.NEXT_KEY_TABLE.value_size:
                continue  # not written yet: the plan writes TI_NEXT first, so only briefly
            v["key"] = registry.decode_value(gt.NEXT_KEY_TABLE.name, raw)["nextKey"]
        tid = registry.decode_key(gt.TUNNEL.name, key)["id"]
        laddr, lport = v["local"].rsplit(":", 1)
        raddr, rport = v["remote"].rsplit(":", 1)
        out[tid] = PingTarget(tid, (laddr.strip("[]"), int(lport)), (raddr.strip("[]"), int(rport)),
                              max(0.1, v["pingIntervalMs"] / 1000), v["key"])
    return out


def ping_clock_ns() -> int:
    """The ping timestamp clock: CLOCK_TAI, which the receiving program reads with
    bpf_ktime_get_tai_ns (no wall-clock helper exists)."""
    return time.clock_gettime_ns(time.CLOCK_TAI)


def ping_payload(tunnel_id: int, key: Secret, timestamp_ns: int | None = None) -> bytes:
    """The GUE payload of a ping, signed with key; timestamp_ns defaults to now."""
    vch = 0x20 | gt.GUE_PING_HLEN  # version 0, C=1, Hlen 5 words
    ts = ping_clock_ns() if timestamp_ns is None else timestamp_ns
    signed = _SIGNED.pack(vch, gt.GUE_CTYPE_PING, 0, tunnel_id, ts)
    return signed + _MAC.pack(siphash24(key.value, signed))


@dataclass
class Schedule:
    """When each tunnel's next ping is due (monotonic seconds)."""

    due: dict[int, float]

    def update(self, now: float, current: dict[int, PingTarget]) -> list[PingTarget]:
        """Targets to ping now; new tunnels are pinged at once, removed ones forgotten."""
        for tid in list(self.due):
            if tid not in current:
                del self.due[tid]
        send = []
        for tid, target in sorted(current.items()):
            if self.due.get(tid, 0.0) <= now:
                send.append(target)
                self.due[tid] = now + target.interval_s
            else:  # an interval shortened in YAML applies at once
                self.due[tid] = min(self.due[tid], now + target.interval_s)
        return send
