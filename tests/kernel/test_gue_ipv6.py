"""GUE with IPv6, real traffic: IPv6 Services inside the IPv4 underlay (GUE proto 41) beside
IPv4 ones in the same directories, a tunnel over an IPv6 underlay carrying both, pings over
IPv6, and the GUE attacks repeated with IPv6 inside and outside. The dual-stack variant of
tests/kernel/topology.py:

    client 2001:db8:c::1 ── gateway ──(underlay 192.0.2.0/24, 2001:db8:1::/64)── node
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

from reconciler.datapath.pinger import ping_payload
from reconciler.gue import tables as gt
from reconciler.load.secrets import Secret
from tests.kernel.conftest import bpfsync, bpftool_dump
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.guekit import SERVICE_KEY, TUNNEL_KEY, Gue, MiB, frames, gue_ends, ipv6_udp
from tests.kernel.test_attacks import Attacker, gue_data
from tests.kernel.topology import (
    BACKEND,
    BACKEND6,
    CLIENT,
    CLIENT6,
    GW_TUNNEL,
    KEYS,
    NODE_TUNNEL,
    PROXY,
    PROXY6,
    UNDERLAY6,
    datapath,
    service_doc,
    tunnel6_doc,
    write_gateway,
    write_node,
)

WEB6 = service_doc("web6", sid=6, ipv6=True)
GW6, NODE6 = ((address, 6080) for address in UNDERLAY6)
TUNNEL6_GW, TUNNEL6_NODE = tunnel6_doc(node=False), tunnel6_doc(node=True)
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


def test_an_ipv6_underlay_carries_both_families_and_learns_from_ipv6_pings(gue6: Gue) -> None:
    """The tunnel's endpoints are IPv6: outer IPv6 + UDP (checksum 0, declared zeroChecksum),
    pings over IPv6 learned by the gateway, IPv4 and IPv6 Services through it, 8 MiB each."""
    gue, net = gue6, gue6.net
    gdir, ndir = _both_ends(gue, extra={"tunnel.yaml": TUNNEL6_GW})
    (ndir / "tunnel.yaml").write_text(TUNNEL6_NODE)
    gue.apply(ndir, gue.node_root)
    assert gue.learned() is None
    datapath(net, gue.node_root, net.node)
    learned = wait_until(gue.learned)
    assert (learned["address"], learned["port"]) == NODE6  # learned from an IPv6 ping

    cap = gue.capture(net.gw, "g1", ipv6=True)
    for backend, proxy, client in ((BACKEND6, PROXY6[0], CLIENT6),
                                   (BACKEND, PROXY[0], CLIENT)):
        server = net.server(reply_bytes=2 * MiB, backend=backend)
        r = net.client_transfer(8 * MiB, 2 * MiB, address=proxy, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout) == {**json.loads(r.stdout), "sent_ok": True,
                                        "reply_ok": True}
        assert json.loads(net.stop(server)[0].splitlines()[0])["peer"] == client
    pings = gue.stats(gue.gw_root)["ping"]
    wait_until(lambda: gue.stats(gue.gw_root)["ping"] > pings, 60)  # one more while capturing
    seen = frames(cap)
    data = [g for g in seen if not g["c"]]
    assert {(g["inner_version"], g["dst"]) for g in data} == {
        (6, NODE6[0]), (6, GW6[0]), (4, NODE6[0]), (4, GW6[0])}
    for g in data:  # the documented outer header over IPv6
        assert (g["outer"], g["udp_csum"], g["hop_limit"], g["dport"]) == (6, 0, 64, 6080)
        assert (g["version"], g["hlen"], g["flags"], g["tunnel"]) == (0, 6, 0, 100)
        assert g["proto"] == (41 if g["inner_version"] == 6 else 4)
        assert g["flow_label"] & 0x3FFF == g["sport"] - 49152  # the flow hash in both
    assert {g["inner_dst"] for g in data if g["dst"] == NODE6[0]} == {PROXY6[0], PROXY[0]}
    pings = [g for g in seen if g["c"]]
    assert pings and all((g["src"], g["sport"], g["proto"]) == (NODE6[0], 6080, 1)
                         for g in pings)
    assert all(g["udp_csum"] > 0 for g in pings)  # pings come from a socket: checksummed

    gw, node = gue.stats(gue.gw_root), gue.stats(gue.node_root)
    assert node["decap"] == node["dnat"] > 0 and node["reply_nat"] == node["encap"] > 0
    assert all(v == 0 for k, v in {**gw, **node}.items() if k.startswith("drop")), (gw, node)
    for d, root in ((gdir, gue.gw_root), (ndir, gue.node_root)):
        assert bpfsync("diff", str(d), pin_root=root, env=KEYS).returncode == 0
    tunnel6 = bpftool_dump(gue.node_root / "maps" / gt.TUNNEL6.name)
    assert [v[:32] for v in tunnel6.values()] == [b"".join(
        socket.inet_pton(socket.AF_INET6, a) for a in (NODE6[0], GW6[0]))]
    status = json.loads(bpfsync("get", "tunnels", "-o", "json", pin_root=gue.gw_root).stdout)
    assert status[0]["spec"]["zeroChecksum"] is True


def test_ipv6_underlay_attacks_gain_nothing(gue6: Gue) -> None:
    """Over an IPv6 underlay: data from another IPv6 source, a forged and a replayed ping,
    and a fragment to the decap endpoint, each dropped and counted, the tunnel not moved."""
    gue, net = gue6, gue6.net
    gdir = write_gateway(gue.tmp / "gw", net)
    (gdir / "tunnel.yaml").write_text(TUNNEL6_GW)
    (gdir / "web6.yaml").write_text(WEB6)
    gue.apply(gdir, gue.gw_root)
    attacker = Attacker(gue)
    net.run(net.node, "ip -6 addr add 2001:db8:1::3/64 dev n0 nodad")
    reply = gue_data(ipv6_udp(PROXY6[0], 80, CLIENT6, 9999, b"x"), sid=6, proto=41)
    attacker.raises("drop_no_remote", lambda: attacker.send(NODE6[0], reply, dst=GW6))
    good = ping_payload(100, Secret(TUNNEL_KEY))
    attacker.send(NODE6[0], good, dst=GW6)  # the genuine ping, sent by the test
    assert (wait_until(gue.learned)["address"], gue.stats(gue.gw_root)["ping"]) == (NODE6[0], 1)
    attacker.raises("ping_replay", lambda: attacker.send("2001:db8:1::3", good, dst=GW6))
    attacker.raises("ping_bad_key", lambda: attacker.send("2001:db8:1::3", ping_payload(
        100, Secret(b"forged-key".ljust(16, b"\0"))), dst=GW6))
    attacker.raises("drop_bad_source", lambda: attacker.send("2001:db8:1::3", reply, dst=GW6))
    learned = gue.learned()
    assert (learned["address"], learned["port"]) == NODE6  # never moved by the attacker
    # a datagram too big for the MTU leaves the sender in fragments: the first is dropped
    net.run(net.node, "ip link set n0 mtu 1500")
    before = gue.stats(gue.gw_root)
    attacker.send(NODE6[0], reply + bytes(3000), dst=GW6)
    after = wait_until(lambda: (s := gue.stats(gue.gw_root))["drop_fragment"] == 1 and s)
    assert after["decap"] == before["decap"] and after["pass"] > before["pass"]
