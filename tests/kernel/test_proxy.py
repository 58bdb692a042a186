"""Port-steering proxy with real connections: sk_lookup steering, the supervised data path,
round-robin, health checks, half-close, limits, live changes and restarts, in a namespace.

    namespace P: lo up, 203.0.113.0/24 routed locally (the steered destinations),
                 backends b1..b3 on 192.0.2.1-3 port 9000, an unsteered server on 203.0.113.1:9999
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.conftest import BPFFS, bpffs_entries, bpfsync, bpftool_dump
from tests.kernel.daemonkit import wait_for as wait_until
from tests.kernel.topology import sh

TCPKIT = str(Path(__file__).with_name("tcpkit.py"))
VIP = "203.0.113.7"
BACKENDS = {"b1": "192.0.2.1", "b2": "192.0.2.2", "b3": "192.0.2.3"}
BACKEND_PORT = 9000


def proxy_doc(name: str = "web", pid: int = 1, ports: str = '[80, "8000-8049"]',
              backends: tuple[str, ...] = ("b1", "b2", "b3"), extra: str = "",
              netns: str = "") -> str:
    listed = ", ".join(f'"{BACKENDS[b]}:{BACKEND_PORT}"' for b in backends)
    return (f"apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {{name: {name}}}\nspec:\n"
            f"  id: {pid}\n  netns: {netns}\n  ports: {ports}\n"
            f"  destinations: [203.0.113.0/24]\n  backends: [{listed}]\n"
            f"  healthCheck: {{intervalSeconds: 0.2, timeoutSeconds: 0.1, rise: 2, fall: 2}}\n"
            + extra)


class ProxyNet:
    def __init__(self, tmp: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = f"bsp{tag}"
        self.root = BPFFS / f"bpfsync-test-proxy-{tag}"
        self.dir = tmp / "desired"
        self.dir.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.backends: dict[str, subprocess.Popen] = {}
        self.dp: subprocess.Popen | None = None

    def setup(self) -> None:
        sh(f"ip netns add {self.ns}")
        sh(f"ip -n {self.ns} link set lo up")
        sh(f"ip -n {self.ns} route add local 203.0.113.0/24 dev lo")
        for addr in BACKENDS.values():
            sh(f"ip -n {self.ns} addr add {addr}/32 dev lo")

    def spawn(self, *args: object, stdout: Any = subprocess.PIPE) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, "/usr/bin/python3", TCPKIT,
                              *map(str, args)], stdout=stdout, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def start_backend(self, name: str) -> None:
        p = self.spawn("serve", f"{name}@{BACKENDS[name]}:{BACKEND_PORT}")
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        self.backends[name] = p

    def stop_backend(self, name: str) -> None:
        p = self.backends.pop(name)
        p.kill()
        p.wait(10)

    def client(self, *args: object, timeout: float = 120) -> dict[str, Any]:
        r = sh(f"ip netns exec {self.ns} /usr/bin/python3 {TCPKIT} " + " ".join(map(str, args)),
               check=False) if timeout <= 60 else subprocess.run(
            ["ip", "netns", "exec", self.ns, "/usr/bin/python3", TCPKIT, *map(str, args)],
            capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def write(self, text: str, file: str = "proxy.yaml") -> None:
        (self.dir / file).write_text(text.replace("netns: \n", f"netns: {self.ns}\n"))

    def apply(self, *extra: str) -> str:
        r = bpfsync("apply", str(self.dir), *extra, pin_root=self.root)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def start_datapath(self) -> None:
        self.dp = subprocess.Popen([sys.executable, "-m", "reconciler", "--pin-root",
                                    str(self.root), "datapath", "--netns", self.ns],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.procs.append(self.dp)
        wait_until(lambda: self.proxies() and all(
            p["status"].get("backends") for p in self.proxies()))

    def proxies(self) -> list[dict[str, Any]]:
        r = bpfsync("get", "proxies", "-o", "json", pin_root=self.root)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def status(self, name: str = "web") -> dict[str, Any]:
        return next(p for p in self.proxies() if p["metadata"]["name"] == name)["status"]

    def healthy(self, name: str = "web") -> dict[str, bool]:
        """Backend health as the worker last reported it (read directly: no CLI latency)."""
        try:
            doc = json.loads((run_dir(self.root) / "datapath.json").read_text())
        except (OSError, ValueError):
            return {}
        proxy = doc["proxies"].get(name, {"backends": []})
        return {b["address"]: b["healthy"] for b in proxy["backends"]}

    def worker_pid(self) -> int | None:
        return json.loads((run_dir(self.root) / "supervisor.json").read_text())["workerPid"]

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM) if p is self.dp else p.kill()
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        sh(f"ip netns del {self.ns}", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(run_dir(self.root), ignore_errors=True)


def run_dir(root: Path) -> Path:
    from reconciler.supervisor import run_dir as rd

    return rd(root)


@pytest.fixture
def pn(tmp_path: Path) -> Iterator[ProxyNet]:
    p = ProxyNet(tmp_path)
    try:
        p.setup()
        for name in BACKENDS:
            p.start_backend(name)
        yield p
    finally:
        p.cleanup()


def test_fifty_steered_ports_reach_one_listener_and_backends(pn: ProxyNet) -> None:
    direct = pn.spawn("serve", "direct@203.0.113.1:9999")
    assert direct.stdout is not None and direct.stdout.readline().strip() == "ready"
    pn.write(proxy_doc(ports='["8000-8049"]'))
    out = pn.apply()
    assert "51 created" in out  # 1 configuration + 50 steering entries
    pn.start_datapath()
    seen = pn.client("who", VIP, "8000-8049", 150)
    assert seen["errors"] == [] and sum(seen["names"].values()) == 150
    assert set(seen["names"]) == {"b1", "b2", "b3"}
    echo = pn.client("echo", VIP, 8025, 3 << 20)
    assert echo["match"] and echo["received"] == 3 << 20
    # An unsteered port on a steered prefix, and a steered port elsewhere, are not touched.
    assert pn.client("who", "203.0.113.1", "9999", 3)["names"] == {"direct": 3}
    st = pn.status()
    assert st["steering"]["entries"] == 50
    assert st["counters"]["steered"] >= 151 and st["counters"]["noListener"] == 0
    assert st["proxied"] >= 151
    # The independent view: bpftool reads 50 trie entries, all pointing at slot 1.
    dump = bpftool_dump(pn.root / "maps" / "ps_dest")
    assert len(dump) == 50 and {v[:4] for v in dump.values()} == {(1).to_bytes(4, "little")}


def test_round_robin_is_even_and_health_checks_take_backends_out_and_back(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath()
    seen = pn.client("who", VIP, 80, 300)
    assert seen["errors"] == []
    assert all(99 <= n <= 101 for n in seen["names"].values()), seen
    pn.stop_backend("b2")
    t0 = time.monotonic()
    wait_until(lambda: pn.healthy().get(BACKENDS["b2"]) is False, 5, 0.05)
    took = time.monotonic() - t0
    # fall x interval, plus up to one interval to the next check and the 0.25 s report period
    assert took < 2 * 0.2 + 0.2 + 0.5, took
    seen = pn.client("who", VIP, 80, 60)
    assert seen["errors"] == [] and seen["names"] == {"b1": 30, "b3": 30}
    pn.start_backend("b2")
    wait_until(lambda: pn.healthy().get(BACKENDS["b2"]) is True, 5, 0.05)
    # Every backend down: each connection is closed at once, and counted.
    for name in ("b1", "b2", "b3"):
        pn.stop_backend(name)
    wait_until(lambda: pn.healthy() and not any(pn.healthy().values()), 5, 0.05)
    t0 = time.monotonic()
    r = pn.client("who", VIP, 80, 20)
    assert time.monotonic() - t0 < 5
    assert r["names"] in ({}, {"": 20}) or sum(r["names"].values()) + len(r["errors"]) == 20
    assert "b1" not in r["names"]
    wait_until(lambda: pn.status()["noBackend"] >= 20, 5)


def test_half_close_large_transfer_slow_reader_and_connection_limit(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", extra="  maxConnections: 2\n  idleTimeoutSeconds: 30\n"))
    pn.apply()
    pn.start_datapath()
    # Half-close: the client's FIN reaches the backend, which still sends everything back.
    big = pn.client("echo", VIP, 80, 64 << 20)
    assert big["match"] and big["received"] == 64 << 20
    # A reader that stops reading: the proxy does not buffer the download.
    before = pn.status()["bytesOut"]
    slow = pn.spawn("down", VIP, 80, 256 << 20, 3)
    time.sleep(2)
    buffered = pn.status()["bytesOut"] - before
    assert buffered < 24 << 20, buffered  # socket buffers and one relay buffer, not 256 MiB
    out, err = slow.communicate(timeout=60)
    assert json.loads(out) == {"received": 256 << 20, "match": True}, err
    # Limit of 2: a third connection waits in the listen queue until one of them ends.
    holds = [pn.spawn("echo", VIP, 80, 1 << 16, 3) for _ in range(2)]
    time.sleep(0.8)
    assert pn.status()["active"] == 2
    t0 = time.monotonic()
    third = pn.client("who", VIP, 80, 1)
    waited = time.monotonic() - t0
    assert third["errors"] == [] and sum(third["names"].values()) == 1
    assert waited > 1.0, waited  # served only after a held connection ended
    for h in holds:
        assert json.loads(h.communicate(timeout=30)[0])["match"]


def test_backend_change_reaches_new_connections_without_breaking_established(
        pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", backends=("b1", "b2")))
    pn.apply()
    pn.start_datapath()
    long = pn.spawn("echo", VIP, 80, 8 << 20, 6)  # a 6-second transfer through b1 or b2
    stream = pn.spawn("stream", VIP, 80, 5, 0.01)
    time.sleep(1.5)
    pn.write(proxy_doc(ports="[80]", backends=("b3",)))
    out = pn.apply()
    assert "1 updated" in out and "(1 map writes" in out  # only the configuration entry
    changed = time.monotonic()
    time.sleep(1.2)  # within a second new connections use the new set
    after = pn.client("who", VIP, 80, 10)
    assert after["names"] == {"b3": 10}, (after, time.monotonic() - changed)
    s = json.loads(stream.communicate(timeout=30)[0])
    assert s["errors"] == [] and s["attempts"] > 50
    assert json.loads(long.communicate(timeout=30)[0]) == {
        "sent": 8 << 20, "received": 8 << 20, "match": True}


def test_kill_9_of_the_worker_refuses_no_connection(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath()
    first = pn.worker_pid()
    stream = pn.spawn("stream", VIP, 80, 6, 0.005)
    time.sleep(1)
    for _ in range(2):  # twice: the second restart comes after a backoff
        pid = pn.worker_pid()
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: pn.worker_pid() not in (None, p), 10, 0.05)
        time.sleep(1)
    s = json.loads(stream.communicate(timeout=60)[0])
    # Nothing is refused: the listener outlives the worker, connections made while no worker
    # runs wait in its queue. Only the connection being relayed at the moment of a kill dies
    # with the worker that held it (at most one per kill: the client is sequential).
    assert not [e for e in s["errors"] if "Refused" in e], s["errors"]
    # (its sockets are closed by the kernel: the client sees a reset or an early EOF)
    assert len(s["errors"]) <= 2 and all(
        "reset" in e or "Broken" in e or e == "empty reply" for e in s["errors"]), s
    assert s["attempts"] > 100 and set(s["names"]) == {"b1", "b2", "b3"}
    sup = json.loads((run_dir(pn.root) / "supervisor.json").read_text())
    assert sup["restarts"] == 2 and sup["workerPid"] != first
    assert sup["lastExit"] == "signal 9"


def test_removing_the_proxy_removes_steering_listener_and_link(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.write(proxy_doc(name="api", pid=2, ports="[81]"), "api.yaml")
    pn.apply()
    pn.start_datapath()
    assert pn.client("who", VIP, 81, 3)["errors"] == []
    links = [e for e in bpffs_entries(pn.root) if e.startswith("links/")]
    assert links == [f"links/sk_lookup:{pn.ns}"]
    (pn.dir / "api.yaml").unlink()
    out = pn.apply()
    assert "2 deleted" in out
    assert len(bpftool_dump(pn.root / "maps" / "ps_dest")) == 1
    # Port 81 is no longer steered: nothing listens there, so the connection is refused.
    wait_until(lambda: "api" not in {p["metadata"]["name"] for p in pn.proxies()})
    r = pn.client("who", VIP, 81, 1)
    assert "ConnectionRefusedError" in r["errors"][0]
    assert pn.client("who", VIP, 80, 3)["errors"] == []
    sup = json.loads((run_dir(pn.root) / "supervisor.json").read_text())
    assert list(sup["listeners"]) == ["1"]  # slot 2's listener closed
    # The last Proxy goes: the link goes with it; the data path keeps running.
    (pn.dir / "proxy.yaml").unlink()
    pn.apply("--allow-empty")
    assert [e for e in bpffs_entries(pn.root) if e.startswith("links/")] == []
    assert pn.dp is not None and pn.dp.poll() is None


def test_steering_survives_the_data_path_and_fails_closed_without_it(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    # Before any data path: a steered destination is refused, never passed on to another
    # listener on the same address and port.
    squatter = pn.spawn("serve", f"squatter@{VIP}:80")
    assert squatter.stdout is not None and squatter.stdout.readline().strip() == "ready"
    r = pn.client("who", VIP, 80, 2)
    assert "squatter" not in r["names"] and len(r["errors"]) == 2
    assert pn.status()["counters"]["noListener"] >= 2
    pn.start_datapath()
    assert pn.client("who", VIP, 80, 3)["errors"] == []
    assert pn.dp is not None
    pn.dp.send_signal(signal.SIGTERM)
    assert pn.dp.wait(20) == 0
    # The link and tables stay: diff is clean, and the data path picks up where it left.
    assert bpfsync("diff", str(pn.dir), pin_root=pn.root).returncode == 0
    pn.start_datapath()
    assert pn.client("who", VIP, 80, 3)["errors"] == []


def test_namespace_recreated_gets_a_new_link(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    for p in list(pn.backends):
        pn.stop_backend(p)
    sh(f"ip netns del {pn.ns}")
    pn.setup()  # same name, new namespace: the pinned link points at a dead one
    r = bpfsync("diff", str(pn.dir), pin_root=pn.root)
    assert r.returncode == 2 and "namespace deleted or recreated" in r.stdout, r.stdout
    out = pn.apply()
    assert "1 attachment" not in out and "2 attachment changes" in out
    assert bpfsync("diff", str(pn.dir), pin_root=pn.root).returncode == 0
    assert [e for e in bpffs_entries(pn.root) if e.startswith("links/")] == [
        f"links/sk_lookup:{pn.ns}"]
    # Steering is live in the new namespace: with no data path, the connection is refused
    # by the program (counted), not by the normal lookup.
    before = pn.status()["counters"]["noListener"]
    assert "ConnectionRefusedError" in pn.client("who", VIP, 80, 1)["errors"][0]
    assert pn.status()["counters"]["noListener"] == before + 1


def test_daemon_killed_leaves_proxies_serving_and_a_new_daemon_takes_over(
        pn: ProxyNet, tmp_path: Path) -> None:
    from tests.kernel.daemonkit import RunningDaemon

    pn.write(proxy_doc(ports="[80]"))
    daemons = [RunningDaemon(pn.dir, pn.root, tmp_path / f"d{i}.log") for i in range(2)]
    try:
        daemons[0].start()
        wait_until(lambda: pn.healthy() and all(pn.healthy().values()))
        orphan = pn.worker_pid()
        assert orphan
        stream = pn.spawn("stream", VIP, 80, 7, 0.005)
        time.sleep(1)
        daemons[0].kill9()  # a crash: no clean stop
        time.sleep(2)  # no daemon: the worker (now an orphan) keeps serving its listener
        assert Path(f"/proc/{orphan}").exists()
        daemons[1].start()
        wait_until(lambda: pn.worker_pid() not in (None, orphan), 20)

        def gone() -> bool:
            try:
                return Path(f"/proc/{orphan}/stat").read_text().split()[2] == "Z"
            except OSError:
                return True

        wait_until(gone, 20)  # steering moved to the new listener; it drained and exited
        s = json.loads(stream.communicate(timeout=60)[0])
        assert s["errors"] == [] and s["attempts"] > 100, s
        assert set(s["names"]) == {"b1", "b2", "b3"}
        assert "steering moved to a new data path" in daemons[0].log()
        assert daemons[1].status()["dataPath"]["state"] == "running"
    finally:
        for d in daemons:
            d.cleanup()
