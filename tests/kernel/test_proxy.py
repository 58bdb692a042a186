"""Port-steering proxy with real connections: sk_lookup steering, the supervised data path,
round-robin, health checks, half-close, limits, live changes and restarts, in a namespace.

    namespace P: lo up, 203.0.113.0/24 routed locally (the steered destinations),
                 backends b1..b3 on 192.0.2.1-3 port 9000, an unsteered server on 203.0.113.1:9999
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.datapath.supervisor import read_datapath_status
from tests.kernel import owned
from tests.kernel.conftest import bpffs_entries, bpfsync, bpftool_dump
from tests.kernel.daemonkit import cpu_seconds
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
            # margins: a check fails only when a connect takes 0.5 s, twice in a row
            f"  healthCheck: {{intervalSeconds: 0.5, timeoutSeconds: 0.5, rise: 2, fall: 2}}\n"
            + extra)


class ProxyNet:
    def __init__(self, tmp: Path) -> None:
        self.ns = owned.name("proxy")
        self.root = owned.pin_root("proxy")
        self.tmp = tmp
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

    def spawn(self, *args: object, stdout: Any = subprocess.PIPE, stdin: Any = None,
              timeout: float | None = None) -> subprocess.Popen:
        env = {**os.environ, "TCPKIT_TIMEOUT": str(timeout)} if timeout else None
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, "/usr/bin/python3", TCPKIT,
                              *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                             stdin=stdin, text=True, env=env)
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
        r = subprocess.run(["ip", "netns", "exec", self.ns, "/usr/bin/python3", TCPKIT,
                            *map(str, args)], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def hold(self) -> tuple[subprocess.Popen, str]:
        """A connection held open through the proxy (until release()); its backend's name."""
        p = self.spawn("hold", VIP, 80, stdin=subprocess.PIPE)
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line, p.stderr.read() if p.stderr else ""
        return p, json.loads(line)["held"]

    @staticmethod
    def release(p: subprocess.Popen) -> dict[str, Any]:
        out, _ = p.communicate("\n", timeout=60)
        return json.loads(out.splitlines()[-1])

    def write(self, text: str, file: str = "proxy.yaml") -> None:
        (self.dir / file).write_text(text.replace("netns: \n", f"netns: {self.ns}\n"))

    def apply(self, *extra: str, counter: Any = None) -> str:
        r = bpfsync("apply", str(self.dir), *extra, pin_root=self.root, counter=counter)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def start_datapath(self, nofile: int | None = None, workers: int = 2,
                       join: str | None = None) -> None:
        """nofile: a descriptor limit (soft and hard) for the data path and its workers;
        workers: how many (stated, so that the tests do not depend on the CPUs); join:
        BPFSYNC_WORKER_JOIN ("0": every worker accepts, for tests of what holds across
        workers; datapath/standby.py)."""
        log = open(self.tmp / "datapath.log", "ab")  # noqa: SIM115 - the child owns it
        limit = ["prlimit", f"--nofile={nofile}:{nofile}", "--"] if nofile else []
        env = {**os.environ, **({"BPFSYNC_WORKER_JOIN": join} if join is not None else {})}
        self.dp = subprocess.Popen([*limit, sys.executable, "-m", "reconciler", "--pin-root",
                                    str(self.root), "datapath", "--netns", self.ns,
                                    "--workers", str(workers)],
                                   stdout=log, stderr=log, start_new_session=True, env=env)
        log.close()
        self.procs.append(self.dp)
        wait_until(lambda: (r := self.reports()) and all(
            p["backends"] and all(b["healthy"] for b in p["backends"]) for p in r.values()), 60)

    def start_datapath_with_hosts(self, hosts: Path) -> None:
        """The data path in a mount namespace of its own where hosts is /etc/hosts (the
        host's own is never touched)."""
        inner = (f"mount --bind {hosts} /etc/hosts && exec {sys.executable} -m reconciler "
                 f"--pin-root {self.root} datapath --netns {self.ns}")
        log = open(self.tmp / "datapath.log", "ab")  # noqa: SIM115 - the child owns it
        self.dp = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                    "-c", inner], stdout=log, stderr=log,
                                   start_new_session=True)
        log.close()
        self.procs.append(self.dp)

    def proxies(self) -> list[dict[str, Any]]:
        r = bpfsync("get", "proxies", "-o", "json", pin_root=self.root)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def status(self, name: str = "web") -> dict[str, Any]:
        return next(p for p in self.proxies() if p["metadata"]["name"] == name)["status"]

    def reports(self) -> dict[str, dict[str, Any]]:
        """Every Proxy as the running worker last reported it (every 0.25 s), read directly:
        no CLI latency. Each carries the report's time as "at"."""
        doc = read_datapath_status(self.root)
        if not doc:
            return {}
        return {name: {**p, "at": doc["time"], "pid": doc["pid"]}
                for name, p in doc["proxies"].items()}

    def report(self, name: str = "web") -> dict[str, Any]:
        return self.reports().get(name) or {}

    def wait_report(self, check: Any, *, name: str = "web", seconds: float = 60
                    ) -> dict[str, Any]:
        """The first report of the worker for which check(report) holds."""
        return wait_until(lambda: (r := self.report(name)) and check(r) and r, seconds)

    def healthy(self, name: str = "web") -> dict[str, bool]:
        return {b["address"]: b["healthy"] for b in self.report(name).get("backends", [])}

    def worker_pid(self) -> int | None:
        return self.supervisor()["workerPid"]

    def supervisor(self) -> dict[str, Any]:
        return json.loads((run_dir(self.root) / "supervisor.json").read_text())

    def queued(self) -> int:
        """Connections waiting in the proxies' listen queues (ss's Recv-Q of the listeners
        on 127.0.0.1: the kernel's view, not the proxy's)."""
        out = sh(f"ip netns exec {self.ns} ss -Hltn src 127.0.0.1").stdout
        return sum(int(line.split()[1]) for line in out.splitlines() if line.strip())

    def stop_file(self) -> Path:
        return self.tmp / f"stop-{owned.tag()}"

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM) if p is self.dp else p.kill()
            try:
                p.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
        if self.dp is not None:  # its worker, should it outlive the supervisor
            owned.kill_process_group(self.dp.pid)
        owned.delete_netns(self.ns)
        owned.remove_pin_root(self.root)


