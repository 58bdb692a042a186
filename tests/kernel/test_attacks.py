"""Attacks on the data paths, performed with real packets in namespaces of our own: each test
plays an attacker on the same network and asserts that the attacker gains nothing (issue 19).

GUE (bpf/trueingress.c): replayed, stale and forged pings; the gateway as an open relay;
key rotation under load. Intercept (bpf/intercept.c): tiny and overlapping fragments.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
from pathlib import Path
from typing import Any

from reconciler.datapath.pinger import ping_clock_ns, ping_payload
from reconciler.gue.siphash import siphash24
from reconciler.load.secrets import Secret
from tests.kernel import owned
from tests.kernel.conftest import bpfsync
from tests.kernel.daemonkit import RunningDaemon
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.guekit import (
    SERVICE_KEY,
    TUNNEL_KEY,
    UDP_SERVICE,
    Gue,
    frames,
    ip_checksum,
    ipv4_udp,
)
from tests.kernel.interception import (
    ic_counter,
    sh,
    start_server,
    tcp_syn,
    teardown,
    veth_pair,
)
from tests.kernel.topology import (
    BACKEND,
    CLIENT,
    GW_TUNNEL,
    KEYS,
    NODE_TUNNEL,
    PROXY,
    TRAFFIC,
    datapath,
    write_gateway,
    write_node,
)

ATTACKER = "192.0.2.3"  # a second address on the node's side of the underlay
SPOOFED = "192.0.2.66"  # an address nobody has: only raw frames carry it
OUTSIDE_WINDOW_NS = 61 * 10**9  # just outside the ±60 s ping window


def gue_data(inner: bytes, sid: int = 1, key: bytes = SERVICE_KEY, tunnel: int = 100,
             proto: int = 4) -> bytes:
    """A GUE data packet of group 1 (proto 4: IPv4 inside, 41: IPv6)."""
    return struct.pack("!BBHIHH16s", 6, proto, 0, tunnel, 1, sid, key) + inner


class Attacker:
    """Sends from the node's namespace: from an address of its own, or as raw frames with
    any source address."""

    def __init__(self, g: Gue) -> None:
        self.g = g
        g.net.run(g.net.node, f"ip addr add {ATTACKER}/24 dev n0")

    def send(self, src: str, payload: bytes, dst: tuple[str, int] = GW_TUNNEL,
             ns: str | None = None) -> None:
        net = self.g.net
        net.traffic(ns or net.node, "udp-payload", src, 6080, *dst,
                    payload.hex()).communicate(timeout=60)

    def spoof(self, src: str, payload: bytes) -> None:
        """A frame from n0 to the gateway's g1 with any source address."""
        net = self.g.net
        mac = net.run(net.gw, "cat /sys/class/net/g1/address").stdout.strip().replace(":", "")
        frame = (bytes.fromhex(mac) + bytes(6) + b"\x08\x00"
                 + ipv4_udp(src, 6080, GW_TUNNEL[0], GW_TUNNEL[1], payload))
        net.run(net.node, f"/usr/bin/python3 {TRAFFIC} inject n0 {frame.hex()}")

    def raises(self, counter: str, act: Any, root: Path | None = None) -> dict[str, int]:
        """Perform act; the counter rises by exactly one and nothing is decapsulated."""
        root = root or self.g.gw_root
        before = self.g.stats(root)
        act()
        after = wait_until(lambda: (s := self.g.stats(root))[counter] > before[counter] and s)
        assert after[counter] == before[counter] + 1, counter
        assert after["decap"] == before["decap"] and after["ping"] == before["ping"], counter
        return after


def _captured_pings(p: Any) -> list[bytes]:
    """GUE payloads of the pings a capture saw (frames are printed whole up to 200 bytes)."""
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    frames_ = [bytes.fromhex(h) for h in out.split()]
    return [f[42:66] for f in frames_ if len(f) >= 66 and f[23] == 17 and f[42] & 0x20]


