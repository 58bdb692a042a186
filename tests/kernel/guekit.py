"""The GUE test kit: two ends of a tunnel (tests/kernel/topology.py) with their own pin
roots, their counters read with bpftool, and captured GUE frames decoded. The `gue` fixture
(conftest.py) gives one per test."""

from __future__ import annotations

import json
import signal
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from reconciler.gue import tables as gt
from tests.kernel import owned
from tests.kernel.conftest import bpfsync, bpftool_percpu_counters
from tests.kernel.daemonkit import wait_for
from tests.kernel.topology import (
    BACKEND,
    GW_TUNNEL,
    KEYS,
    NODE_TUNNEL,
    PROXY,
    UNDERLAY6,
    Net,
    gue_topology,
    service_doc,
    write_gateway,
    write_node,
)

MiB = 1 << 20
SERVICE_KEY = KEYS["BPFSYNC_SERVICE_KEY"].encode().ljust(16, b"\0")
TUNNEL_KEY = KEYS["BPFSYNC_TUNNEL_KEY"].encode().ljust(16, b"\0")


class Gue:
    def __init__(self, net: Net, tmp: Path) -> None:
        self.net = net
        self.tmp = tmp
        self.gw_root = owned.pin_root("gw")
        self.node_root = owned.pin_root("node")

    def apply(self, directory: Path, root: Path) -> str:
        r = bpfsync("apply", str(directory), pin_root=root, env=KEYS)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def stats(self, root: Path) -> dict[str, int]:
        """The programs' counters read with bpftool (per-CPU slots summed), not with
        bpfsync's reader; slot i is the enum entry test_layout checks against STAT_NAMES."""
        return bpftool_percpu_counters(root / "maps" / gt.STATS.name, gt.STAT_NAMES)

    def cli_stats(self, root: Path) -> dict[str, int]:
        r = bpfsync("get", "stats", "-o", "json", pin_root=root)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def learned(self) -> Any:
        r = bpfsync("get", "tunnels", "-o", "json", pin_root=self.gw_root)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)[0]["status"].get("learned")

    def capture(self, ns: str, dev: str, ipv6: bool = False) -> Any:
        """Frames on dev (IPv4/UDP ones, or every IPv6 one where ipv6) from now until frames()
        stops the capture (120 s at most)."""
        p = self.net.traffic(ns, "capture", dev, 120, 0 if ipv6 else 17)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        return p


@contextmanager
def gue_ends(tmp_path: Path, ipv6: bool = False) -> Iterator[Gue]:
    """Both ends in fresh namespaces (dual stack where ipv6); their pin roots, data paths and
    namespaces removed."""
    with gue_topology(ipv6) as net:
        g = Gue(net, tmp_path)
        try:
            yield g
        finally:
            net.kill_datapaths()  # first: a running worker rewrites its status every 0.25 s
            for root in (g.gw_root, g.node_root):
                owned.remove_pin_root(root)  # with a killed data path's status


def ipv4_udp(src: str, sport: int, dst: str, dport: int, payload: bytes) -> bytes:
    """An IPv4/UDP packet with DF, a correct header checksum and UDP checksum 0."""
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28 + len(payload), 0, 0x4000, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    head = head[:10] + struct.pack("!H", ip_checksum(head)) + head[12:]
    return head + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def ipv6_udp(src: str, sport: int, dst: str, dport: int, payload: bytes,
             next_header: int = 17) -> bytes:
    """An IPv6/UDP packet with a correct UDP checksum; with next_header 0 a hop-by-hop
    options header (8 bytes, padding only) sits between the IPv6 and UDP headers."""
    a, b = (socket.inet_pton(socket.AF_INET6, x) for x in (src, dst))
    udp_len = 8 + len(payload)
    pseudo = a + b + struct.pack("!IxxxB", udp_len, 17)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    csum = ~_csum(pseudo + udp + (b"\0" if len(udp) % 2 else b"")) & 0xFFFF or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    ext = b"" if next_header == 17 else bytes([17, 0, 1, 4, 0, 0, 0, 0])  # PadN
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + udp_len, next_header, 64, a, b) + ext + udp


def ip_checksum(header: bytes) -> int:
    """The IPv4 header checksum of header (its checksum field zero)."""
    return ~_csum(header) & 0xFFFF


