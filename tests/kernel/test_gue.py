"""GUE tunnels with real traffic: client -> gateway (encap) -> node (decap, DNAT) -> backend,
configured only by YAML, in three network namespaces (tests/kernel/topology.py)."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

from reconciler.datapath.pinger import ping_payload
from reconciler.datapath.supervisor import read_datapath_status
from reconciler.gue.siphash import siphash24
from reconciler.load.secrets import Secret
from tests.kernel.conftest import bpfsync
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.guekit import (
    SERVICE_KEY,
    TUNNEL_KEY,
    Gue,
    MiB,
    frames,
    udp_ends,
)
from tests.kernel.topology import (
    CLIENT,
    GW_TUNNEL,
    KEYS,
    NODE_TUNNEL,
    PROXY,
    Net,
    datapath,
    sh,
    write_gateway,
    write_node,
)


def test_standard_mode_learned_tunnel_carries_tcp_with_documented_gue_header(gue: Gue) -> None:
    net = gue.net
    gdir, ndir = write_gateway(gue.tmp / "gw", net), write_node(gue.tmp / "node", net)
    gue.apply(gdir, gue.gw_root)
    gue.apply(ndir, gue.node_root)
    assert gue.learned() is None
    datapath(net, gue.node_root, net.node)  # the node pings the gateway, which learns
    learned = wait_until(gue.learned)
    assert (learned["address"], learned["port"]) == NODE_TUNNEL

    server = net.server(reply_bytes=2 * MiB)
    cap = gue.capture(net.gw, "g1")
    pings = gue.stats(gue.gw_root)["ping"]
    r = net.client_transfer(8 * MiB, 2 * MiB)
    assert r.returncode == 0, r.stdout + r.stderr
    # a ping reached the gateway's TC program while capturing (the capture, which taps the
    # device before TC, holds it by then)
    wait_until(lambda: gue.stats(gue.gw_root)["ping"] > pings, 60)
    assert json.loads(r.stdout) == {**json.loads(r.stdout), "sent_ok": True, "reply_ok": True}
    out, _ = net.stop(server)
    assert json.loads(out.splitlines()[0])["peer"] == CLIENT  # the backend sees the client

    seen = frames(cap)
    to_node = [g for g in seen if not g["c"] and g["dst"] == NODE_TUNNEL[0]]
    to_gw = [g for g in seen if not g["c"] and g["dst"] == GW_TUNNEL[0]]
    pings = [g for g in seen if g["c"]]
    assert to_node and to_gw and pings
    for g in to_node + to_gw:
        assert (g["ihl"], g["df"], g["ip_csum_ok"], g["udp_csum"]) == (5, True, True, 0)
        assert (g["version"], g["hlen"], g["proto"], g["flags"]) == (0, 6, 4, 0)
        assert (g["tunnel"], g["group"], g["service"], g["key"]) == (100, 1, 1, SERVICE_KEY)
        assert g["inner_version"] == 4 and 49152 <= g["sport"] <= 65535 and g["dport"] == 6080
    assert {g["inner_dst"] for g in to_node} == {PROXY[0]}
    assert {g["inner_src"] for g in to_gw} == {PROXY[0]}  # reverse NAT before encapsulation
    assert len({g["sport"] for g in to_node}) == 1  # one flow, one hashed source port
    for p in pings:
        assert (p["version"], p["hlen"], p["proto"], p["flags"]) == (0, 5, 1, 0)
        assert (p["tunnel"], p["sport"]) == (100, 6080)
        # signed, not carrying the key: the MAC of the first 16 GUE bytes under the key
        head = struct.pack("!BBHIQ", 0x20 | 5, 1, 0, 100, p["timestamp"])
        assert p["mac"] == siphash24(TUNNEL_KEY, head).to_bytes(8, "little")
    assert len({p["timestamp"] for p in pings}) == len(pings)  # every ping is new

    gw, node = gue.stats(gue.gw_root), gue.stats(gue.node_root)
    assert gw["encap"] > 0 and gw["decap"] > 0 and gw["ping"] > 0
    # `get stats` shows what bpftool reads (read in turn: a late FIN may land between them)
    keys = ("encap", "decap", "dnat")
    wait_until(lambda: (a := gue.cli_stats(gue.node_root)) and {k: a[k] for k in keys} == {
        k: v for k, v in gue.stats(gue.node_root).items() if k in keys})
    assert node["decap"] == node["dnat"] > 0 and node["reply_nat"] == node["encap"] > 0
    assert all(v == 0 for k, v in gw.items() if k.startswith("drop"))

    # Learned state is the data path's: a second apply changes nothing and keeps it.
    assert "Nothing to do" in gue.apply(gdir, gue.gw_root)
    assert bpfsync("diff", str(gdir), pin_root=gue.gw_root, env=KEYS).returncode == 0
    after = gue.learned()
    assert (after["address"], after["port"]) == NODE_TUNNEL


def test_dso_mode_replies_go_direct(gue: Gue) -> None:
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    gue.apply(gdir, gue.gw_root)
    gue.apply(write_node(gue.tmp / "node", net, replies="direct"), gue.node_root)
    net.server(reply_bytes=2 * MiB)
    cap = gue.capture(net.gw, "g1")
    r = net.client_transfer(4 * MiB, 2 * MiB)
    assert r.returncode == 0, r.stdout + r.stderr
    seen = frames(cap)
    assert [g for g in seen if g["dst"] == NODE_TUNNEL[0]]
    assert not [g for g in seen if g["dst"] == GW_TUNNEL[0]]  # nothing encapsulated back
    node = gue.stats(gue.node_root)
    assert node["reply_nat"] > 0 and node["encap"] == 0
    assert gue.stats(gue.gw_root)["decap"] == 0


def test_no_remote_and_wrong_key_are_dropped_and_counted(gue: Gue) -> None:
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net)  # learn, but nobody pings
    gue.apply(gdir, gue.gw_root)
    gue.apply(write_node(gue.tmp / "node", net), gue.node_root)
    net.server()
    r = net.client_transfer(1000, 10, timeout=2)
    assert r.returncode != 0
    assert gue.stats(gue.gw_root)["drop_no_remote"] >= 1
    assert gue.stats(gue.node_root)["decap"] == 0

    # The gateway encapsulates with another key than the node verifies with.
    write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}",
                  key_env="BPFSYNC_OTHER_KEY")
    gue.apply(gdir, gue.gw_root)
    r = net.client_transfer(1000, 10, timeout=2)
    assert r.returncode != 0
    node = gue.stats(gue.node_root)
    assert node["drop_bad_key"] >= 1 and node["decap"] == 0


def _ping(tunnel_id: int, key: bytes) -> str:
    return ping_payload(tunnel_id, Secret(key.ljust(16, b"\0"))).hex()


def test_pings_are_authenticated_and_follow_nat_rebinding(gue: Gue) -> None:
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net)
    gue.apply(gdir, gue.gw_root)

    def send_ping(sport: int, key: bytes, tunnel_id: int = 100) -> None:
        net.traffic(net.node, "udp-payload", NODE_TUNNEL[0], sport, *GW_TUNNEL,
                    _ping(tunnel_id, key)).communicate(timeout=60)

    send_ping(6080, b"spoofed-key")
    send_ping(6080, TUNNEL_KEY, tunnel_id=999)
    wait_until(lambda: gue.stats(gue.gw_root)["drop_no_tunnel"] == 1)
    assert gue.stats(gue.gw_root)["ping_bad_key"] == 1
    assert gue.learned() is None

    send_ping(6080, TUNNEL_KEY)
    first = wait_until(gue.learned)
    assert (first["address"], first["port"]) == NODE_TUNNEL
    send_ping(7000, TUNNEL_KEY)  # the NAT in front of the node picked a new port
    wait_until(lambda: gue.learned()["port"] == 7000)

    cap = gue.capture(net.gw, "g1")
    net.client_transfer(100, 10, timeout=1)  # its SYN is what we look at on the wire
    to_node = [g for g in frames(cap) if not g["c"] and g["dst"] == NODE_TUNNEL[0]]
    assert to_node and {g["dport"] for g in to_node} == {7000}

    assert "Nothing to do" in gue.apply(gdir, gue.gw_root)  # apply never touches learned
    assert gue.learned()["port"] == 7000
    assert gue.stats(gue.gw_root)["ping"] == 2


FOREIGN = "bpf bytecode '1,6 0 0 0,'"  # a classic BPF filter of "another tool": no match


def _filters(net: Net, direction: str) -> str:
    return net.run(net.gw, f"tc filter show dev g1 {direction}").stdout


def test_removal_and_foreign_filters(gue: Gue) -> None:
    net = gue.net
    net.run(net.gw, "tc qdisc add dev g1 clsact")
    net.run(net.gw, f"tc filter add dev g1 ingress prio 7 handle 3 {FOREIGN}")
    net.run(net.gw, f"tc filter add dev g1 egress prio 7 handle 3 {FOREIGN}")
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    gue.apply(gdir, gue.gw_root)
    gue.apply(write_node(gue.tmp / "node", net), gue.node_root)
    net.server()
    assert net.client_transfer(MiB).returncode == 0
    for d in ("ingress", "egress"):
        assert "pref 7" in _filters(net, d) and "bpfsync:ti_" in _filters(net, d)

    (gdir / "service.yaml").unlink()
    out = gue.apply(gdir, gue.gw_root)
    assert "- ti_encap 203.0.113.10:80/tcp" in out
    assert net.client_transfer(1000, 10, timeout=2).returncode != 0

    (gdir / "interface.yaml").unlink()
    out = gue.apply(gdir, gue.gw_root)
    assert out.count("- tc g1@") == 2
    for d in ("ingress", "egress"):
        assert "pref 7" in _filters(net, d) and "bpfsync" not in _filters(net, d)
    assert list((gue.gw_root / "progs").iterdir()) == []
    assert "No tc attachments" in bpfsync("get", "interfaces", pin_root=gue.gw_root).stdout


def test_foreign_filter_in_bpfsyncs_place_is_refused_untouched(gue: Gue) -> None:
    net = gue.net
    net.run(net.gw, "tc qdisc add dev g1 clsact")
    net.run(net.gw, f"tc filter add dev g1 egress prio 49152 handle 0xb5f {FOREIGN}")
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    d = bpfsync("diff", str(gdir), pin_root=gue.gw_root, env=KEYS)
    assert d.returncode == 1 and "did not create" in d.stderr
    r = bpfsync("apply", str(gdir), pin_root=gue.gw_root, env=KEYS)
    assert r.returncode == 1 and "nothing applied" in r.stderr
    assert "bytecode" in _filters(net, "egress") and "bpfsync" not in _filters(net, "egress")
    assert "bpfsync" not in _filters(net, "ingress")
    assert bpfsync("get", "services", "-o", "json", pin_root=gue.gw_root).stdout.strip() == "[]"


def _link_stats(net: Net, ns: str, dev: str) -> dict[str, int]:
    out = net.run(ns, f"ip -s -j link show {dev}").stdout
    s = json.loads(out)[0]["stats64"]
    return {"rx": s["rx"]["packets"], "tx": s["tx"]["packets"], "rx_dropped": s["rx"]["dropped"],
            "tx_dropped": s["tx"]["dropped"]}


def test_program_upgrade_under_load_loses_nothing(gue: Gue) -> None:
    net = gue.net
    gdir, sink = udp_ends(gue)
    # The two links' counters cannot be read at one instant, and a packet of the namespaces'
    # own (neighbour discovery) may pass between two reads. Read the receiving side first
    # before and last after: such a packet can then only add to n0's count, never hide a
    # datagram lost between g1 and n0 (n0 receiving fewer than g1 sent).
    before_n0 = _link_stats(net, net.node, "n0")
    before_g1 = _link_stats(net, net.gw, "g1")
    ids_before = bpfsync("get", "interfaces", "-o", "json", pin_root=gue.gw_root).stdout
    stop = gue.tmp / "stop-sending"
    limit = 500_000  # 100 s at 5,000/s: the sender stops when told, long before that
    sender = net.traffic(net.client, "udp-send", PROXY[0], 53, limit, 5000, stop)

    def flowing() -> None:  # 500 more datagrams encapsulated by whatever program is there
        start = gue.stats(gue.gw_root)["encap"]
        wait_until(lambda: gue.stats(gue.gw_root)["encap"] >= start + 500, 60)

    flowing()
    iface = gdir / "interface.yaml"
    iface.write_text(iface.read_text() + "  fibLookup: true\n")
    out = gue.apply(gdir, gue.gw_root)
    # fibLookup changes only the egress program; the ingress one keeps its tag and stays.
    assert out.count("~ tc g1@") == 1 and "egress prio 49152: ti_egress" in out
    flowing()
    iface.write_text(iface.read_text().replace("  fibLookup: true\n", ""))
    assert gue.apply(gdir, gue.gw_root).count("~ tc g1@") == 1
    flowing()
    stop.touch()
    count = json.loads(sender.communicate(timeout=60)[0].splitlines()[-1])["sent"]
    assert 1500 <= count < limit  # the stream ran through both program swaps
    out, _ = sink.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1])["received"] == count
    after_g1 = _link_stats(net, net.gw, "g1")
    after_n0 = _link_stats(net, net.node, "n0")
    sent_g1, received_n0 = after_g1["tx"] - before_g1["tx"], after_n0["rx"] - before_n0["rx"]
    assert received_n0 >= sent_g1 >= count, (sent_g1, received_n0, count)
    assert after_g1["tx_dropped"] == before_g1["tx_dropped"]
    gw = gue.stats(gue.gw_root)
    assert gw["encap"] >= count + 1 and gw["fib_redirect"] == 0
    assert all(v == 0 for k, v in gw.items() if k.startswith("drop"))
    ids_after = bpfsync("get", "interfaces", "-o", "json", pin_root=gue.gw_root).stdout
    before_ids = {d["direction"]: d["programId"] for d in json.loads(ids_before)}
    after_ids = {d["direction"]: d["programId"] for d in json.loads(ids_after)}
    assert before_ids["ingress"] == after_ids["ingress"]
    assert before_ids["egress"] != after_ids["egress"]


def _gue_data(hlen: int = 6, proto: int = 4, flags: int = 0, vch: int | None = None,
              tunnel: int = 100, sid: int = 1, inner: bytes | None = None) -> bytes:
    head = struct.pack("!BBH", (hlen if vch is None else vch), proto, flags)
    private = struct.pack("!IHH16s", tunnel, 1, sid, SERVICE_KEY)
    if inner is None:  # a minimal IPv4/UDP packet to the proxy endpoint
        inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                            socket.inet_aton(CLIENT), socket.inet_aton(PROXY[0])) + bytes(8)
    return head + private + inner


def test_malformed_packets_are_dropped_or_passed_never_forwarded(gue: Gue) -> None:
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    gue.apply(gdir, gue.gw_root)
    ipv6 = _gue_data(inner=bytes([0x60]) + bytes(39))
    cases = [  # (payload, counter it must raise)
        (b"\x06", "drop_malformed"),
        (_gue_data(vch=0x40 | 6), "drop_bad_version"),
        (_gue_data(hlen=3), "drop_bad_header"),
        (_gue_data(flags=0x8000), "drop_bad_header"),
        (_gue_data(proto=47), "drop_bad_header"),  # neither 4 (IPv4) nor 41 (IPv6)
        (_gue_data(proto=41), "drop_malformed"),  # IPv6 announced, IPv4 inside
        (_gue_data(vch=0x20 | 5, proto=9), "drop_bad_header"),  # unknown control type
        (_gue_data(hlen=31)[:40], "drop_malformed"),  # Hlen longer than the packet
        (_gue_data()[:30], "drop_malformed"),  # truncated before the inner header
        (ipv6, "drop_malformed"),  # IPv4 announced, IPv6 inside
        (_gue_data(tunnel=4242), "drop_no_tunnel"),
        (_gue_data(sid=77), "drop_no_service"),
    ]
    for payload, counter in cases:
        before = gue.stats(gue.gw_root)
        net.traffic(net.node, "udp-payload", NODE_TUNNEL[0], 6080, *GW_TUNNEL,
                    payload.hex()).communicate(timeout=60)
        after = wait_until(lambda c=counter, b=before: (
            s := gue.stats(gue.gw_root))[c] > b[c] and s)
        assert after[counter] == before[counter] + 1, counter
        assert after["decap"] == 0, counter

    # A datagram larger than the MTU, sent without DF, arrives as fragments: the first is
    # dropped (its GUE header cannot be checked whole), later ones pass and are never
    # reassembled into anything.
    net.run(net.node, "ip link set n0 mtu 1500")
    before = gue.stats(gue.gw_root)
    net.traffic(net.node, "udp-payload", NODE_TUNNEL[0], 6080, *GW_TUNNEL,
                (_gue_data() + bytes(3000)).hex()).communicate(timeout=60)
    after = wait_until(lambda: (s := gue.stats(gue.gw_root))["drop_fragment"] == 1 and s)
    assert after["decap"] == 0 and after["pass"] > before["pass"]

    # Broken outer headers, injected as raw frames: not parseable as ours, so passed
    # untouched (the stack drops them) and never decapsulated.
    mac = net.run(net.gw, "cat /sys/class/net/g1/address").stdout.strip().replace(":", "")
    eth = bytes.fromhex(mac) + bytes(6)
    short_udp = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 24, 0, 0, 64, 17, 0,
                            socket.inet_aton(NODE_TUNNEL[0]), socket.inet_aton(GW_TUNNEL[0]))
    frames_hex = [(eth + b"\x08\x00" + short_udp + b"\x17\xc0").hex(),  # UDP header cut short
                  (eth + b"\x86\xdd" + bytes(40)).hex()]  # not IPv4 at all
    net.run(net.node, f"/usr/bin/python3 {Path(__file__).with_name('traffic.py')} inject n0 "
                      + " ".join(frames_hex))
    final = wait_until(lambda: (s := gue.stats(gue.gw_root))["pass"] >= after["pass"] + 2 and s)
    assert final["decap"] == 0
    assert sh(f"ip -n {net.client} -s -j link show c0").returncode == 0


def test_mtu_without_room_for_gue_is_warned(gue: Gue) -> None:
    net = gue.net
    net.run(net.gw, "ip link set g1 mtu 1500")
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    for cmd in ("validate", "diff"):
        r = bpfsync(cmd, str(gdir), pin_root=gue.gw_root, env=KEYS)
        assert "g1 MTU 1500 leaves no room for the 56-byte GUE overhead" in r.stderr, cmd
        assert "raise the MTU to 1556" in r.stderr
    net.run(net.gw, "ip link set g1 mtu 1556")
    assert "MTU" not in bpfsync("diff", str(gdir), pin_root=gue.gw_root, env=KEYS).stderr


def test_datapath_started_first_follows_the_tables_without_restart(gue: Gue) -> None:
    net = gue.net
    dp = datapath(net, gue.node_root, net.node)  # nothing applied on the node yet
    gue.apply(write_gateway(gue.tmp / "gw", net), gue.gw_root)
    # it runs and reports, pinging nothing (there is no table to read yet)
    report = wait_until(lambda: read_datapath_status(gue.node_root), 60)
    assert report["pinging"] == [] and report["pingsSent"] == 0
    assert gue.learned() is None and dp.poll() is None
    ndir = write_node(gue.tmp / "node", net)
    gue.apply(ndir, gue.node_root)
    learned = wait_until(gue.learned, 60)
    assert (learned["address"], learned["port"]) == NODE_TUNNEL
    # The tunnel stops asking for pings: the data path stops sending them.
    tunnel = ndir / "tunnel.yaml"
    tunnel.write_text(tunnel.read_text().replace("  ping: {intervalSeconds: 0.2}\n", ""))
    gue.apply(ndir, gue.node_root)
    stopped = wait_until(lambda: (r := read_datapath_status(gue.node_root)) and
                         r["pinging"] == [] and r, 60)
    # a ping sent just before may still be on its way: the gateway's count settles, and then
    # stays put while the data path goes on running (a second of its own reports, five
    # intervals of the former ping)
    pings = wait_until(lambda: (a := gue.stats(gue.gw_root)["ping"]) == gue.stats(
        gue.gw_root)["ping"] and (a,), 30)[0]
    later = wait_until(lambda: (r := read_datapath_status(gue.node_root)) and
                       r["time"] >= stopped["time"] + 1.0 and r, 60)
    assert later["pingsSent"] == stopped["pingsSent"] and later["pinging"] == []
    assert gue.stats(gue.gw_root)["ping"] == pings
    _, err = net.stop(dp)
    assert dp.returncode == 0
    assert "waiting for" in err and "pinging tunnel 100" in err and "stopped pinging" in err
