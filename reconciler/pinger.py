"""GUE pings: which tunnels want them, when each is due, and the bytes on the wire.

Pure; `bpfsync datapath` (datapath.py) reads the tunnel table, asks this module what to send,
and sends it. A ping is a GUE control message (C=1, ctype TI_GUE_CTYPE_PING, Hlen 5) whose
private data is the tunnel id and the tunnel key; the far end records the source address and
port it sees as the tunnel's remote only when the key matches.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from reconciler import tables as t
from reconciler.secrets import Secret

_PING = struct.Struct(f"!BBHI{t.KEY_LEN}s")


@dataclass(frozen=True, slots=True)
class PingTarget:
    tunnel_id: int
    local: tuple[str, int]
    remote: tuple[str, int]
    interval_s: float
    key: Secret

    def describe(self) -> str:
        return (f"tunnel {self.tunnel_id} {self.local[0]}:{self.local[1]} -> "
                f"{self.remote[0]}:{self.remote[1]} every {self.interval_s:g}s")


def targets(tunnel_table: dict[bytes, bytes]) -> dict[int, PingTarget]:
    """Tunnels with the ping flag, from raw TI_TUNNEL entries."""
    out = {}
    for key, value in tunnel_table.items():
        if len(value) != t.TUNNEL.value_size:
            continue
        v = t.decode_value(t.TUNNEL.name, value)
        if not v["flags"] & t.TUNNEL_FLAG_PING or "key" not in v or v["remote"] == "learn":
            continue
        tid = t.decode_key(t.TUNNEL.name, key)["id"]
        laddr, lport = v["local"].rsplit(":", 1)
        raddr, rport = v["remote"].rsplit(":", 1)
        out[tid] = PingTarget(tid, (laddr, int(lport)), (raddr, int(rport)),
                              max(0.1, v["pingIntervalMs"] / 1000), v["key"])
    return out


def ping_payload(tunnel_id: int, key: Secret) -> bytes:
    vch = 0x20 | t.GUE_PING_HLEN  # version 0, C=1, Hlen 5 words
    return _PING.pack(vch, t.GUE_CTYPE_PING, 0, tunnel_id, key.value)


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