def _csum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _outer(f: bytes) -> tuple[dict[str, Any], bytes] | None:
    """The outer IP and UDP header fields of a GUE frame between the two ends (IPv4 or IPv6
    underlay), and what follows the UDP header; None for any other frame."""
    if f[12:14] == b"\x86\xdd":
        ip, udp, rest = f[14:54], f[54:62], f[62:]
        if ip[6] != 17 or len(rest) < 24:
            return None
        src, dst = (socket.inet_ntop(socket.AF_INET6, ip[a:a + 16]) for a in (8, 24))
        if {src, dst} != set(UNDERLAY6):
            return None
        fields: dict[str, Any] = {"outer": 6, "hop_limit": ip[7],
                                  "traffic_class": (struct.unpack("!I", ip[:4])[0] >> 20) & 0xFF,
                                  "flow_label": struct.unpack("!I", ip[:4])[0] & 0xFFFFF}
    else:
        ip, udp, rest = f[14:34], f[34:42], f[42:]
        if f[23] != 17 or len(rest) < 24:
            return None
        src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
        if {src, dst} != {GW_TUNNEL[0], NODE_TUNNEL[0]}:
            return None
        fields = {"outer": 4, "ihl": ip[0] & 0xF,
                  "df": bool(struct.unpack("!H", ip[6:8])[0] & 0x4000),
                  "ip_csum_ok": _csum(ip) == 0xFFFF}
    sport, dport, _, ucsum = struct.unpack("!HHHH", udp)
    return {**fields, "src": src, "dst": dst, "sport": sport, "dport": dport,
            "udp_csum": ucsum}, rest


def parse_gue(hex_frame: str) -> dict[str, Any] | None:
    """Decode a captured Ethernet frame carrying GUE, checking the outer header as we go."""
    seen = _outer(bytes.fromhex(hex_frame))
    if seen is None:
        return None
    out, gue = seen
    out.update({"version": gue[0] >> 6, "c": (gue[0] >> 5) & 1, "hlen": gue[0] & 0x1F,
                "proto": gue[1], "flags": struct.unpack("!H", gue[2:4])[0]})
    if out["c"]:
        out["tunnel"], out["timestamp"], out["mac"] = struct.unpack("!IQ8s", gue[4:24])
    elif len(gue) >= 48:
        out["tunnel"], out["group"], out["service"], out["key"] = struct.unpack(
            "!IHH16s", gue[4:28])
        inner = gue[28:68]
        out["inner_version"] = inner[0] >> 4
        if out["inner_version"] == 6:
            out["inner_src"], out["inner_dst"] = (socket.inet_ntop(socket.AF_INET6, inner[a:a + 16])
                                                  for a in (8, 24))
            out["inner_next"] = inner[6]
        else:
            out["inner_src"], out["inner_dst"] = socket.inet_ntoa(inner[12:16]), socket.inet_ntoa(
                inner[16:20])
    else:
        return None
    return out


def frames(p: Any) -> list[dict[str, Any]]:
    """Stop a capture (what it saw until now, queued frames included) and decode it."""
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    return [g for g in map(parse_gue, out.split()) if g]


UDP_SERVICE = service_doc("dns", sid=2, protocol="udp", proxy_port=53, backend_port=5353)


def udp_ends(gue: Gue) -> tuple[Path, Any]:
    """Both ends applied with a fixed remote and the UDP Service, a sink listening on the
    node: the gateway's directory and the sink."""
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    ndir = write_node(gue.tmp / "node", net)
    for d in (gdir, ndir):
        (d / "dns.yaml").write_text(UDP_SERVICE)
    gue.apply(gdir, gue.gw_root)
    gue.apply(ndir, gue.node_root)
    sink = net.traffic(net.node, "udp-sink", BACKEND[0], 5353, 2)
    assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
    return gdir, sink


def udp_stream(gue: Gue, rate: int) -> tuple[Path, Any, Any, Path]:
    """udp_ends, and a sender on the client at rate datagrams/s (100 s of them at most),
    once 500 went through the gateway: the gateway's directory, the sink, the sender, and
    the file whose existence stops it."""
    gdir, sink = udp_ends(gue)
    stop = gue.tmp / "stop-sending"
    start = gue.stats(gue.gw_root)["encap"]
    sender = gue.net.traffic(gue.net.client, "udp-send", PROXY[0], 53, 100 * rate, rate, stop)
    wait_for(lambda: gue.stats(gue.gw_root)["encap"] >= start + 500, 60)
    return gdir, sink, sender, stop