def run_dir(root: Path) -> Path:
    from reconciler.datapath.supervisor import run_dir as rd

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
    assert "52 created" in out  # its name, 1 configuration + 50 steering entries
    pn.start_datapath()
    seen = pn.client("who", VIP, "8000-8049", 150)
    assert seen["errors"] == [] and sum(seen["names"].values()) == 150
    assert set(seen["names"]) == {"b1", "b2", "b3"}
    echo = pn.client("echo", VIP, 8025, 3 << 20)
    assert echo["match"] and echo["received"] == 3 << 20
    # An unsteered port on a steered prefix, and a steered port elsewhere, are not touched.
    assert pn.client("who", "203.0.113.1", "9999", 3)["names"] == {"direct": 3}
    # The BPF counters are live; the worker's part comes from its report (every 0.25 s), so
    # wait for a report that has seen all 151 connections.
    st = wait_until(lambda: (x := pn.status())["proxied"] >= 151 and x, 60)
    assert st["steering"]["entries"] == 50
    assert st["counters"]["steered"] >= 151 and st["counters"]["noListener"] == 0
    age = time.time() - datetime.fromisoformat(st["reportedAt"]).timestamp()
    assert -1 < age < 30, st["reportedAt"]  # the report says when it was written
    # The independent view: bpftool reads 50 trie entries, all pointing at slot 1.
    dump = bpftool_dump(pn.root / "maps" / "ps_dest")
    assert len(dump) == 50 and {v[:4] for v in dump.values()} == {(1).to_bytes(4, "little")}


