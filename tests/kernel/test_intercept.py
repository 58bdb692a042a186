"""TC interception rules on a real kernel: clients in one namespace connect to servers in
another by their real addresses; the Intercept on the client side's device decides.

    client netns  192.0.2.1 ──veth── 192.0.2.2  server netns
    (clients, the Proxy, the Intercept       (servers on 203.0.113.2 and .3,
     on the veth's egress)                     ports 80, 81, 82; routed via 192.0.2.2)

Intercepted: the server sees the proxy's connection (another source port than the client's
own) and the client gets its data back unchanged. Direct: the server sees the client's port.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.datapath.supervisor import read_datapath_status
from tests.kernel import owned
from tests.kernel.daemonkit import RunningDaemon, wait_for
from tests.kernel.interception import (
    TPKIT,
    egress_proxy,
    intercepted,
    scrape,
    sh,
    start_daemon,
    start_server,
    teardown,
    veth_pair,
)

SERVER, OTHER = "203.0.113.2", "203.0.113.3"



RULES = """\
    - priority: 10
      action: pass
      destinations: [203.0.113.3/32]
      ports: [80]
    - priority: 20
      action: redirect
      proxy: egress
      destinations: [203.0.113.0/24]
      ports: [80]
    - priority: 30
      action: drop
      ports: [82]
