"""IPv6 Services through a GUE tunnel with real traffic: IPv6 inside the IPv4 underlay (GUE
proto 41), beside an IPv4 Service in the same directories, and the GUE attacks repeated with
IPv6 inside. The dual-stack variant of tests/kernel/topology.py:

    client 2001:db8:c::1 ── gateway ──(IPv4 underlay 192.0.2.0/24)── node
    proxy [2001:db8:10::10]:80 routed towards the node; backend [2001:db8:10::100]:8080
"""

from __future__ import annotations

import json
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.gue import tables as gt
from tests.kernel.conftest import bpfsync, bpftool_dump
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.guekit import SERVICE_KEY, Gue, MiB, frames, gue_ends, ipv6_udp
from tests.kernel.test_attacks import Attacker, gue_data
from tests.kernel.topology import (
    BACKEND6,
    CLIENT,
    CLIENT6,
    GW_TUNNEL,
    KEYS,
    NODE_TUNNEL,
    PROXY6,
    datapath,
    service_doc,
    write_gateway,
    write_node,
)

WEB6 = service_doc("web6", sid=6, ipv6=True)
DNS6 = service_doc("dns6", sid=7, protocol="udp", proxy_port=53, backend_port=5353, ipv6=True)


@pytest.fixture
def gue6(tmp_path: Path) -> Iterator[Gue]:
    with gue_ends(tmp_path, ipv6=True) as g:
        yield g


def _both_ends(gue: Gue, remote: str = "learn", extra: dict[str, str] | None = None,
               ) -> tuple[Path, Path]:
    """Gateway and node directories with the IPv4 Service web and the IPv6 Service web6 (and
    extra files on both), applied."""
    gdir = write_gateway(gue.tmp / "gw", gue.net, remote=remote)
    ndir = write_node(gue.tmp / "node", gue.net)
    for d in (gdir, ndir):
        for name, text in {"web6.yaml": WEB6, **(extra or {})}.items():
            (d / name).write_text(text)
    gue.apply(gdir, gue.gw_root)
    gue.apply(ndir, gue.node_root)
    return gdir, ndir


def test_ipv6_inside_an_ipv4_tunnel_carries_8_mib_beside_ipv4(gue6: Gue) -> None:
    gue, net = gue6, gue6.net
    gdir, ndir = _both_ends(gue)
    datapath(net, gue.node_root, net.node)  # the node pings the gateway, which learns
    wait_until(gue.learned)
    server6 = net.server(reply_bytes=2 * MiB, backend=BACKEND6)
    cap = gue.capture(net.gw, "g1")
    r = net.client_transfer(8 * MiB, 2 * MiB, address=PROXY6[0], timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout) == {**json.loads(r.stdout), "sent_ok": True, "reply_ok": True}
    out, _ = net.stop(server6)
    assert json.loads(out.splitlines()[0])["peer"] == CLIENT6  # the backend sees the client
    seen = frames(cap)

    to_node = [g for g in seen if not g["c"] and g["dst"] == NODE_TUNNEL[0]]
    to_gw = [g for g in seen if not g["c"] and g["dst"] == GW_TUNNEL[0]]
    assert to_node and to_gw
    for g in to_node + to_gw:  # the documented header, proto 41, IPv6 inside
        assert (g["ihl"], g["df"], g["ip_csum_ok"], g["udp_csum"]) == (5, True, True, 0)
        assert (g["version"], g["hlen"], g["proto"], g["flags"]) == (0, 6, 41, 0)
        assert (g["tunnel"], g["group"], g["service"], g["key"]) == (100, 1, 6, SERVICE_KEY)
        assert (g["inner_version"], g["inner_next"]) == (6, 6) and g["dport"] == 6080
    assert {(g["inner_src"], g["inner_dst"]) for g in to_node} == {(CLIENT6, PROXY6[0])}
    assert {(g["inner_src"], g["inner_dst"]) for g in to_gw} == {(PROXY6[0], CLIENT6)}
    assert len({g["sport"] for g in to_node}) == 1  # one flow, one hashed source port

    # IPv4 through the same tunnel, in the same run
    server4 = net.server(reply_bytes=MiB)
    r = net.client_transfer(MiB, MiB)
    assert r.returncode == 0 and json.loads(r.stdout)["reply_ok"], r.stdout + r.stderr
    assert json.loads(net.stop(server4)[0].splitlines()[0])["peer"] == CLIENT

    gw, node = gue.stats(gue.gw_root), gue.stats(gue.node_root)
    assert node["decap"] == node["dnat"] > 0 and node["reply_nat"] == node["encap"] > 0
    assert all(v == 0 for k, v in {**gw, **node}.items() if k.startswith("drop")), (gw, node)
    # the IPv6 tables read back with bpftool: the documented 20-byte endpoint key
    encap6 = bpftool_dump(gue.gw_root / "maps" / gt.ENCAP6.name)
    assert list(encap6) == [
        socket.inet_pton(socket.AF_INET6, PROXY6[0]) + bytes([0, 80, 6, 0])]
    assert len(bpftool_dump(gue.node_root / "maps" / gt.REPLY6.name)) == 1
    # both families in one directory: in sync, nothing to do
    for d, root in ((gdir, gue.gw_root), (ndir, gue.node_root)):
        assert bpfsync("diff", str(d), pin_root=root, env=KEYS).returncode == 0
        assert "Nothing to do" in gue.apply(d, root)
    got = bpfsync("get", "services", "-o", "json", pin_root=gue.node_root)
    specs = {d["metadata"]["name"]: d["spec"] for d in json.loads(got.stdout)}
    assert specs["web6"]["backend"] == {"address": BACKEND6[0], "port": BACKEND6[1]}