def test_round_robin_is_even_and_health_checks_take_backends_out_and_back(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath(join="0")  # both workers accept: the rotation is theirs together
    seen = pn.client("who", VIP, 80, 300)
    assert seen["errors"] == []
    assert all(99 <= n <= 101 for n in seen["names"].values()), seen
    pn.stop_backend("b2")
    wait_until(lambda: pn.healthy().get(BACKENDS["b2"]) is False, 60)
    seen = pn.client("who", VIP, 80, 60)
    assert seen["errors"] == [] and seen["names"] == {"b1": 30, "b3": 30}
    pn.start_backend("b2")
    wait_until(lambda: pn.healthy().get(BACKENDS["b2"]) is True, 60)
    # Every backend down: each connection is closed at once, and counted.
    for name in ("b1", "b2", "b3"):
        pn.stop_backend(name)
    wait_until(lambda: pn.healthy() and not any(pn.healthy().values()), 60)
    r = pn.client("who", VIP, 80, 20)
    assert r["names"] in ({}, {"": 20}) or sum(r["names"].values()) + len(r["errors"]) == 20
    assert "b1" not in r["names"]
    pn.wait_report(lambda x: x["noBackend"] >= 20)


def _tcp_max(which: str) -> int:
    """The largest a TCP socket's receive (rmem) or send (wmem) buffer grows to here."""
    return int(Path(f"/proc/sys/net/ipv4/tcp_{which}").read_text().split()[2])


def _bytes_out_settled(pn: ProxyNet, before: int) -> int:
    """bytesOut once it stopped growing over four consecutive reports (the relay is held
    back by the client that does not read)."""
    history: list[tuple[float, int]] = []

    def settled() -> int | None:
        r = pn.report()
        if r and (not history or r["at"] != history[-1][0]):
            history.append((r["at"], r["bytesOut"]))
        last = [b for _, b in history[-4:]]
        return last[0] if len(last) == 4 and len(set(last)) == 1 and last[0] > before else None

    return wait_until(settled, 60)


def test_half_close_large_transfer_slow_reader_and_connection_limit(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", extra="  maxConnections: 2\n  idleTimeoutSeconds: 30\n"))
    pn.apply()
    pn.start_datapath(join="0")  # both workers accept: the limit is theirs together
    # Half-close: the client's FIN reaches the backend, which still sends everything back.
    big = pn.client("echo", VIP, 80, 64 << 20)
    assert big["match"] and big["received"] == 64 << 20
    # A reader that stops reading: the proxy does not buffer the download. (The count
    # before it: once the reports, written periodically, include all of the echo's bytes; a
    # report from mid-echo made its remaining megabytes look buffered, 51 MB > 46 MB.)
    before = pn.wait_report(lambda r: r["active"] == 0 and r["bytesOut"] >= 64 << 20
                            )["bytesOut"]
    slow = pn.spawn("down", VIP, 80, 256 << 20, "stdin", stdin=subprocess.PIPE)
    buffered = _bytes_out_settled(pn, before) - before
    # what may sit in socket buffers: the client's receive buffer (up to tcp_rmem's maximum:
    # 32 MiB on newer kernels, 6 MiB on older ones; 24 MiB was once the bound here and failed),
    # the proxy's send buffer (tcp_wmem's), relay and pipe buffers (8 MiB): never the 256 MiB
    assert buffered < _tcp_max("rmem") + _tcp_max("wmem") + (8 << 20), buffered
    out, err = slow.communicate("go\n", timeout=120)
    assert json.loads(out) == {"received": 256 << 20, "match": True}, err
    # Limit of 2: a third connection waits in the listen queue until one of them ends.
    holds = [pn.hold()[0] for _ in range(2)]
    pn.wait_report(lambda r: r["active"] == 2)
    third = pn.spawn("who", VIP, 80, 1, timeout=120)
    wait_until(lambda: pn.queued() >= 1, 60)  # the kernel holds it; the proxy did not take it
    assert third.poll() is None and pn.report()["active"] == 2
    assert pn.release(holds[0])["error"] is None
    out, err = third.communicate(timeout=120)
    result = json.loads(out)
    assert result["errors"] == [] and sum(result["names"].values()) == 1, (result, err)
    assert pn.release(holds[1])["error"] is None


def _established_to(pn: ProxyNet, backend: str) -> int:
    """TCP connections to backend established now (ss: the kernel's view, not the proxy's)."""
    out = sh(f"ip netns exec {pn.ns} ss -Htn state established dst {backend}:{BACKEND_PORT}")
    return len([line for line in out.stdout.splitlines() if line.strip()])


def test_preconnect_clients_get_backend_connections_opened_before_they_came(
        pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", backends=("b1",), extra="  preconnect: 2\n"))
    pn.apply()
    pn.start_datapath()  # two workers, one accepting: it alone keeps connections ahead
    b1 = BACKENDS["b1"]
    pn.wait_report(lambda r: r["preconnected"] == 2)
    wait_until(lambda: _established_to(pn, b1) == 2, 60)  # before any client came
    seen = pn.client("who", VIP, 80, 20)
    assert seen == {"names": {"b1": 20}, "errors": []}
    report = pn.wait_report(lambda r: r["proxied"] == 20 and r["preconnected"] == 2)
    assert report["preconnectUsed"] >= 1 and report["preconnectDropped"] == 0, report
    wait_until(lambda: _established_to(pn, b1) == 2, 60)  # replaced, the clients' closed
    status = pn.status()
    assert status["preconnected"] == 2 and status["preconnectUsed"] == report["preconnectUsed"]
    # The backend goes: what was kept for it is dropped, and nothing is kept until it is back.
    pn.stop_backend("b1")
    pn.wait_report(lambda r: r["preconnected"] == 0 and r["backends"][0]["healthy"] is False)
    pn.start_backend("b1")
    pn.wait_report(lambda r: r["preconnected"] == 2)
    wait_until(lambda: _established_to(pn, b1) == 2, 60)


def test_backend_change_reaches_new_connections_without_breaking_established(
        pn: ProxyNet, write_counter: Any) -> None:
    pn.write(proxy_doc(ports="[80]", backends=("b1", "b2")))
    pn.apply()
    pn.start_datapath()
    held, was = pn.hold()  # an established connection through b1 or b2
    stop = pn.stop_file()
    stream = pn.spawn("stream", VIP, 80, 300, 0.01, stop)
    first = pn.report()["proxied"]
    pn.wait_report(lambda r: r["proxied"] >= first + 5)  # the stream is flowing
    pn.write(proxy_doc(ports="[80]", backends=("b3",)))
    out = pn.apply(counter=write_counter)
    assert "1 updated" in out
    assert write_counter.counts() == (1, 0)  # only the configuration entry, counted in bpf(2)
    # the worker follows the table; from its next report on, new connections use b3 only
    pn.wait_report(lambda r: [b["backend"] for b in r["backends"]] ==
                   [f"{BACKENDS['b3']}:{BACKEND_PORT}"])
    after = pn.client("who", VIP, 80, 10)
    assert after["names"] == {"b3": 10}, after
    stop.touch()
    s = json.loads(stream.communicate(timeout=60)[0])
    assert s["errors"] == [] and s["attempts"] > 5, s
    kept = pn.release(held)  # it kept its backend through the change, and ends cleanly
    assert was in ("b1", "b2") and kept["error"] is None and kept["name"] == was, kept


def test_kill_9_of_the_worker_refuses_no_connection(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath()
    first = pn.worker_pid()
    stop = pn.stop_file()
    stream = pn.spawn("stream", VIP, 80, 300, 0.005, stop)
    pn.wait_report(lambda r: r["proxied"] >= 10)
    for _ in range(2):  # twice: the second restart comes after a backoff
        pid = pn.worker_pid()
        assert pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda p=pid: pn.worker_pid() not in (None, p), 60)
        # the new worker reports, and serves the stream (which never stopped connecting)
        pn.wait_report(lambda r, p=pid: r["pid"] != p and r["proxied"] >= 10)
    stop.touch()
    s = json.loads(stream.communicate(timeout=60)[0])
    # Nothing is refused: the listener outlives the worker, connections made while no worker
    # runs wait in its queue. Only the connection being relayed at the moment of a kill dies
    # with the worker that held it (at most one per kill: the client is sequential).
    assert not [e for e in s["errors"] if "Refused" in e], s["errors"]
    # (its sockets are closed by the kernel: the client sees a reset or an early EOF)
    assert len(s["errors"]) <= 2 and all(
        "reset" in e or "Broken" in e or e == "empty reply" for e in s["errors"]), s
    assert s["attempts"] > 30 and set(s["names"]) == {"b1", "b2", "b3"}
    sup = pn.supervisor()
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
    assert "3 deleted" in out  # steering, configuration, name
    assert len(bpftool_dump(pn.root / "maps" / "ps_dest")) == 1
    # Port 81 is no longer steered: nothing listens there, so the connection is refused.
    wait_until(lambda: "api" not in {p["metadata"]["name"] for p in pn.proxies()})
    r = pn.client("who", VIP, 81, 1)
    assert "ConnectionRefusedError" in r["errors"][0]
    assert pn.client("who", VIP, 80, 3)["errors"] == []
    wait_until(lambda: list(pn.supervisor()["listeners"]) == ["1"])  # slot 2's closed
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
    owned.delete_netns(pn.ns)
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
        stop = pn.stop_file()
        stream = pn.spawn("stream", VIP, 80, 300, 0.005, stop)
        pn.wait_report(lambda r: r["proxied"] >= 10)
        daemons[0].kill9()  # a crash: no clean stop
        # no daemon: the worker (now an orphan) keeps serving its listener; the BPF counter
        # of steered connections keeps growing (read from the kernel, not from the worker)
        steered = pn.status()["counters"]["steered"]
        wait_until(lambda: pn.status()["counters"]["steered"] >= steered + 20, 60)
        assert Path(f"/proc/{orphan}").exists()
        daemons[1].start()
        wait_until(lambda: pn.worker_pid() not in (None, orphan), 60)

        def gone() -> bool:
            try:
                return Path(f"/proc/{orphan}/stat").read_text().split()[2] == "Z"
            except OSError:
                return True

        wait_until(gone, 60)  # steering moved to the new listener; it drained and exited
        stop.touch()
        s = json.loads(stream.communicate(timeout=60)[0])
        assert s["errors"] == [] and s["attempts"] > 30, s
        assert set(s["names"]) == {"b1", "b2", "b3"}
        assert "steering moved to a new data path" in daemons[0].log()
        assert daemons[1].status()["dataPath"]["state"] == "running"
    finally:
        for d in daemons:
            d.cleanup()


def test_connect_timeout_retries_on_another_backend(pn: ProxyNet) -> None:
    """A backend whose connects hang (health checks off, so round-robin keeps picking it):
    each such pick gives up after connectTimeoutSeconds and the connection is retried on
    another backend; no client sees a failure."""
    stuck = pn.spawn("stuck", f"{BACKENDS['b2']}:9001")
    assert stuck.stdout is not None and stuck.stdout.readline().strip() == "ready"
    pn.write(proxy_doc(ports="[80]", backends=("b1",)).replace(
        f'"{BACKENDS["b1"]}:{BACKEND_PORT}"',
        f'"{BACKENDS["b1"]}:{BACKEND_PORT}", "{BACKENDS["b2"]}:9001"').replace(
        "  healthCheck: {intervalSeconds: 0.5, timeoutSeconds: 0.5, rise: 2, fall: 2}\n",
        "  healthCheck: {enabled: false}\n  connectTimeoutSeconds: 0.5\n"))
    pn.apply()
    pn.start_datapath()
    seen = pn.client("who", VIP, 80, 10)
    assert seen == {"names": {"b1": 10}, "errors": []}, seen
    r = pn.wait_report(lambda x: x["proxied"] >= 10)
    assert r["connectFailed"] >= 4 and r["noBackend"] == 0, r  # round-robin: every other one


def test_idle_timeout_closes_a_silent_connection(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", extra="  idleTimeoutSeconds: 1\n"))
    pn.apply()
    pn.start_datapath()
    r = pn.client("idle", VIP, 80, 60)  # sends its header, then nothing
    assert r["how"] in ("eof", "reset"), r  # the proxy ended it, not the client's limit
    assert pn.wait_report(lambda x: x["idleClosed"] == 1)["active"] == 0


def test_drain_timeout_closes_connections_to_a_removed_backend(pn: ProxyNet) -> None:
    pn.write(proxy_doc(ports="[80]", backends=("b1", "b2"), extra="  drainTimeoutSeconds: 1\n"))
    pn.apply()
    pn.start_datapath()
    held, backend = pn.hold()
    keep = "b2" if backend == "b1" else "b1"
    pn.write(proxy_doc(ports="[80]", backends=(keep,), extra="  drainTimeoutSeconds: 1\n"))
    pn.apply()
    r = pn.wait_report(lambda x: x["drained"] == 1)
    assert r["active"] == 0, r
    pn.release(held)  # (whatever the client still reads, its connection is gone)
    assert pn.client("who", VIP, 80, 4)["names"] == {keep: 4}


def test_hostname_backends_are_resolved_again(pn: ProxyNet, tmp_path: Path) -> None:
    """A backend named by hostname follows its address: the data path runs in a mount
    namespace of its own where a hosts file of this test is /etc/hosts (the host's own is
    never touched); rewriting it moves the backend within resolveSeconds (1 s)."""
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{BACKENDS['b1']} app.bpfsync.test\n")
    pn.write(proxy_doc(ports="[80]", backends=("b1",)).replace(
        f'"{BACKENDS["b1"]}:{BACKEND_PORT}"', f'"app.bpfsync.test:{BACKEND_PORT}"')
        + "  resolveSeconds: 1\n")
    pn.apply()
    pn.start_datapath_with_hosts(hosts)
    pn.wait_report(lambda r: [b["address"] for b in r["backends"]] == [BACKENDS["b1"]],
                   seconds=60)
    assert pn.client("who", VIP, 80, 3)["names"] == {"b1": 3}
    with open(hosts, "r+") as f:  # in place: the bind mount follows the inode
        f.truncate(0)
        f.write(f"{BACKENDS['b3']} app.bpfsync.test\n")
    pn.wait_report(lambda r: [b["address"] for b in r["backends"]] == [BACKENDS["b3"]],
                   seconds=60)
    assert pn.client("who", VIP, 80, 3)["names"] == {"b3": 3}
    assert "app.bpfsync.test resolves to" in (tmp_path / "datapath.log").read_text()


def fd_links(pid: int) -> dict[str, str]:
    """pid's descriptors and what each is (its /proc link), those still open."""
    out = {}
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):  # closed meanwhile
            out[fd.name] = os.readlink(fd)
    return out


def held_sockets(pid: int) -> set[int]:
    """Inodes of the sockets pid holds."""
    return {int(link[8:-1]) for link in fd_links(pid).values() if link.startswith("socket:[")}


def exclusively_watched(pid: int) -> set[int]:
    """Inodes of what pid's epolls watch with EPOLLEXCLUSIVE, as the kernel holds them."""
    out = set()
    for fd, link in fd_links(pid).items():
        if link != "anon_inode:[eventpoll]":
            continue
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:  # closed meanwhile
            continue
        for fields in (line.split() for line in info.splitlines() if line.startswith("tfd:")):
            # tfd: N events: HEX data: HEX pos:0 ino:HEX sdev:HEX
            if int(fields[3], 16) & 0x10000000:  # EPOLLEXCLUSIVE
                out.update(int(f[4:], 16) for f in fields if f.startswith("ino:"))
    return out


def _accepting(pn: ProxyNet) -> list[bool]:
    """Whether each worker accepts, from their status reports (in the workers' order)."""
    return [w["accepting"] for w in (read_datapath_status(pn.root) or {}).get("workers", [])]


def _two_workers_one_accepting(pn: ProxyNet) -> dict[str, Any]:
    """The supervisor's report once both workers run and the second stands by (it accepts
    until the first's load reports come in)."""
    sup = wait_until(lambda: (s := pn.supervisor()) and all(s["workerPids"]) and s, 60)
    assert len(sup["workerPids"]) == 2 and len(set(sup["workerPids"])) == 2
    wait_until(lambda: _accepting(pn) == [True, False], 60)
    return sup


def test_a_standby_worker_joins_a_busy_one_and_stands_by_once_the_load_is_light(
        pn: ProxyNet) -> None:
    """The join by load (datapath/standby.py), with a threshold low enough (4% of a CPU)
    for this test's own stream of connections to reach on any machine: the second worker
    starts watching the listeners, as its epoll shows; once the stream stops, a quiet
    second later it stands by again. Every connection is served meanwhile."""
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath(workers=2, join="0.04")
    first, second = _two_workers_one_accepting(pn)["workerPids"]
    listening = exclusively_watched(first)
    assert listening and exclusively_watched(second) == set()
    stop = pn.stop_file()
    stream = pn.spawn("stream", VIP, 80, 120, 0.001, stop)  # ends at stop, or after 120 s
    try:  # (the report says it first; the epoll follows within a turn of the loop)
        wait_until(lambda: _accepting(pn) == [True, True], 60)
        wait_until(lambda: exclusively_watched(second) == listening, 30)
    finally:
        stop.touch()
    s = json.loads(stream.communicate(timeout=60)[0])
    assert s["errors"] == [], s
    wait_until(lambda: _accepting(pn) == [True, False], 60)
    wait_until(lambda: exclusively_watched(second) == set(), 30)


def test_a_standby_worker_takes_over_from_a_stopped_one_and_killed_ones_refuse_nobody(
        pn: ProxyNet) -> None:
    """Two workers, one listen queue. At this load the second stands by (watches no
    listener, datapath/standby.py) and the first watches the listeners with EPOLLEXCLUSIVE.
    The first frozen (SIGSTOP): its load report goes stale, the second joins and serves
    every new connection, with the round-robin turn still exact. Both killed at once:
    connections wait in the queue and the restarted workers serve them; none refused."""
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath(workers=2)
    sup = _two_workers_one_accepting(pn)
    both = wait_until(lambda: read_datapath_status(pn.root), 30)
    frozen, serving = sup["workerPids"]
    # the proxy's listeners, as the kernel holds them (the supervisor's; the backends listen
    # in the namespace too): watched by the first worker, exclusively; not by the second
    listening = {int(f.split(":", 1)[1]) for f in sh(
        f"ip netns exec {pn.ns} ss -Hltne").stdout.split() if f.startswith("ino:")}
    listening &= held_sockets(sup["pid"])
    assert listening
    assert exclusively_watched(frozen) == listening
    assert exclusively_watched(serving) == set()
    os.kill(frozen, signal.SIGSTOP)
    try:
        r = pn.client("who", VIP, 80, 30)
        # (the frozen worker's report goes stale and is left out; the other's is fresh)
        report = wait_until(lambda: (x := read_datapath_status(pn.root)) and [
            w["pid"] for w in x["workers"]] == [serving] and x, 60)
        assert exclusively_watched(serving) == listening
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert r["errors"] == [] and r["names"] == {"b1": 10, "b2": 10, "b3": 10}, r
    assert report["workers"][0]["accepting"], report
    was = next(w["accepted"] for w in both["workers"] if w["pid"] == serving)
    assert report["workers"][0]["accepted"] >= was + 30, (both, report)
    # the first back and the load light: the second stands by again
    wait_until(lambda: _accepting(pn) == [True, False], 60)

    stop = pn.stop_file()
    stream = pn.spawn("stream", VIP, 80, 300, 0.005, stop)
    pn.wait_report(lambda x: x["proxied"] >= 40)
    for pid in sup["workerPids"]:  # both at once: nobody accepts until they are back
        os.kill(pid, signal.SIGKILL)
    later = wait_until(lambda: (s := pn.supervisor()) and all(s["workerPids"]) and not set(
        s["workerPids"]) & set(sup["workerPids"]) and s, 60)
    pn.wait_report(lambda x: x["pid"] == later["workerPids"][0] and x["proxied"] >= 10)
    stop.touch()
    s = json.loads(stream.communicate(timeout=60)[0])
    assert not [e for e in s["errors"] if "Refused" in e], s["errors"]
    # only connections being relayed at the kill die with their worker (one each at most)
    assert len(s["errors"]) <= 2, s
    assert later["restarts"] == 2 and [w["lastExit"] for w in later["workers"]] == [
        "signal 9", "signal 9"]


def test_descriptor_exhaustion_pauses_accepting_and_serves_once_connections_end(
        pn: ProxyNet) -> None:
    """A worker with 256 descriptors and 2,000 idle clients: it runs out, stops accepting
    without spinning (logged once, counted), keeps its backends healthy, and serves a new
    client as soon as the idle ones go."""
    pn.write(proxy_doc(ports="[80]"))
    pn.apply()
    pn.start_datapath(nofile=256)
    crowd = pn.spawn("crowd", VIP, 80, 2000, stdin=subprocess.PIPE)
    assert crowd.stdout is not None and json.loads(crowd.stdout.readline())["opened"] == 2000
    try:
        status = wait_until(lambda: (s := read_datapath_status(pn.root)) and s["descriptors"][
            "paused"] and s, 120)
    except AssertionError:
        raise AssertionError(f"{read_datapath_status(pn.root)}\n"
                             + (pn.tmp / "datapath.log").read_text()[-3000:]) from None
    assert status["descriptors"]["limit"] == 256 and status["descriptors"]["exhausted"] >= 1
    newcomer = pn.spawn("who", VIP, 80, 1, timeout=120)

    pid = pn.worker_pid()
    assert pid is not None
    before, started = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - started < 3:  # a measuring window, not a wait for a state
        time.sleep(0.5)
    used = cpu_seconds(pid) - before
    assert used < 0.5 * (time.monotonic() - started), f"{used:.2f}s of CPU while paused"
    assert newcomer.poll() is None  # still waiting in the listen queue, not refused
    assert all(pn.healthy().values())  # health checks never blamed the backends

    crowd.communicate("\n", timeout=60)  # the idle clients go
    out, _ = newcomer.communicate(timeout=120)
    result = json.loads(out)
    assert result["errors"] == [] and sum(result["names"].values()) == 1, result
    report = pn.wait_report(lambda r: r["fdExhausted"] > 0 and r["acceptErrors"] == 0)
    assert report["fdExhausted"] > 0
    # the queued clients drain (the crowd's queued connections may start a second episode
    # as they are accepted and closed): once the worker is accepting again, one warning for
    # each episode. The status is written every 0.25 s and the log as it happens, so the two
    # are compared when they agree on a settled state, not at one instant.
    def settled() -> tuple[dict, str] | None:
        status, log = read_datapath_status(pn.root), (pn.tmp / "datapath.log").read_text()
        if status is None or status["descriptors"]["paused"]:
            return None
        if log.count("out of file descriptors") != status["descriptors"]["episodes"]:
            return None
        return status, log
    try:
        final, log = wait_until(settled, 120)
    except AssertionError:
        raise AssertionError(f"{read_datapath_status(pn.root)}\n"
                             + (pn.tmp / "datapath.log").read_text()[-3000:]) from None
    assert final["descriptors"]["episodes"] >= 1
    assert "descriptors free again: accepting" in log