def test_captured_ping_replayed_stale_or_forged_never_moves_the_tunnel(gue: Gue) -> None:
    net = gue.net
    gue.apply(write_gateway(gue.tmp / "gw", net), gue.gw_root)
    gue.apply(write_node(gue.tmp / "node", net), gue.node_root)
    cap = gue.capture(net.gw, "g1")
    dp = datapath(net, gue.node_root, net.node)  # the genuine node pings every 0.2 s
    wait_until(lambda: gue.stats(gue.gw_root)["ping"] >= 3)
    net.stop(dp)
    captured = _captured_pings(cap)
    assert captured, "the capture saw no ping"
    learned = gue.learned()
    assert (learned["address"], learned["port"]) == NODE_TUNNEL

    attacker = Attacker(gue)
    ping = captured[0]  # authentic, and older than the newest ping the gateway accepted
    # 1. the same bytes from another address, and with a spoofed source: a replay
    attacker.raises("ping_replay", lambda: attacker.send(ATTACKER, ping))
    attacker.raises("ping_replay", lambda: attacker.spoof(SPOOFED, ping))
    # 2. signed with the right key but outside the clock window, either way
    now = ping_clock_ns()
    for ts in (now - OUTSIDE_WINDOW_NS, now + OUTSIDE_WINDOW_NS):
        attacker.raises("ping_stale", lambda t=ts: attacker.send(
            ATTACKER, ping_payload(100, Secret(TUNNEL_KEY), t)))
    # 3. forged: a fresh timestamp under a guessed key; the former format (key in clear);
    #    a captured ping with its timestamp moved forward (the MAC no longer matches)
    forged = [ping_payload(100, Secret(b"guessed".ljust(16, b"\0"))),
              struct.pack("!BBHI16s", 0x25, 1, 0, 100, TUNNEL_KEY),
              ping[:8] + struct.pack("!Q", now) + ping[16:]]
    for payload in forged:
        attacker.raises("ping_bad_key", lambda p=payload: attacker.send(ATTACKER, p))

    after = gue.learned()
    assert (after["address"], after["port"]) == NODE_TUNNEL  # the attacker moved nothing
    assert all(siphash24(TUNNEL_KEY, p[:16]).to_bytes(8, "little") == p[16:] for p in captured)
    assert not [p for p in captured if TUNNEL_KEY[:8] in p or TUNNEL_KEY[8:] in p]


def test_a_restarted_sender_is_accepted_at_once(gue: Gue) -> None:
    net = gue.net
    gue.apply(write_gateway(gue.tmp / "gw", net), gue.gw_root)
    gue.apply(write_node(gue.tmp / "node", net), gue.node_root)
    for _ in range(2):  # the second data path starts with nothing of the first's state
        dp = datapath(net, gue.node_root, net.node)
        before = gue.stats(gue.gw_root)["ping"]
        wait_until(lambda b=before: gue.stats(gue.gw_root)["ping"] >= b + 2)
        net.stop(dp)
    s = gue.stats(gue.gw_root)
    assert s["ping_replay"] == s["ping_stale"] == s["ping_bad_key"] == 0


def _client_sees(p: Any, until: bytes) -> list[tuple[str, int, bytes]]:
    """(inner source, source port, payload) of the UDP datagrams to the client that a capture
    saw, up to and including the one whose payload is `until` (or the capture's own end)."""
    assert p.stdout is not None
    seen = []
    for line in iter(p.stdout.readline, ""):
        f = bytes.fromhex(line.strip())
        if f[30:34] == socket.inet_aton(CLIENT):
            seen.append((socket.inet_ntoa(f[26:30]), struct.unpack("!H", f[34:36])[0], f[42:]))
            if f[42:] == until:
                break
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    return seen


