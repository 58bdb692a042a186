"""IPv6 port steering with real connections: the IPv4 tests' twins in a namespace of the
test's own, with IPv6 destinations, IPv6 backends and both families in one directory.

    namespace P: lo up, 2001:db8:7::/48 and 203.0.113.0/24 routed locally (steered),
                 backends b1..b3 on 2001:db8::1-3 port 9000 (IPv6 only)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kernel.conftest import bpfsync, bpftool_dump
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.test_proxy import BACKEND_PORT, ProxyNet
from tests.kernel.topology import sh

VIP6 = "2001:db8:7::7"
VIP4 = "203.0.113.7"
BACKENDS6 = {"b1": "2001:db8::1", "b2": "2001:db8::2", "b3": "2001:db8::3"}


@pytest.fixture
def pn(tmp_path: Path) -> Iterator[ProxyNet]:
    """The IPv4 tests' namespace, with IPv6 backends (only) and a steered IPv6 prefix."""
    p = ProxyNet(tmp_path)
    try:
        p.setup()
        setup_v6(p)
        yield p
    finally:
        p.cleanup()


def setup_v6(pn: ProxyNet) -> None:
    """Steered prefix, backends on IPv6 (nodad: usable at once)."""
    sh(f"ip -n {pn.ns} -6 route add local 2001:db8:7::/48 dev lo")
    # the backends' addresses, and two on the steered prefix for servers of the test's own
    # (IPv6 binds only assigned addresses, a local route is not enough)
    for addr in [*BACKENDS6.values(), "2001:db8:7::1", VIP6]:
        sh(f"ip -n {pn.ns} addr add {addr}/128 dev lo nodad")
    for name, addr in BACKENDS6.items():
        p = pn.spawn("serve", f"{name}@{addr}:{BACKEND_PORT}")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        pn.backends[name] = p


def proxy6(ports: str = '[80, "8000-8009"]') -> str:
    listed = ", ".join(f'"[{a}]:{BACKEND_PORT}"' for a in BACKENDS6.values())
    return ("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: web}\nspec:\n"
            f"  id: 1\n  netns: \n  ports: {ports}\n"
            "  destinations: [203.0.113.0/24, '2001:db8:7::/48']\n"
            f"  backends: [{listed}]\n"
            "  healthCheck: {intervalSeconds: 0.5, timeoutSeconds: 0.5, rise: 2, fall: 2}\n")


def test_ipv6_destinations_reach_three_ipv6_backends_and_ipv4_clients_too(
        pn: ProxyNet, write_counter) -> None:
    direct = pn.spawn("serve", "direct@2001:db8:7::1:9999")
    assert direct.stdout is not None and direct.stdout.readline().strip() == "ready"
    pn.write(proxy6())
    pn.apply()
    # In sync: diff finds nothing and apply writes nothing (counted in bpf(2)).
    assert bpfsync("diff", str(pn.dir), pin_root=pn.root).returncode == 0
    r = bpfsync("apply", str(pn.dir), pin_root=pn.root, counter=write_counter)
    assert r.returncode == 0 and write_counter.counts() == (0, 0), r.stdout + r.stderr
    pn.start_datapath()
    assert pn.supervisor()["listeners6"].keys() == {"1"}  # a listener per family
    seen = pn.client("who", VIP6, "8000-8009", 150)
    assert seen["errors"] == [] and set(seen["names"]) == {"b1", "b2", "b3"}
    assert all(49 <= n <= 51 for n in seen["names"].values()), seen  # round robin, exact
    # IPv4 clients of the same Proxy reach the same IPv6 backends.
    seen4 = pn.client("who", VIP4, 80, 30)
    assert seen4["errors"] == [] and set(seen4["names"]) == {"b1", "b2", "b3"}
    echo = pn.client("echo", VIP6, 8005, 3 << 20)
    assert echo["match"] and echo["received"] == 3 << 20
    # An unsteered port on the steered IPv6 prefix is not touched.
    assert pn.client("who", "2001:db8:7::1", "9999", 3)["names"] == {"direct": 3}
    st = wait_until(lambda: (x := pn.status())["proxied"] >= 181 and x, 60)
    assert st["steering"]["entries"] == 22  # 11 ports x (one IPv4 + one IPv6 prefix)
    assert st["counters"]["steered"] >= 181 and st["counters"]["noListener"] == 0
    assert {b["backend"] for b in st["backends"]} == {
        f"[{a}]:{BACKEND_PORT}" for a in BACKENDS6.values()}
    # The independent view: bpftool reads 11 IPv6 trie entries in the documented layout.
    dump = bpftool_dump(pn.root / "maps" / "ps_dest6")
    assert len(dump) == 11 and {v[:4] for v in dump.values()} == {(1).to_bytes(4, "little")}
    key = struct.pack("=IBxH", 32 + 48, 6, socket.htons(8005)) + socket.inet_pton(
        socket.AF_INET6, "2001:db8:7::")
    assert key in dump
    assert len(bpftool_dump(pn.root / "maps" / "ps_dest")) == 11


