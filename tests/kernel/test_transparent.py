"""Transparent proxy by cgroup, on a real kernel: a client process in the intercepted cgroup
connects to a server in another namespace by its real address and goes through the data
path's proxy; everything else goes direct.

    client netns  203.0.113.1 ──veth── 203.0.113.2  server netns
    (the Proxy, its listener on 127.0.0.1, the clients)   (servers on ports 80, 81)

Intercepted: a client socket's local address is the proxy's loopback listener, and the server
sees the proxy's connection, not the client's. Direct: the server sees the client's own
address and port.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from reconciler.datapath.supervisor import read_datapath_status
from reconciler.kernel import cgroups
from reconciler.tproxy.cgroups import datapath_cgroup
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

SERVER = "203.0.113.2"



@dataclass
class Env:
    ns: str  # the clients' and the Proxy's namespace
    server_ns: str
    base: str  # the test's cgroup, e.g. /bpfsync-test-1a2b3c
    pin_root: Path
    directory: Path
    log: Path
    device: str  # the clients' end of the veth
    peer: str  # the servers' end
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    daemon: RunningDaemon | None = None

    @property
    def apps(self) -> str:
        return f"{self.base}/apps"

    def write(self, cgroup: str = "", ports: str = '"*"', extra: str = "",
              intercept: str = "203.0.113.0/24", excluded: str = f"{SERVER}/32") -> None:
        """The egress Proxy and a TransparentProxy intercepting intercept (destinations, as
        YAML's list items) on ports, except excluded on port 81."""
        self.directory.mkdir(exist_ok=True)
        (self.directory / "proxy.yaml").write_text(egress_proxy(self.ns))
        (self.directory / "tp.yaml").write_text(
            "apiVersion: bpfsync/v1\nkind: TransparentProxy\nmetadata: {name: apps}\nspec:\n"
            f"  id: 3\n  cgroup: {cgroup or self.apps}\n  proxy: egress\n"
            f"  intercept:\n    - destinations: [{intercept}]\n      ports: [{ports}]\n"
            f"  exclude:\n    - destinations: [{excluded}]\n      ports: [81]\n{extra}")

    def start(self) -> RunningDaemon:
        self.daemon = start_daemon(self.directory, self.pin_root, self.log)
        return self.daemon

    def client(self, port: int, msg: str = "hello", cgroup: str | None = None,
               mode: str = "client", *more: str, timeout: float = 60,
               host: str = SERVER) -> dict[str, Any]:
        """Run a client in the namespace, placed in cgroup first (None: the test's own)."""
        run = f"ip netns exec {self.ns} {sys.executable} {TPKIT} {mode} {host} {port} " + \
              " ".join([msg, *more])
        if cgroup is not None:  # join before `ip netns exec` remounts /sys
            procs = cgroups.fs_path(cgroup) / "cgroup.procs"
            run = f"sh -c 'echo $$ > {procs} && exec {run}'"
        out = sh(run, check=False, timeout=timeout)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def proxy_counters(self, **expect: int) -> dict[str, Any]:
        """The worker's counters once they show expect (it reports every 0.25 s)."""
        def current() -> dict[str, Any] | None:
            status = read_datapath_status(self.pin_root)
            c = status and status["proxies"].get("egress")
            return c if c and all(c[k] == v for k, v in expect.items()) else None

        try:
            return wait_for(current, 60)
        except AssertionError:
            raise AssertionError(f"counters never showed {expect}: "
                                 f"{read_datapath_status(self.pin_root)}") from None

    def tracked(self) -> list[Any]:
        """tp_conns read back with bpftool, not with bpfsync's reader."""
        out = sh(f"bpftool -j map dump pinned {self.pin_root}/maps/tp_conns")
        return json.loads(out.stdout)

    def attached(self, cgroup: str) -> list[str]:
        path = shlex.quote(str(cgroups.fs_path(cgroup)))  # (escaped names hold backslashes)
        out = sh(f"bpftool -j cgroup show {path}", check=False)
        return [p["name"] for p in json.loads(out.stdout.strip() or "[]")]




@contextmanager
def made_env(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    tag = owned.tag()[:6]
    base = owned.name("tp")
    e = Env(f"{base}-c", f"{base}-s", f"/{base}", pin_root, tmp_path / "desired",
            tmp_path / "daemon.log", f"btp{tag}c", f"btp{tag}s")
    try:
        veth_pair(e.ns, e.server_ns, e.device, e.peer, "203.0.113.1/24", f"{SERVER}/24")
        cgroups.fs_path(e.apps).mkdir(parents=True)
        e.procs.append(start_server(e.server_ns, SERVER, 80, 81))
        yield e
    finally:
        # Only what this test made: its daemon's process group, its namespaces, its own
        # cgroup tree; the pin_root fixture removes the pins (unpinning the links detaches
        # them) and this pin root's data-path cgroup, never the shared /bpfsync parent's
        # other children.
        if e.daemon is not None:
            e.daemon.cleanup()
        teardown(e.procs, (e.ns, e.server_ns))
        owned.remove_cgroup_tree(cgroups.fs_path(e.base))


@pytest.fixture
def env(tmp_path: Path, pin_root: Path) -> Iterator[Env]:
    with made_env(tmp_path, pin_root) as e:
        yield e


def test_cgroup_processes_are_intercepted_others_not(env: Env) -> None:
    env.write()
    env.start()
    assert env.attached(env.apps) == ["tp_sock_ops", "tp_connect4_3", "tp_connect6_3"]

    inside = env.client(80, cgroup=env.apps)
    assert intercepted(inside), inside
    assert inside["local"].startswith("127.0.0.1:")  # connected to the proxy's listener
    env.proxy_counters(originalDestination=1, noOriginalDestination=0)

    outside = env.client(80)  # the test's own cgroup: not intercepted
    assert not intercepted(outside), outside
    excluded = env.client(81, cgroup=env.apps)  # an exclude rule matches
    assert not intercepted(excluded), excluded
    env.proxy_counters(originalDestination=1)
    wait_for(lambda: env.tracked() == [], 60)  # the socket closed: its entry is gone
    assert env.daemon is not None
    status = env.daemon.status()
    assert status["resources"]["TransparentProxy"] == {"Synced": 1, "OutOfSync": 0,
                                                       "Error": 0}, status
    tps = status["transparentProxies"]
    assert tps["tracking"] == {"entries": 0, "capacity": 65536}
    counters = tps["resources"][0]["counters"]
    assert (counters["intercepted"], counters["excluded"], counters["answered"]) == (1, 1, 1)
    # the same, scraped from /metrics (promtool-clean), with the Proxy's traffic
    m = scrape(env.daemon)
    tp = 'bpfsync_transparent_proxy_connects_total{outcome="%s",transparent_proxy="apps"}'
    assert (m[tp % "intercepted"], m[tp % "excluded"], m[tp % "answered"]) == (1, 1, 1)
    assert m['bpfsync_resources{kind="TransparentProxy",state="Synced"}'] == 1
    assert m['bpfsync_map_fill_ratio{map="tp_conns"}'] == 0
    wait_for(lambda: scrape(env.daemon)['bpfsync_proxy_connections_total{proxy="egress"}'] >= 1)
    m = scrape(env.daemon)
    assert m['bpfsync_proxy_bytes_total{direction="in",proxy="egress"}'] > 0, m
    assert m['bpfsync_proxy_bytes_total{direction="out",proxy="egress"}'] > 0, m
    bpfsync = [sys.executable, "-m", "reconciler", "--pin-root", str(env.pin_root)]
    diff = subprocess.run([*bpfsync, "diff", str(env.directory)], capture_output=True,
                          text=True, timeout=120)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_whole_host_interception_does_not_loop_the_proxy(env: Env) -> None:
    """cgroup "/" holds every process, the data path too: its own outbound connection must
    not be intercepted again (it would loop back into itself)."""
    env.write(cgroup="/", ports="80")
    env.start()
    for cg in (None, env.apps):
        result = env.client(80, cgroup=cg)
        assert intercepted(result), result
    env.proxy_counters(originalDestination=2, connectFailed=0)
    wait_for(lambda: env.tracked() == [], 60)


def test_sequential_connections_leave_tracking_empty(env: Env) -> None:
    env.write(ports="80")
    env.start()
    # 20,000 > what the seed's never-cleaned maps held (~20,000 made it full); bounded in
    # time by the client (240 s) and the shell (300 s), far above the ~15 s it takes here
    n = 20_000
    result = env.client(80, str(n), env.apps, "many", "240", timeout=300)
    assert (result["done"], result["failed"]) == (n, 0), result
    env.proxy_counters(originalDestination=n)
    left = wait_for(lambda: (t := env.tracked()) is not None and len(t) <= 2 and [t], 60)[0]
    assert len(left) <= 2  # near empty: entries are deleted when the client socket closes


@pytest.fixture
def foreign_link(env: Env) -> Iterator[str]:
    """A connect4 program somebody else attached to the same cgroup (a link this test
    holds): bpfsync must leave it alone, whatever it adds or removes."""
    from bcc import BPF

    from reconciler.kernel import libbpf
    from reconciler.kernel.bcc_env import ensure_kernel_source

    ensure_kernel_source()
    bpf = BPF(text=b"int someone_else(struct bpf_sock_addr *ctx) { return 1; }")
    cg = os.open(cgroups.fs_path(env.apps), os.O_RDONLY | os.O_DIRECTORY)
    link = libbpf.link_create(bpf.load_func(b"someone_else", BPF.CGROUP_SOCK_ADDR,
                                            attach_type=10).fd, cg, 10)
    os.close(cg)
    try:
        yield "someone_else"
    finally:
        os.close(link)
        bpf.cleanup()


def test_restart_keeps_and_removal_ends_interception(env: Env, foreign_link: str) -> None:
    env.write(ports="80")
    daemon = env.start()
    assert sorted(env.attached(env.apps)) == sorted(
        [foreign_link, "tp_sock_ops", "tp_connect4_3", "tp_connect6_3"])
    assert intercepted(env.client(80, cgroup=env.apps))
    assert daemon.stop() == 0
    # Nothing torn down: the links stay; with no listener the connect is refused (fail
    # closed, whenProxyDown: refuse), never silently direct.
    assert len(env.attached(env.apps)) == 4
    refused = env.client(80, cgroup=env.apps)
    assert refused["errno"] == 1, refused  # EPERM from the connect4 program
    env.start()
    assert intercepted(env.client(80, cgroup=env.apps))

    # whenProxyDown: direct, an edit like any other: with the data path stopped, connects
    # now go straight to their destination.
    assert env.daemon is not None
    before = env.daemon.events()
    env.write(ports="80", extra="  whenProxyDown: direct\n")
    env.daemon.settled(before)
    assert env.daemon.stop() == 0
    assert not intercepted(env.client(80, cgroup=env.apps))
    env.start()
    assert intercepted(env.client(80, cgroup=env.apps))

    before = env.daemon.events()
    (env.directory / "tp.yaml").unlink()
    env.daemon.settled(before)
    wait_for(lambda: env.attached(env.apps) == [foreign_link], 60)  # only ours went
    assert not intercepted(env.client(80, cgroup=env.apps))
    assert env.attached(datapath_cgroup(env.pin_root)) == []
    links = os.listdir(env.pin_root / "links")
    assert not [x for x in links if x.startswith("cg:")], links


def test_declared_while_the_data_path_runs(env: Env) -> None:
    """The data path started without a TransparentProxy (listeners made outside its
    cgroup): once one is declared it moves into its cgroup and makes new listeners there, or
    SO_ORIGINAL_DST would go unanswered."""
    env.write(ports="80")
    tp = env.directory / "tp.yaml"
    text = tp.read_text()
    tp.unlink()
    env.start()
    assert not intercepted(env.client(80, cgroup=env.apps))
    assert env.daemon is not None
    before = env.daemon.events()
    tp.write_text(text)
    env.daemon.settled(before)
    mine = datapath_cgroup(env.pin_root)
    wait_for(lambda: str(env.daemon.proc.pid) in (  # type: ignore[union-attr]
        cgroups.fs_path(mine) / "cgroup.procs").read_text().split(), 15)
    result = wait_for(lambda: (r := env.client(80, cgroup=env.apps))["error"] is None
                      and intercepted(r) and r, 15)
    assert intercepted(result)
    env.proxy_counters(originalDestination=1, noOriginalDestination=0)


def test_excluded_cgroup_goes_direct_and_a_later_cgroup_is_waited_for(env: Env) -> None:
    """excludeCgroups: a child cgroup of the intercepted one (an agent) connects directly;
    a cgroup that does not exist yet is waited for (status says so) and attached once it
    appears, without an edit."""
    agent = f"{env.apps}/agent"
    later = f"{env.base}/later"
    cgroups.fs_path(agent).mkdir()
    env.write(ports="80", extra=f"  excludeCgroups: [{agent}]\n")
    env.start()
    assert intercepted(env.client(80, cgroup=env.apps))
    assert not intercepted(env.client(80, cgroup=agent))  # excluded, with its descendants
    counters = env.daemon.status()["transparentProxies"]["resources"][0]["counters"]
    assert counters["intercepted"] == 1, counters

    before = env.daemon.events()
    env.write(cgroup=later, ports="80")
    s = env.daemon.settled(before)
    assert env.attached(env.apps) == []  # moved away from apps
    waiting = " ".join(s["waiting"] + [r for o in s["outOfSync"] for r in o["reasons"]])
    assert later in waiting and "not found" in waiting, s
    cgroups.fs_path(later).mkdir()  # appears: the next resync (1 s) attaches there
    wait_for(lambda: env.attached(later) == ["tp_sock_ops", "tp_connect4_3", "tp_connect6_3"], 60)
    assert intercepted(env.client(80, cgroup=later))
    wait_for(lambda: not env.daemon.status()["waiting"], 60)


SERVER6 = "2001:db8::2"


def test_ipv6_sockets_cannot_walk_around_interception(env: Env) -> None:
    """An unprivileged process in the cgroup opens an AF_INET6 socket: to an IPv4-mapped
    address it is intercepted exactly like IPv4 (the server sees the proxy); to a native
    IPv6 address it goes direct or is refused, as `ipv6` says, and is counted either way."""
    sh(f"ip -n {env.ns} -6 addr add 2001:db8::1/64 dev {env.device} nodad")
    sh(f"ip -n {env.server_ns} -6 addr add {SERVER6}/64 dev {env.peer} nodad")
    env.procs.append(start_server(env.server_ns, SERVER6, 80))
    env.write()
    daemon = env.start()
    assert env.attached(env.apps) == ["tp_sock_ops", "tp_connect4_3", "tp_connect6_3"]

    mapped = env.client(80, cgroup=env.apps, mode="client6", host=f"::ffff:{SERVER}")
    assert intercepted(mapped), mapped  # the server saw the proxy's connection
    assert mapped["local"].startswith("127.0.0.1:")  # connected to the proxy's listener
    env.proxy_counters(originalDestination=1, noOriginalDestination=0)
    excluded = env.client(81, cgroup=env.apps, mode="client6", host=f"::ffff:{SERVER}")
    assert not intercepted(excluded), excluded  # exclude rules hold for mapped ones too

    native = env.client(80, cgroup=env.apps, mode="client6", host=SERVER6)
    assert native["error"] is None and native["reply"].startswith("2001:db8::1:"), native
    tp = wait_for(lambda: (r := daemon.status()["transparentProxies"]["resources"][0])
                  and r["counters"]["ipv6_direct"] == 1 and r)
    assert tp["ipv6"] == "direct" and tp["counters"]["intercepted"] == 1, tp

    events = daemon.events()
    env.write(extra="  ipv6: refuse\n")
    daemon.settled(events)
    refused = env.client(80, cgroup=env.apps, mode="client6", host=SERVER6)
    assert refused["errno"] == 1, refused  # EPERM: the connect never left
    tp = wait_for(lambda: (r := daemon.status()["transparentProxies"]["resources"][0])
                  and r["counters"]["ipv6_refused"] == 1 and r)
    assert tp["ipv6"] == "refuse", tp
    still = env.client(80, cgroup=env.apps, mode="client6", host=f"::ffff:{SERVER}")
    assert intercepted(still), still  # IPv4, mapped or not, is not refused
    outside = env.client(80, mode="client6", host=SERVER6)  # another cgroup: untouched
    assert outside["error"] is None, outside
