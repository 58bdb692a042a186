"""A three-namespace GUE topology for real-traffic tests, removed completely afterwards.

    client 198.51.100.1 ──c0/g0── 198.51.100.254 gateway 192.0.2.1 ──g1/n0── 192.0.2.2 node
                                                  (routes 203.0.113.10 via the node)

The service's proxy endpoint is 203.0.113.10:80 (routed from the gateway towards the node);
its backend listens on the node at 203.0.113.100:8080 (a loopback address). The underlay
g1/n0 has MTU 1600 so that 1500-byte packets fit with the GUE overhead.

With ipv6, the same three namespaces are dual stack: client 2001:db8:c::1 behind the gateway
(2001:db8:c::fe), gateway and node on 2001:db8:1::/64 (neighbour discovery only: the tunnel's
underlay stays IPv4), the IPv6 proxy endpoint [2001:db8:10::10]:80 routed towards the node and
the IPv6 backend at [2001:db8:10::100]:8080 on the node's loopback.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.kernel import owned

TRAFFIC = str(Path(__file__).with_name("traffic.py"))
PROXY = ("203.0.113.10", 80)
BACKEND = ("203.0.113.100", 8080)
GW_TUNNEL, NODE_TUNNEL = ("192.0.2.1", 6080), ("192.0.2.2", 6080)
CLIENT = "198.51.100.1"
PROXY6, BACKEND6, CLIENT6 = ("2001:db8:10::10", 80), ("2001:db8:10::100", 8080), "2001:db8:c::1"


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, timeout=60)


@dataclass
class Net:
    prefix: str
    procs: list[subprocess.Popen] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # process groups of its data paths

    @property
    def client(self) -> str:
        return f"{self.prefix}-c"

    @property
    def gw(self) -> str:
        return f"{self.prefix}-g"

    @property
    def node(self) -> str:
        return f"{self.prefix}-n"

    def run(self, ns: str, cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh(f"ip netns exec {ns} {cmd}", check)

    def spawn(self, ns: str, args: list[str]) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def traffic(self, ns: str, *args: object) -> subprocess.Popen:
        return self.spawn(ns, ["/usr/bin/python3", TRAFFIC, *map(str, args)])

    def server(self, reply_bytes: int = 1 << 20,
               backend: tuple[str, int] = BACKEND) -> subprocess.Popen:
        p = self.traffic(self.node, "tcp-server", *backend, reply_bytes)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "listening"
        return p

    def client_transfer(self, send: int, reply: int = 1 << 20, port: int = PROXY[1],
                        timeout: float = 10,
                        address: str = PROXY[0]) -> subprocess.CompletedProcess[str]:
        return self.run(self.client, f"/usr/bin/python3 {TRAFFIC} tcp-client {address} {port} "
                                     f"{send} {reply} {timeout}", check=False)

    def kill_datapaths(self) -> None:
        """Every data path started with datapath() and its worker, should it outlive its
        supervisor; returns once none runs."""
        for group in self.groups:
            owned.kill_process_group(group)

    def stop(self, p: subprocess.Popen) -> tuple[str, str]:
        with suppress(ProcessLookupError):
            p.send_signal(signal.SIGTERM)
        try:
            return p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.communicate()


@contextmanager
def gue_topology(ipv6: bool = False) -> Iterator[Net]:
    net = Net(owned.name("gue"))
    try:
        for ns in (net.client, net.gw, net.node):
            sh(f"ip netns add {ns}")
            sh(f"ip -n {ns} link set lo up")
        sh(f"ip link add name c0 netns {net.client} type veth peer name g0 netns {net.gw}")
        sh(f"ip link add name g1 netns {net.gw} mtu 1600 type veth peer name n0 netns "
           f"{net.node} mtu 1600")
        for ns, dev, addr in ((net.client, "c0", "198.51.100.1/24"),
                              (net.gw, "g0", "198.51.100.254/24"),
                              (net.gw, "g1", "192.0.2.1/24"), (net.node, "n0", "192.0.2.2/24")):
            sh(f"ip -n {ns} addr add {addr} dev {dev}")
            sh(f"ip -n {ns} link set {dev} up")
        sh(f"ip -n {net.client} route add default via 198.51.100.254")
        sh(f"ip netns exec {net.gw} sysctl -qw net.ipv4.ip_forward=1")
        sh(f"ip -n {net.gw} route add {PROXY[0]}/32 via {NODE_TUNNEL[0]} dev g1")
        sh(f"ip -n {net.node} addr add {BACKEND[0]}/32 dev lo")
        sh(f"ip -n {net.node} route add default via {GW_TUNNEL[0]}")
        if ipv6:
            _dual_stack(net)
        yield net
    finally:
        for p in net.procs:
            if p.poll() is None:
                p.kill()
            with suppress(Exception):
                p.communicate(timeout=5)
        net.kill_datapaths()
        for ns in (net.client, net.gw, net.node):
            owned.delete_netns(ns)


def _dual_stack(net: Net) -> None:
    for ns, dev, addr in ((net.client, "c0", f"{CLIENT6}/64"), (net.gw, "g0", "2001:db8:c::fe/64"),
                          (net.gw, "g1", "2001:db8:1::1/64"), (net.node, "n0", "2001:db8:1::2/64")):
        sh(f"ip -n {ns} -6 addr add {addr} dev {dev} nodad")
    sh(f"ip -n {net.client} -6 route add default via 2001:db8:c::fe")
    sh(f"ip netns exec {net.gw} sysctl -qw net.ipv6.conf.all.forwarding=1")
    sh(f"ip -n {net.gw} -6 route add {PROXY6[0]}/128 via 2001:db8:1::2 dev g1")
    sh(f"ip -n {net.node} -6 addr add {BACKEND6[0]}/128 dev lo nodad")
    sh(f"ip -n {net.node} -6 route add default via 2001:db8:1::1")


TUNNEL_GW = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {{name: to-node}}
spec:
  id: 100
  local: {{address: 192.0.2.1, port: 6080}}
  remote: {remote}
  keyFrom: {{env: BPFSYNC_TUNNEL_KEY}}
"""
TUNNEL_NODE = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {name: to-node}
spec:
  id: 100
  local: {address: 192.0.2.2, port: 6080}
  remote: {address: 192.0.2.1, port: 6080}
  keyFrom: {env: BPFSYNC_TUNNEL_KEY}
  ping: {intervalSeconds: 0.2}