def test_gateway_is_no_relay_for_a_stolen_service_key(gue: Gue) -> None:
    """Whoever saw one data packet knows the service key (it travels in clear). With it, from
    another address, or as the node with a foreign inner source, the gateway forwards
    nothing; only the service's own replies from the tunnel's remote get through."""
    net = gue.net
    gdir = write_gateway(gue.tmp / "gw", net, remote="{address: 192.0.2.2, port: 6080}")
    (gdir / "dns.yaml").write_text(UDP_SERVICE)
    gue.apply(gdir, gue.gw_root)
    attacker = Attacker(gue)
    cap = net.traffic(net.client, "capture", "c0", 120)
    assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"

    def to_client(src: str, sport: int, mark: bytes) -> bytes:
        return gue_data(ipv4_udp(src, sport, CLIENT, 9999, mark), sid=2)

    attacker.raises("drop_bad_source", lambda: attacker.send(
        ATTACKER, to_client(PROXY[0], 53, b"from-another-address")))
    attacker.raises("drop_bad_source", lambda: attacker.spoof(
        SPOOFED, to_client(PROXY[0], 53, b"spoofed-outer")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(
        NODE_TUNNEL[0], to_client("203.0.113.66", 53, b"foreign-inner-address")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(
        NODE_TUNNEL[0], to_client(PROXY[0], 54, b"foreign-inner-port")))
    attacker.raises("drop_bad_inner", lambda: attacker.send(  # the tcp service's endpoint
        NODE_TUNNEL[0], gue_data(ipv4_udp(PROXY[0], 80, CLIENT, 9999, b"other-service"),
                                 sid=2)))
    # The control: the service's own reply, from the tunnel's remote, is forwarded.
    before = gue.stats(gue.gw_root)
    attacker.send(NODE_TUNNEL[0], to_client(PROXY[0], 53, b"genuine-reply"))
    after = wait_until(lambda: (s := gue.stats(gue.gw_root))["decap"] == before["decap"] + 1
                       and s)
    assert all(after[k] == before[k] for k in after if k.startswith("drop"))
    assert _client_sees(cap, until=b"genuine-reply") == [(PROXY[0], 53, b"genuine-reply")]


def test_node_counts_a_dropped_packet_once(gue: Gue) -> None:
    """A packet for a TCP service carrying UDP is dropped by the node for its protocol and
    counted as that drop only, never as decapsulated."""
    net = gue.net
    gue.apply(write_node(gue.tmp / "node", net), gue.node_root)
    attacker = Attacker(gue)
    inner = ipv4_udp(CLIENT, 4000, PROXY[0], PROXY[1], b"udp-to-a-tcp-service")
    attacker.raises("drop_bad_header", lambda: attacker.send(
        GW_TUNNEL[0], gue_data(inner), dst=NODE_TUNNEL, ns=net.gw), root=gue.node_root)
    assert gue.stats(gue.node_root)["dnat"] == 0


ROTATE_KEYS = {**KEYS, "BPFSYNC_NEW_TUNNEL_KEY": "tunnel-key-0002",
               "BPFSYNC_NEW_SERVICE_KEY": "service-key-02"}
OLD_NEW = (("BPFSYNC_TUNNEL_KEY", "BPFSYNC_NEW_TUNNEL_KEY"),
           ("BPFSYNC_SERVICE_KEY", "BPFSYNC_NEW_SERVICE_KEY"))


def _rotation_step(step: int, text: str) -> str:
    """Step 1 adds the new key as nextKey, 2 swaps key and nextKey, 3 drops nextKey."""
    for old, new in OLD_NEW:
        one = f"  keyFrom: {{env: {old}}}\n"
        two = f"  keyFrom: {{env: {new}}}\n  nextKeyFrom: {{env: {old}}}\n"
        if step == 1:
            text = text.replace(one, f"{one}  nextKeyFrom: {{env: {new}}}\n")
        elif step == 2:
            text = text.replace(f"{one}  nextKeyFrom: {{env: {new}}}\n", two)
        else:
            text = text.replace(two, f"  keyFrom: {{env: {new}}}\n")
    return text


def test_key_rotation_on_both_ends_under_load_loses_nothing(gue: Gue) -> None:
    net = gue.net
    gdir, ndir = write_gateway(gue.tmp / "gw", net), write_node(gue.tmp / "node", net)
    for d in (gdir, ndir):
        (d / "dns.yaml").write_text(UDP_SERVICE)
    daemons = [RunningDaemon(d, root, gue.tmp / f"{name}.log", env=ROTATE_KEYS)
               for d, root, name in ((gdir, gue.gw_root, "gw"), (ndir, gue.node_root, "node"))]
    try:
        for d in daemons:
            d.start()
        wait_until(gue.learned)  # the node's data path pings; the gateway learned it
        sink = net.traffic(net.node, "udp-sink", BACKEND[0], 5353, 2)
        assert sink.stdout is not None and sink.stdout.readline().strip() == "listening"
        stop = gue.tmp / "stop-sending"
        limit = 500_000  # 100 s at 5,000/s: the sender stops when told, long before that
        sender = net.traffic(net.client, "udp-send", PROXY[0], 53, limit, 5000, stop)

        def flowing(where: str) -> None:  # datagrams and pings keep getting through
            gw = gue.stats(gue.gw_root)
            try:
                wait_until(lambda: (s := gue.stats(gue.gw_root))["encap"] >= gw["encap"] + 500
                           and s["ping"] >= gw["ping"] + 2, 60)
            except AssertionError:
                raise AssertionError(f"{where}: gateway {gue.stats(gue.gw_root)}, node "
                                     f"{gue.stats(gue.node_root)}\n" + "\n".join(
                                         d.log()[-3000:] for d in daemons)) from None

        flowing("before")
        for step in (1, 2, 3):
            for d in daemons:  # one end after the other, as an operator would
                events = d.events()
                for name in ("tunnel.yaml", "service.yaml", "dns.yaml"):
                    f = d.directory / name
                    f.write_text(_rotation_step(step, f.read_text()))
                d.settled(events)
                assert d.status()["lastReconcile"]["result"] in ("applied", "in-sync")
                flowing(f"step {step} at {d.directory.name}")
        cap = gue.capture(net.gw, "g1")
        flowing("after")
        stop.touch()
        count = json.loads(sender.communicate(timeout=60)[0].splitlines()[-1])["sent"]
        assert 1500 <= count < limit  # the stream ran through all six edits
        assert json.loads(sink.communicate(timeout=60)[0].splitlines()[-1])["received"] == count
        for root in (gue.gw_root, gue.node_root):
            s = gue.stats(root)
            assert s["drop_bad_key"] == s["ping_bad_key"] == s["ping_replay"] == 0, s
        seen = frames(cap)
    finally:
        for d in daemons:
            d.cleanup()
    new_service = ROTATE_KEYS["BPFSYNC_NEW_SERVICE_KEY"].encode().ljust(16, b"\0")
    new_tunnel = ROTATE_KEYS["BPFSYNC_NEW_TUNNEL_KEY"].encode().ljust(16, b"\0")
    data = [g for g in seen if not g["c"]]
    pings = [g for g in seen if g["c"]]
    assert data and {g["key"] for g in data} == {new_service}
    assert pings and all(g["mac"] == siphash24(new_tunnel, struct.pack(
        "!BBHIQ", 0x25, 1, 0, 100, g["timestamp"])).to_bytes(8, "little") for g in pings)
    # The old keys are gone on both ends: a packet or ping made with them is refused.
    attacker = Attacker(gue)
    attacker.raises("drop_bad_key", lambda: attacker.send(
        NODE_TUNNEL[0], gue_data(ipv4_udp(PROXY[0], 53, CLIENT, 9, b"old"), sid=2)))
    attacker.raises("ping_bad_key", lambda: attacker.send(
        NODE_TUNNEL[0], ping_payload(100, Secret(TUNNEL_KEY))))


# --- Intercept (bpf/intercept.c): fragments that would smuggle a SYN past a drop rule --------


def _ipv4(ident: int, flags_offset: int, payload: bytes, src: str = "192.0.2.1",
          dst: str = "203.0.113.2", proto: int = 6) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, flags_offset, 64,
                       proto, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return head[:10] + struct.pack("!H", ip_checksum(head)) + head[12:] + payload


def test_tiny_and_overlapping_fragments_never_carry_a_syn_past_a_drop_rule(
        tmp_path: Path, pin_root: Path) -> None:
    """RFC 1858's attacks on a `drop` rule for TCP port 82, with crafted frames sent out of
    the intercepted device (AF_PACKET goes through TC egress): a first fragment holding only
    8 bytes of TCP header (ports and flags come later), its second half at offset 8 bytes
    (a TCP fragment there could rewrite the flags of a checked first fragment), and a first
    fragment cut inside the header are dropped and counted; a later fragment passes alone
    and never reassembles into anything: the server never answers."""
    tag, base = owned.tag()[:6], owned.name("frag")
    ns, server_ns, dev, peer = f"{base}-c", f"{base}-s", f"bfr{tag}c", f"bfr{tag}s"
    procs: list[subprocess.Popen[str]] = []
    try:
        veth_pair(ns, server_ns, dev, peer, "192.0.2.1/24", "192.0.2.2/24")
        sh(f"ip -n {server_ns} addr add 203.0.113.2/32 dev lo")
        sh(f"ip -n {ns} route add 203.0.113.0/24 via 192.0.2.2")
        procs.append(start_server(server_ns, "0.0.0.0", 81, 82))
        d = tmp_path / "desired"
        d.mkdir()
        (d / "intercept.yaml").write_text(
            "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: wan}\nspec:\n"
            f"  id: 1\n  device: {dev}\n  netns: {ns}\n  rules:\n"
            "    - {priority: 10, action: drop, protocol: tcp, ports: [82]}\n")
        r = bpfsync("apply", str(d), pin_root=pin_root)
        assert r.returncode == 0, r.stdout + r.stderr
        cap = subprocess.Popen(["ip", "netns", "exec", server_ns, "/usr/bin/python3", TRAFFIC,
                                "capture", peer, "120", "6"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        procs.append(cap)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        mac = sh(f"ip netns exec {server_ns} cat /sys/class/net/{peer}/address").stdout
        eth = bytes.fromhex(mac.strip().replace(":", "")) + bytes(6) + b"\x08\x00"
        syn = tcp_syn(82)
        more = 0x2000  # IP flag MF: more fragments follow
        attack = [_ipv4(0x1111, more, syn[:8]),        # RFC 1858: 8 bytes, ports only
                  _ipv4(0x1111, 1, syn[8:]),         # its second half at offset 8: flags
                  _ipv4(0x2222, more, syn[:16]),       # 16 bytes: a header cut short
                  _ipv4(0x2222, 2, syn[16:] + bytes(12))]  # the rest at offset 16: passes
        control = [_ipv4(0x3333, more, syn + bytes(8)),  # whole header: the drop rule decides
                   _ipv4(0x4444, more, tcp_syn(81) + bytes(8))]  # no rule: passes
        sh(f"ip netns exec {ns} /usr/bin/python3 {TRAFFIC} inject {dev} "
           + " ".join((eth + f).hex() for f in attack + control))
        wait_until(lambda: ic_counter(pin_root, 1, "fragment") == 3
                 and ic_counter(pin_root, 1, "dropped") == 1)
        seen = []
        for line in iter(cap.stdout.readline, ""):
            f = bytes.fromhex(line.strip())
            seen.append(struct.unpack("!H", f[18:20])[0])  # IP identification
            if seen[-1] == 0x4444:
                break
        # what reached the server: a lone later fragment and the control without a rule
        assert sorted(set(seen)) == [0x2222, 0x4444], [hex(x) for x in seen]
        assert ic_counter(pin_root, 1, "fragment") == 3
        # the server never answered port 82 (nothing reassembled into a SYN)
        cap.send_signal(signal.SIGTERM)
        out, _ = cap.communicate(timeout=60)
        replies = [bytes.fromhex(h) for h in out.split()]
        assert not [f for f in replies if f[26:30] == socket.inet_aton("203.0.113.2")
                    and struct.unpack("!H", f[34:36])[0] == 82]
    finally:
        teardown(procs, (ns, server_ns))
        owned.remove_pin_root(pin_root)
