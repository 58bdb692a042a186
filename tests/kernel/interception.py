"""What the interception tests (TransparentProxy, Intercept) share: running commands, telling
an intercepted connection from a direct one, and tearing their processes and namespaces down."""

from __future__ import annotations

import json
import re
import signal
import struct
import subprocess
import sys
import urllib.request
from contextlib import suppress
from pathlib import Path
from typing import Any

from reconciler.datapath.supervisor import read_datapath_status
from tests.kernel import owned
from tests.kernel.daemonkit import RunningDaemon, wait_for
from tests.unit.test_monitoring import promtool


def sh(cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True,
                          timeout=timeout)


def intercepted(result: dict[str, Any], msg: str = "hello") -> bool:
    """tpkit client result: True when the server saw another connection than the client's
    own (the proxy's); the data must have arrived unchanged either way."""
    assert result["error"] is None, result
    peer, _, echoed = result["reply"].partition(" ")
    assert echoed == msg + "\n", result
    return peer != result["local"]


def teardown(procs: list[subprocess.Popen[str]], namespaces: tuple[str, ...]) -> None:
    for p in procs:
        with suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
        p.wait(10)
    for ns in namespaces:
        owned.delete_netns(ns)


TPKIT = str(Path(__file__).with_name("tpkit.py"))


def veth_pair(client_ns: str, server_ns: str, client_dev: str, server_dev: str,
              client_cidr: str, server_cidr: str) -> None:
    """Two namespaces with lo up, joined by a veth with an address at each end."""
    for ns in (client_ns, server_ns):
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link set lo up")
    # made inside the namespaces: nothing appears in the host's, even for a moment
    sh(f"ip link add name {client_dev} netns {client_ns} type veth "
       f"peer name {server_dev} netns {server_ns}")
    for ns, dev, cidr in ((client_ns, client_dev, client_cidr),
                          (server_ns, server_dev, server_cidr)):
        sh(f"ip -n {ns} addr add {cidr} dev {dev}")
        # no duplicate address detection on a link of two ends we made: the link-local
        # address is usable at once instead of a second or two after link up
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.accept_dad=0")
        sh(f"ip -n {ns} link set {dev} up")
    for ns, dev in ((client_ns, client_dev), (server_ns, server_dev)):
        wait_for(lambda ns=ns, dev=dev: link_local_settled(ns, dev), 60)


def link_local_settled(ns: str, dev: str) -> bool:
    """dev's IPv6 link-local address is usable (not tentative) and its local route is in:
    until then the kernel adds them by itself, after link up, and a before/after snapshot of
    the routes would see a change nobody made."""
    addrs = json.loads(sh(f"ip -n {ns} -6 -j addr show dev {dev}").stdout or "[]")
    infos = [a for link in addrs for a in link.get("addr_info", [])]
    if not any(a["local"].startswith("fe80:") for a in infos):
        return False
    if any(a.get("tentative") for a in infos):
        return False
    routes = sh(f"ip -n {ns} -6 route show table local dev {dev}").stdout
    return "local fe80:" in routes


def start_server(ns: str, host: str, *ports: int) -> subprocess.Popen[str]:
    """tpkit's server in ns, once it listens on every port."""
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, TPKIT, "server", host,
                               *map(str, ports)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    return server


def egress_proxy(ns: str) -> str:
    """The Proxy both kinds send connections to (id 4, no backends: original destinations)."""
    return ("apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: egress}\n"
            f"spec:\n  id: 4\n  netns: {ns}\n")


def start_daemon(directory: Path, pin_root: Path, log: Path) -> RunningDaemon:
    """`bpfsync run` with a 1 s resync and metrics on a free port, once its data path serves
    the egress Proxy."""
    daemon = RunningDaemon(directory, pin_root, log, "--resync", "1", "--metrics", "127.0.0.1:0")
    daemon.start()
    wait_for(lambda: (s := read_datapath_status(pin_root)) and "egress" in s["proxies"], 60)
    return daemon


def scrape(daemon: RunningDaemon) -> dict[str, float]:
    """The daemon's /metrics, checked clean by promtool, as {sample with labels: value}."""
    where = daemon.status()["daemon"]["metrics"]
    text = urllib.request.urlopen(f"http://{where}/metrics", timeout=60).read().decode()
    check = subprocess.run([promtool(), "check", "metrics"], input=text, text=True,
                           capture_output=True, check=False)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), check
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) ([0-9.e+-]+)$", text, re.M)}


def tcp_syn(dport: int, sport: int = 40000) -> bytes:
    """A 20-byte TCP SYN header (checksum left 0: nobody gets to check it)."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 5 << 4, 0x02, 65535, 0, 0)


def ic_counter(pin_root: Path, ic: int, name: str) -> int:
    """One Intercept counter, summed over CPUs, read with bpftool (not bpfsync's reader)."""
    from reconciler.intercept import tables as ict

    index = ic * ict.IC_COUNTERS + ict.IC_STAT_NAMES.index(name)
    out = subprocess.run(["bpftool", "-j", "map", "lookup", "pinned",
                          str(pin_root / "maps" / ict.IC_STATS.name), "key",
                          *map(str, index.to_bytes(4, "little"))],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return sum(int(v["value"]) if isinstance(v["value"], int) else int.from_bytes(
        bytes(int(b, 16) for b in v["value"]), "little") for v in json.loads(out)["values"])
