"""IPv6 TC interception on a real kernel: the IPv4 tests' twins. Clients in one namespace
connect to servers in another by their real IPv6 addresses; the Intercept on the client
side's device decides, redirected connections are assigned to the Proxy's IPv6 listener.

    client netns  2001:db8::1 ──veth── 2001:db8::2  server netns
    (clients, the Proxy, the Intercept)          (servers on 2001:db8:5::2 and ::3, ports
                                                  80, 81, 82; routed via 2001:db8::2)
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.datapath.supervisor import read_datapath_status
from tests.kernel import owned
from tests.kernel.conftest import bpfsync
from tests.kernel.daemonkit import wait_for
from tests.kernel.interception import (
    ic_counter,
    intercepted,
    sh,
    start_server,
    tcp_syn,
    teardown,
    veth_pair,
)
from tests.kernel.test_intercept import Env, made_env
from tests.kernel.topology import TRAFFIC

SERVER6, OTHER6 = "2001:db8:5::2", "2001:db8:5::3"

RULES6 = """\
    - priority: 10
      action: pass
      destinations: ['2001:db8:5::3/128']
      ports: [80]
    - priority: 20
      action: redirect
      proxy: egress
      destinations: [203.0.113.0/24, '2001:db8:5::/48']
      ports: [80]
    - priority: 30
      action: drop
      destinations: [0.0.0.0/0, '::/0']
      ports: [82]