"""


@dataclass
class Env:
    ns: str
    server_ns: str
    device: str
    pin_root: Path
    directory: Path
    log: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    daemon: RunningDaemon | None = None

    def write(self, rules: str = RULES) -> None:
        self.directory.mkdir(exist_ok=True)
        (self.directory / "proxy.yaml").write_text(egress_proxy(self.ns))
        (self.directory / "intercept.yaml").write_text(
            "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: wan}\nspec:\n"
            f"  id: 1\n  device: {self.device}\n  netns: {self.ns}\n  rules:\n{rules}")

    def start(self) -> RunningDaemon:
        self.daemon = start_daemon(self.directory, self.pin_root, self.log)
        return self.daemon

    def client(self, host: str, port: int, mode: str = "client", arg: str = "hello",
               timeout: float = 15) -> dict[str, Any]:
        out = sh(f"TPKIT_TIMEOUT={timeout} ip netns exec {self.ns} {sys.executable} {TPKIT} "
                 f"{mode} {host} {port} {arg}", check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def start_client(self, host: str, port: int, mode: str, arg: str
                     ) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, sys.executable, TPKIT, mode,
                              host, str(port), arg], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def counters(self) -> dict[str, int]:
        assert self.daemon is not None
        return self.daemon.status()["intercepts"][0]["counters"]

    def diff_exit(self) -> int:
        return sh(f"{sys.executable} -m reconciler --pin-root {self.pin_root} diff "
                  f"{self.directory}", check=False).returncode

    def plumbing(self) -> tuple[str, str, str]:
        rules = sh(f"ip -n {self.ns} rule show").stdout
        routes = sh(f"ip -n {self.ns} route show table all").stdout
        accept = sh(f"ip netns exec {self.ns} sysctl -n net.ipv4.conf.lo.accept_local").stdout
        return rules, routes, accept.strip()




@contextmanager
def made_env(tmp_path: Path, pin_root: Path, name: str) -> Iterator[tuple[Env, str]]:
    """The two namespaces joined by a veth (192.0.2.1 and .2), and the server end's name;
    everything it made removed after, whatever failed."""
    tag, base = owned.tag()[:6], owned.name(name)
    e = Env(f"{base}-c", f"{base}-s", f"b{name}{tag}c", pin_root, tmp_path / "desired",
            tmp_path / "daemon.log")
    try:
        veth_pair(e.ns, e.server_ns, e.device, f"b{name}{tag}s", "192.0.2.1/24", "192.0.2.2/24")
        yield e, f"b{name}{tag}s"
    finally:
        try:
            if e.daemon is not None:
                e.daemon.cleanup()
        finally:  # whatever went wrong above, the namespaces and servers go
            teardown(e.procs, (e.ns, e.server_ns))


@pytest.fixture
def env(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    with made_env(tmp_path, pin_root, "ic") as (e, _peer):
        for addr in (SERVER, OTHER):
            sh(f"ip -n {e.server_ns} addr add {addr}/32 dev lo")
        sh(f"ip -n {e.ns} route add 203.0.113.0/24 via 192.0.2.2")
        e.procs.append(start_server(e.server_ns, "0.0.0.0", 80, 81, 82))
        yield e


def test_first_match_rules_redirect_pass_and_drop(env: Env) -> None:
    env.write()
    env.start()
    redirected = env.client(SERVER, 80)
    assert intercepted(redirected)  # rule 20: the server saw the proxy's connection
    assert redirected["local"].startswith("192.0.2.1:")  # the client kept its own address
    assert not intercepted(env.client(SERVER, 81))  # no rule: direct
    assert not intercepted(env.client(OTHER, 80))  # rule 10 (pass) comes before rule 20
    dropped = env.client(SERVER, 82, timeout=2)  # rule 30: every SYN dropped
    assert dropped["error"] is not None and "timed out" in dropped["error"], dropped
    # the worker reports every 0.25 s: wait for the report that has seen the connection
    wait_for(lambda: (s := read_datapath_status(env.pin_root)) and s["proxies"]["egress"][
        "originalDestination"] == 1, 30)
    c = wait_for(lambda: (c := env.counters()) and c["assigned"] == 1 and c, 60)
    assert c["redirected"] == 1 and c["passed"] == 1 and c["unmatched"] == 1, c
    assert c["dropped"] >= 1 and c["no_listener"] == 0, c
    assert env.daemon is not None  # and the same, scraped from /metrics (promtool-clean)
    m = scrape(env.daemon)
    ic = 'bpfsync_intercept_packets_total{intercept="wan",outcome="%s"}'
    assert (m[ic % "redirected"], m[ic % "passed"], m[ic % "assigned"]) == (1, 1, 1), m
    assert m['bpfsync_resources{kind="Intercept",state="Synced"}'] == 1
    # the compiled entries read back with bpftool: one per (prefix, port), priorities resolved
    dump = json.loads(sh(f"bpftool -j map dump pinned {env.pin_root}/maps/ic_rules").stdout)
    assert len(dump) == 3, dump
    assert env.diff_exit() == 0


def test_rule_changes_affect_new_connections_only(env: Env) -> None:
    env.write()
    env.start()
    # an intercepted connection, talking until released
    held = env.start_client(SERVER, 80, "hold", "stdin")
    wait_for(lambda: env.counters()["assigned"] == 1, 60)
    before = env.daemon.events() if env.daemon else 0
    env.write(RULES.replace("action: redirect\n      proxy: egress", "action: pass"))
    assert env.daemon is not None
    env.daemon.settled(before)
    wait_for(lambda: env.diff_exit() == 0, 60)
    assert not intercepted(env.client(SERVER, 80))  # new connections: direct now
    assert held.poll() is None  # still talking through the change
    out, err = held.communicate("\n", timeout=60)
    result = json.loads(out)
    assert result["error"] is None, (result, err)
    assert result["echoed"] == result["sent"] > 5, result  # never interrupted
    assert result["peer"] != result["local"], result  # and it was the proxied one
    # back to redirect: a drop rule inserted before it applies to new connections
    env.write(RULES.replace("ports: [82]", "ports: [81]"))
    wait_for(lambda: env.diff_exit() == 0, 60)
    assert intercepted(env.client(SERVER, 80))
    assert env.client(SERVER, 81, timeout=2)["error"] is not None


def test_host_plumbing_restored_and_reverted_exactly(env: Env) -> None:
    sh(f"ip -n {env.ns} rule add fwmark 0x10 lookup 200 priority 50")  # someone else's
    sh(f"ip netns exec {env.ns} tc qdisc add dev {env.device} clsact")
    sh(f"ip netns exec {env.ns} tc filter add dev {env.device} egress prio 7 "
       f"bpf bytecode '1,6 0 0 0,'")  # someone else's filter on the same hook (no match)
    assert env.plumbing()[2] == "0"
    env.write()
    env.start()
    rules, routes, accept = env.plumbing()
    assert "fwmark 0x1/0x1 lookup 100 proto 181" in rules, rules
    assert "local default dev lo table 100 proto 181" in routes, routes
    assert accept == "1"
    # removed by hand: the daemon's resync restores all three
    sh(f"ip -n {env.ns} rule del priority 100")
    sh(f"ip -n {env.ns} route del local default dev lo table 100")
    sh(f"ip netns exec {env.ns} sysctl -qw net.ipv4.conf.lo.accept_local=0")
    wait_for(lambda: (p := env.plumbing()) and "lookup 100 proto 181" in p[0]
             and "table 100 proto 181" in p[1] and p[2] == "1", 60)
    assert intercepted(env.client(SERVER, 80))
    assert env.daemon is not None
    # the kernel is repaired before that reconcile ends (and reports it): wait for it
    wait_for(lambda: env.daemon.status()["drift"]["correctedOperations"] >= 3, 60)
    # the Intercept removed: exactly bpfsync's changes reverted, nobody else's
    (env.directory / "intercept.yaml").unlink()

    def reverted() -> bool:  # one reconcile undoes the three, one after another
        rules, routes, accept = env.plumbing()
        return "proto 181" not in rules and "proto 181" not in routes and accept == "0"

    wait_for(reverted, 60)
    wait_for(lambda: env.diff_exit() == 0, 60)  # and everything else that reconcile did
    rules, routes, accept = env.plumbing()
    assert "fwmark 0x10 lookup 200" in rules, rules
    filters = sh(f"ip netns exec {env.ns} tc filter show dev {env.device} egress").stdout
    assert "bytecode" in filters and "bpfsync" not in filters, filters
    lo = sh(f"ip netns exec {env.ns} tc filter show dev lo ingress").stdout
    assert "bpfsync" not in lo, lo
    assert not intercepted(env.client(SERVER, 80))
    hosts = json.loads(sh(f"bpftool -j map dump pinned {env.pin_root}/maps/ic_host").stdout)
    assert hosts == [], hosts


MORE_RULES = """\
    - priority: 10
      action: drop
      ports: [81]
      sourcePorts: ["40000-40099"]
    - priority: 20
      action: drop
      protocol: udp
      ports: [5353]
    - priority: 30
      action: redirect
      proxy: egress
      destinations: [203.0.113.0/24]
      ports: [80]
    - priority: 40
      action: drop
      protocol: any
      ports: [82]