"""
TUNNEL6 = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {{name: to-node}}
spec:
  id: 100
  local: {{address: '{local}'}}
  remote: {remote}
  zeroChecksum: true
  keyFrom: {{env: BPFSYNC_TUNNEL_KEY}}
{extra}"""
UNDERLAY6 = ("2001:db8:1::1", "2001:db8:1::2")  # gateway, node (the dual-stack topology)


def tunnel6_doc(node: bool, remote: str = "learn") -> str:
    """Tunnel to-node over the IPv6 underlay: the node's (a fixed remote, pinging) or the
    gateway's (remote as given)."""
    gw, nd = UNDERLAY6
    if node:
        return TUNNEL6.format(local=nd, remote=f"{{address: '{gw}'}}",
                              extra="  ping: {intervalSeconds: 0.2}\n")
    return TUNNEL6.format(local=gw, remote=remote, extra="")


SERVICE = """\
apiVersion: bpfsync/v1
kind: Service
metadata: {{name: {name}}}
spec:
  groupId: 1
  serviceId: {sid}
  protocol: {protocol}
  proxy: {{address: {proxy}, port: {proxy_port}}}
  backend: {{address: {backend}, port: {backend_port}}}
  tunnel: to-node
  keyFrom: {{env: {key_env}}}
"""
INTERFACE = """\
apiVersion: bpfsync/v1
kind: Interface
metadata: {{name: uplink}}
spec:
  device: {device}
  netns: {netns}
  role: {role}
{extra}"""
KEYS = {"BPFSYNC_TUNNEL_KEY": "tunnel-key-0001", "BPFSYNC_SERVICE_KEY": "service-key-01",
        "BPFSYNC_OTHER_KEY": "not-the-key-02"}


def service_doc(name: str = "web", sid: int = 1, protocol: str = "tcp",
                proxy_port: int = PROXY[1], backend_port: int = BACKEND[1],
                key_env: str = "BPFSYNC_SERVICE_KEY", ipv6: bool = False) -> str:
    """A Service of group 1 from the proxy address to the backend address (the IPv6 ones
    where ipv6), via to-node."""
    proxy, backend = (f"'{PROXY6[0]}'", f"'{BACKEND6[0]}'") if ipv6 else (PROXY[0], BACKEND[0])
    return SERVICE.format(name=name, sid=sid, protocol=protocol, proxy=proxy,
                          proxy_port=proxy_port, backend=backend, backend_port=backend_port,
                          key_env=key_env)


def write_gateway(d: Path, net: Net, remote: str = "learn", extra: str = "",
                  key_env: str = "BPFSYNC_SERVICE_KEY") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tunnel.yaml").write_text(TUNNEL_GW.format(remote=remote))
    (d / "service.yaml").write_text(service_doc(key_env=key_env))
    (d / "interface.yaml").write_text(INTERFACE.format(device="g1", netns=net.gw, role="gateway",
                                                       extra=extra))
    return d


def write_node(d: Path, net: Net, replies: str = "tunnel") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tunnel.yaml").write_text(TUNNEL_NODE)
    (d / "service.yaml").write_text(service_doc())
    (d / "interface.yaml").write_text(INTERFACE.format(
        device="n0", netns=net.node, role="node", extra=f"  replies: {replies}\n"))
    return d


def datapath(net: Net, pin_root: Path, netns: str) -> subprocess.Popen:
    """`bpfsync datapath` for one end, from the host (it opens its pins, then enters netns)."""
    p = subprocess.Popen([sys.executable, "-m", "reconciler", "--pin-root", str(pin_root),
                          "datapath", "--netns", netns], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    net.procs.append(p)
    net.groups.append(p.pid)
    return p