def test_ipv6_steering_fails_closed_without_the_data_path(pn: ProxyNet) -> None:
    pn.write(proxy6(ports="[80]"))
    pn.apply()
    squatter = pn.spawn("serve", f"squatter@{VIP6}:80")
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    r = pn.client("who", VIP6, 80, 2)
    assert "squatter" not in r["names"] and len(r["errors"]) == 2
    assert pn.status()["counters"]["noListener"] >= 2
    pn.start_datapath()
    assert pn.client("who", VIP6, 80, 3)["errors"] == []
    assert pn.dp is not None
    pn.dp.send_signal(signal.SIGTERM)
    assert pn.dp.wait(20) == 0
    assert bpfsync("diff", str(pn.dir), pin_root=pn.root).returncode == 0
    # The IPv6 listener went with the data path: refused again, counted, never the squatter.
    before = pn.status()["counters"]["noListener"]
    r = pn.client("who", VIP6, 80, 1)
    assert r["names"] == {} and len(r["errors"]) == 1
    assert pn.status()["counters"]["noListener"] == before + 1
    pn.start_datapath()
    assert pn.client("who", VIP6, 80, 3)["errors"] == []


def test_a_dead_ipv6_backend_is_taken_out_and_back(pn: ProxyNet) -> None:
    """Health checks over IPv6."""
    pn.write(proxy6(ports="[80]"))
    pn.apply()
    pn.start_datapath()
    pn.stop_backend("b2")
    wait_until(lambda: pn.healthy().get(BACKENDS6["b2"]) is False, 60)
    seen = pn.client("who", VIP6, 80, 30)
    assert seen["errors"] == [] and seen["names"] == {"b1": 15, "b3": 15}
    p = pn.spawn("serve", f"b2@{BACKENDS6['b2']}:{BACKEND_PORT}")
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    pn.backends["b2"] = p
    wait_until(lambda: pn.healthy().get(BACKENDS6["b2"]) is True, 60)
    assert set(pn.client("who", VIP6, 80, 30)["names"]) == {"b1", "b2", "b3"}


def test_a_hostname_backend_is_every_address_of_both_families(pn: ProxyNet,
                                                              tmp_path: Path) -> None:
    """A name with an A and an AAAA record is two targets, each reached over its family (the
    data path runs in a mount namespace where a hosts file of the test is /etc/hosts)."""
    v4 = pn.spawn("serve", f"v4@192.0.2.2:{BACKEND_PORT}")
    assert v4.stdout is not None and v4.stdout.readline().strip() == "ready"
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{BACKENDS6['b1']} app.bpfsync.test\n192.0.2.2 app.bpfsync.test\n")
    pn.write(proxy6(ports="[80]").replace(
        ", ".join(f'"[{a}]:{BACKEND_PORT}"' for a in BACKENDS6.values()),
        f'"app.bpfsync.test:{BACKEND_PORT}"'))
    pn.apply()
    pn.start_datapath_with_hosts(hosts)
    pn.wait_report(lambda r: {b["address"] for b in r["backends"]} == {
        BACKENDS6["b1"], "192.0.2.2"} and all(b["healthy"] for b in r["backends"]))
    seen = pn.client("who", VIP6, 80, 20)
    assert seen["errors"] == [] and seen["names"] == {"b1": 10, "v4": 10}, seen


def test_kill_9_of_every_worker_refuses_no_ipv6_connection(pn: ProxyNet) -> None:
    """The supervisor holds the IPv6 listener too: with every worker killed at once, IPv6
    connections wait in its queue for the new workers instead of being refused."""
    pn.write(proxy6(ports="[80]"))
    pn.apply()
    pn.start_datapath()
    stop = pn.stop_file()
    stream = pn.spawn("stream", VIP6, 80, 300, 0.005, stop)
    pn.wait_report(lambda r: r["proxied"] >= 10)
    killed = pn.supervisor()["workerPids"]
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: all(p and p not in killed for p in pn.supervisor()["workerPids"]), 60)
    pn.wait_report(lambda r: r["pid"] not in killed and r["proxied"] >= 10)
    stop.touch()
    s = json.loads(stream.communicate(timeout=60)[0])
    assert not [e for e in s["errors"] if "Refused" in e], s["errors"]
    # only the connection being relayed at the kill dies with its worker (the client is
    # sequential): a reset or an early EOF
    assert len(s["errors"]) <= 1 and all(
        "reset" in e or "Broken" in e or e == "empty reply" for e in s["errors"]), s
    assert s["attempts"] > 30 and set(s["names"]) == {"b1", "b2", "b3"}