def _to_client6(src: str, sport: int, mark: bytes, next_header: int = 17) -> bytes:
    return gue_data(ipv6_udp(src, sport, CLIENT6, 9999, mark, next_header), sid=7, proto=41)


def _client_sees6(p: Any, until: bytes) -> list[tuple[str, int, bytes]]:
    """(source, source port, payload) of the IPv6/UDP datagrams to the client that a capture
    (proto 0: every IPv6 frame) saw, up to the one whose payload is `until`."""
    assert p.stdout is not None
    seen = []
    for line in iter(p.stdout.readline, ""):
        f = bytes.fromhex(line.strip())
        if f[20] == 17 and f[38:54] == socket.inet_pton(socket.AF_INET6, CLIENT6):
            seen.append((socket.inet_ntop(socket.AF_INET6, f[22:38]),
                         struct.unpack("!H", f[54:56])[0], f[62:]))
            if f[62:] == until:
                break
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    return seen


def test_gateway_is_no_relay_with_ipv6_inside(gue6: Gue) -> None:
    """The relay attacks of test_attacks with IPv6 inside: another outer source, a foreign
    inner source or port, an extension header; only the service's own reply gets through,
    and arrives at the client as an IPv6 packet."""
    gue, net = gue6, gue6.net
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    (gdir / "dns6.yaml").write_text(DNS6)
    gue.apply(gdir, gue.gw_root)
    attacker = Attacker(gue)
    cap = net.traffic(net.client, "capture", "c0", 120, 0)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"

    attacker.raises("drop_bad_source", lambda: attacker.send(
        "192.0.2.3", _to_client6(PROXY6[0], 53, b"from-another-address")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(
        NODE_TUNNEL[0], _to_client6("2001:db8:10::66", 53, b"foreign-inner-address")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(
        NODE_TUNNEL[0], _to_client6(PROXY6[0], 54, b"foreign-inner-port")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(  # hop-by-hop before UDP
        NODE_TUNNEL[0], _to_client6(PROXY6[0], 53, b"behind-a-header", next_header=0)))
    attacker.raises("drop_malformed", lambda: attacker.send(  # proto 41, IPv4 inside
        NODE_TUNNEL[0], gue_data(bytes([0x45]) + bytes(47), sid=7, proto=41)))
    before = gue.stats(gue.gw_root)
    attacker.send(NODE_TUNNEL[0], _to_client6(PROXY6[0], 53, b"genuine-reply"))
    after = wait_until(lambda: (s := gue.stats(gue.gw_root))["decap"] == before["decap"] + 1
                       and s)
    assert all(after[k] == before[k] for k in after if k.startswith("drop"))
    assert _client_sees6(cap, until=b"genuine-reply") == [(PROXY6[0], 53, b"genuine-reply")]


def test_node_refuses_what_it_cannot_rewrite_with_ipv6_inside(gue6: Gue) -> None:
    """On a node: a wrong key, UDP for a TCP service, and a header between IPv6 and TCP are
    dropped and counted once each, never rewritten to the backend."""
    gue, net = gue6, gue6.net
    ndir = write_node(gue.tmp / "node", net)
    (ndir / "web6.yaml").write_text(WEB6)
    gue.apply(ndir, gue.node_root)
    attacker = Attacker(gue)

    def send(inner: bytes, key: bytes = SERVICE_KEY) -> None:
        attacker.send(GW_TUNNEL[0], gue_data(inner, sid=6, key=key, proto=41),
                      dst=NODE_TUNNEL, ns=net.gw)

    to_web6 = ipv6_udp(CLIENT6, 4000, PROXY6[0], PROXY6[1], b"udp-to-a-tcp-service")
    attacker.raises("drop_bad_key", lambda: send(to_web6, key=b"not-the-key-0003".ljust(16, b"\0")),
                    root=gue.node_root)
    attacker.raises("drop_bad_header", lambda: send(to_web6), root=gue.node_root)
    attacker.raises("drop_bad_header", lambda: send(ipv6_udp(
        CLIENT6, 4000, PROXY6[0], PROXY6[1], b"behind-a-header", next_header=0)),
        root=gue.node_root)
    s = gue.stats(gue.node_root)
    assert s["dnat"] == 0 and s["decap"] == 0