"""


def test_source_ports_udp_any_and_custom_routing(env: Env) -> None:
    udp = subprocess.Popen(["ip", "netns", "exec", env.server_ns, sys.executable, TPKIT,
                            "udp-server", "0.0.0.0", "5353", "5354", "82"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    env.procs.append(udp)
    assert udp.stdout is not None and udp.stdout.readline().strip() == "listening"
    env.write(MORE_RULES)
    intercept = env.directory / "intercept.yaml"
    intercept.write_text(intercept.read_text().replace(
        "  rules:\n", "  routing: {mark: 4, proxyMark: 8, table: 123, rulePriority: 123}\n"
                      "  rules:\n"))
    env.start()

    def tcp(port: int, sport: int = 0, timeout: float = 15) -> dict[str, Any]:
        out = sh(f"TPKIT_SPORT={sport} TPKIT_TIMEOUT={timeout} ip netns exec {env.ns} "
                 f"{sys.executable} {TPKIT} client {SERVER} {port} hello", check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def datagram(port: int) -> dict[str, Any]:
        out = sh(f"TPKIT_TIMEOUT=2 ip netns exec {env.ns} {sys.executable} {TPKIT} udp "
                 f"{SERVER} {port} ping", check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    # sourcePorts: only connections from 40000-40099 to port 81 are dropped
    assert "timed out" in (tcp(81, sport=40050, timeout=2)["error"] or "")
    assert not intercepted(tcp(81, sport=41000))
    # protocol udp: a UDP drop rule leaves other UDP ports alone
    assert datagram(5353)["error"] is not None
    assert datagram(5354)["reply"].endswith(" ping")
    # protocol any: TCP and UDP to port 82 both dropped
    assert "timed out" in (tcp(82, timeout=2)["error"] or "")
    assert datagram(82)["error"] is not None
    # redirect with the custom routing: the mark, table and rule priority declared
    assert intercepted(tcp(80))
    rules, routes, _ = env.plumbing()
    assert "123:\tfrom all fwmark 0x4/0x4 lookup 123 proto 181" in rules, rules
    assert "local default dev lo table 123 proto 181" in routes, routes
    c = wait_for(lambda: (c := env.counters()) and c["assigned"] == 1 and c, 60)
    assert c["dropped"] >= 4 and c["redirected"] == 1, c
    assert env.diff_exit() == 0