"""


@pytest.fixture
def env6(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    with made_env(tmp_path, pin_root, "i6") as (e, peer):
        sh(f"ip -n {e.ns} -6 addr add 2001:db8::1/64 dev {e.device} nodad")
        sh(f"ip -n {e.server_ns} -6 addr add 2001:db8::2/64 dev {peer} nodad")
        for addr in (SERVER6, OTHER6):
            sh(f"ip -n {e.server_ns} -6 addr add {addr}/128 dev lo nodad")
        sh(f"ip -n {e.ns} -6 route add 2001:db8:5::/48 via 2001:db8::2")
        e.procs.append(start_server(e.server_ns, "::", 80, 81, 82))
        yield e


def plumbing6(env: Env) -> tuple[str, str]:
    rules = sh(f"ip -n {env.ns} -6 rule show").stdout
    routes = sh(f"ip -n {env.ns} -6 route show table all").stdout
    return rules, routes


def test_ipv6_first_match_rules_redirect_pass_and_drop_with_plumbing(env6: Env) -> None:
    env = env6
    env.write(RULES6)
    env.start()
    rules, routes = plumbing6(env)
    assert "fwmark 0x1/0x1 lookup 100 proto 181" in rules, rules
    assert "local default dev lo table 100 proto 181" in routes, routes

    redirected = env.client(SERVER6, 80)
    assert intercepted(redirected), redirected  # rule 20: the server saw the proxy
    assert redirected["local"].startswith("2001:db8::1:")  # the client kept its address
    assert not intercepted(env.client(SERVER6, 81))  # no rule: direct
    assert not intercepted(env.client(OTHER6, 80))  # rule 10 (pass) comes before rule 20
    dropped = env.client(SERVER6, 82, timeout=2)  # rule 30: every SYN dropped
    assert dropped["error"] is not None and "timed out" in dropped["error"], dropped
    wait_for(lambda: (s := read_datapath_status(env.pin_root)) and s["proxies"]["egress"][
        "originalDestination"] == 1, 30)
    c = wait_for(lambda: (c := env.counters()) and c["assigned"] == 1 and c, 60)
    assert c["redirected"] == 1 and c["passed"] == 1 and c["unmatched"] == 1, c
    assert c["dropped"] >= 1 and c["no_listener"] == 0 and c["headers"] == 0, c
    # a held connection: its later packets follow it to the proxy (ic_followed over IPv6)
    held = env.start_client(SERVER6, 80, "hold", "stdin")
    wait_for(lambda: env.counters()["assigned"] == 2, 60)
    flow = env.counters()["flow"]  # later packets sent to lo after the SYN: it is talking
    wait_for(lambda: env.counters()["flow"] >= flow + 10, 60)
    out, err = held.communicate("\n", timeout=60)
    result = json.loads(out)
    assert result["error"] is None and result["echoed"] == result["sent"] > 5, (result, err)
    assert result["peer"] != result["local"], result
    # the compiled entries read back with bpftool: one per (IPv6 prefix, port)
    dump = json.loads(sh(f"bpftool -j map dump pinned {env.pin_root}/maps/ic_rules6").stdout)
    assert len(dump) == 3, dump
    assert env.diff_exit() == 0

    # removed by hand: restored; the Intercept removed: exactly bpfsync's taken away
    sh(f"ip -n {env.ns} -6 rule del priority 100")
    sh(f"ip -n {env.ns} -6 route del local default dev lo table 100")
    wait_for(lambda: (p := plumbing6(env)) and "lookup 100 proto 181" in p[0]
             and "table 100 proto 181" in p[1], 60)
    (env.directory / "intercept.yaml").unlink()
    wait_for(lambda: (p := plumbing6(env)) and "proto 181" not in p[0]
             and "proto 181" not in p[1], 60)
    wait_for(lambda: env.diff_exit() == 0, 60)
    assert not intercepted(env.client(SERVER6, 80))


def _ipv6(label: int, payload: bytes, next_header: int, dst: str = SERVER6) -> bytes:
    """An IPv6 header (flow label: the frame's name in the capture) and its payload."""
    return struct.pack("!IHBB16s16s", (6 << 28) | label, len(payload), next_header, 64,
                       socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
                       socket.inet_pton(socket.AF_INET6, dst)) + payload


def _fragment(next_header: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", next_header, 0, (offset << 3) | int(more), ident)


def _options(next_header: int) -> bytes:
    """A destination options header of 8 bytes (one PadN)."""
    return struct.pack("!BBBB4x", next_header, 0, 1, 4)


def test_ipv6_fragments_and_header_chains_never_carry_a_syn_past_a_drop_rule(
        tmp_path: Path, pin_root: Path) -> None:
    """The IPv4 fragment attack's twin, and a chain of extension headers longer than the
    program walks, with crafted frames out of the intercepted device: a first fragment with
    8 bytes of TCP header, a TCP fragment at offset 8 bytes, a first fragment cut inside the
    header, and a SYN behind nine destination-options headers are dropped and counted; a SYN
    behind two extension headers meets the drop rule; a lone later fragment and a packet no
    rule names pass, and nothing reassembles into a SYN the server answers."""
    tag, base = owned.tag()[:6], owned.name("frag6")
    ns, server_ns, dev, peer = f"{base}-c", f"{base}-s", f"bf6{tag}c", f"bf6{tag}s"
    procs: list[subprocess.Popen[str]] = []
    try:
        veth_pair(ns, server_ns, dev, peer, "192.0.2.1/24", "192.0.2.2/24")
        sh(f"ip -n {ns} -6 addr add 2001:db8::1/64 dev {dev} nodad")
        sh(f"ip -n {server_ns} -6 addr add 2001:db8::2/64 dev {peer} nodad")
        sh(f"ip -n {server_ns} -6 addr add {SERVER6}/128 dev lo nodad")
        procs.append(start_server(server_ns, "::", 81, 82))
        d = tmp_path / "desired"
        d.mkdir()
        (d / "intercept.yaml").write_text(
            "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: wan}\nspec:\n"
            f"  id: 1\n  device: {dev}\n  netns: {ns}\n  rules:\n"
            "    - {priority: 10, action: drop, protocol: tcp, ports: [82], "
            "destinations: ['::/0']}\n")
        r = bpfsync("apply", str(d), pin_root=pin_root)
        assert r.returncode == 0, r.stdout + r.stderr
        cap = subprocess.Popen(["ip", "netns", "exec", server_ns, "/usr/bin/python3", TRAFFIC,
                                "capture", peer, "120", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        procs.append(cap)
        assert cap.stdout is not None and cap.stdout.readline().strip() == "ready"
        mac = sh(f"ip netns exec {server_ns} cat /sys/class/net/{peer}/address").stdout
        eth = bytes.fromhex(mac.strip().replace(":", "")) + bytes(6) + b"\x86\xdd"
        syn, frag = tcp_syn(82), 44
        chain = b"".join(_options(60) for _ in range(8)) + _options(6)  # nine, then TCP
        attack = [_ipv6(1, _fragment(6, 0, True, 1) + syn[:8], frag),   # 8 bytes: ports only
                  _ipv6(2, _fragment(6, 1, False, 1) + syn[8:], frag),  # offset 8: the flags
                  _ipv6(3, _fragment(6, 0, True, 2) + syn[:16], frag),  # a header cut short
                  _ipv6(5, chain + syn, 60)]                            # past the walk
        passing = [_ipv6(4, _fragment(6, 2, False, 2) + syn[16:] + bytes(4), frag)]  # lone
        control = [_ipv6(6, _options(60) + _options(6) + syn, 60),      # 2 headers: the rule
                   _ipv6(7, tcp_syn(81), 6)]                                # no rule: passes
        sh(f"ip netns exec {ns} /usr/bin/python3 {TRAFFIC} inject {dev} "
           + " ".join((eth + f).hex() for f in attack + passing + control))
        wait_for(lambda: ic_counter(pin_root, 1, "fragment") == 3
                 and ic_counter(pin_root, 1, "headers") == 1
                 and ic_counter(pin_root, 1, "dropped") == 1)
        seen = []
        for line in iter(cap.stdout.readline, ""):
            f = bytes.fromhex(line.strip())
            if f[22:38] == socket.inet_pton(socket.AF_INET6, "2001:db8::1"):  # the client's
                seen.append(struct.unpack("!I", f[14:18])[0] & 0xFFFFF)  # flow label
            if seen and seen[-1] == 7:
                break
        assert sorted(set(seen)) == [4, 7], seen  # the lone later fragment, no-rule packet
        cap.send_signal(signal.SIGTERM)
        out, _ = cap.communicate(timeout=60)
        replies = [bytes.fromhex(h) for h in out.split()]
        assert not [f for f in replies if f[22:38] == socket.inet_pton(socket.AF_INET6, SERVER6)
                    and struct.unpack("!H", f[54:56])[0] == 82]
    finally:
        teardown(procs, (ns, server_ns))
        owned.remove_pin_root(pin_root)
