"""Proxy benchmark, side by side in one run, inside a scratch network namespace:

  direct   to the backends, no proxy
  haproxy  HAProxy (Debian's 2.6, mode tcp, roundrobin, one thread per CPU: its default)
  bpfsync  bpfsync's steered proxy (sk_lookup -> `bpfsync datapath`), as installed, or
           several variants of it side by side (--variant: workers, event loop, relay)

Each path has backends of its own (an iperf3 server and a request/response server), so one
path's leftovers can never stall another's. Rounds are interleaved (every path once per
round, the order rotating) and the figures are medians over rounds:

  Gbit/s 1   one iperf3 stream, --seconds
  Gbit/s 8   eight parallel iperf3 streams, --seconds
  conn/s     short request/response connections, --connections from --clients processes
  p50/p99    ms per request (connect, one line each way, close) at a fixed --rate
  CPU s/GB   CPU seconds the proxy's processes spent per GB relayed (the 8-stream run)
  CPU us/conn  CPU microseconds the proxy's processes spent per connection (the conn/s run)

then RSS of the proxy's processes with --idle idle connections held through each proxy.
With --ipv6 every path has an IPv6 twin (direct6, haproxy6, bpfsync6: clients, proxies and
backends all on IPv6; the same HAProxy and data path, other frontends and Proxies), measured
in the same interleaved rounds.

    .venv/bin/python bench/bench_proxy.py [--rounds 3] [--ipv6] [--variant NAME[:K=V,...]] ...
    e.g. --variant splice --variant copy:BPFSYNC_RELAY=copy --variant one:workers=1
         --variant ahead:preconnect=4
         --variant before:tree=/tmp/before   (git worktree add /tmp/before COMMIT)
    .venv/bin/python bench/bench_proxy.py --smoke     # one short round (CI)
    .venv/bin/python bench/bench_proxy.py --connections-only --rounds 8 ...  # no iperf3, no RSS

Needs root. HAProxy and iperf3 are used from PATH, else unpacked from Debian's packages into
.venv/bench-tools (bench/tools.py): nothing is installed on the host and no host file is
written. Everything it creates (namespace, pins, processes, temporary files) is removed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tools  # noqa: E402

from reconciler.datapath.supervisor import run_dir  # noqa: E402
from tests.kernel import owned  # noqa: E402
from tests.kernel.daemonkit import cpu_seconds  # noqa: E402

# per path: the backend's address, the address clients connect to (bpfsync variants get
# 192.0.2.(10 + i) and 203.0.113.(10 + i))
BACKEND = {"direct": "192.0.2.1", "haproxy": "192.0.2.2"}
FRONT = {"direct": "192.0.2.1", "haproxy": "203.0.113.8"}
RR_PORT, IPERF_PORT = 9000, 5201


def hostport(addr: str, port: int) -> str:
    """addr:port as ss prints it and HAProxy reads it (IPv6 in brackets)."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def add_twins(paths: tuple[str, ...]) -> tuple[str, ...]:
    """Every path and its IPv6 twin (NAME6): backend 2001:db8::K, front 2001:db8:7::K."""
    out = []
    for k, path in enumerate(paths, start=1):
        twin = f"{path}6"
        BACKEND[twin] = f"2001:db8::{k}"
        FRONT[twin] = BACKEND[twin] if path == "direct" else f"2001:db8:7::{k}"
        out += [path, twin]
    return tuple(out)

# n requests (connect, one line each way, close); at a fixed rate, each one timed
CLIENT = r"""
import json, socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
times, fails, start = [], 0, time.monotonic()
for i in range(n):
    due = start + i / rate if rate else 0.0
    while (now := time.monotonic()) < due:
        time.sleep(due - now)
    t0 = time.perf_counter()
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"ping\n")
        while s.recv(64):
            pass
        s.close()
        if rate:
            times.append(time.perf_counter() - t0)
    except OSError:
        fails += 1
print(json.dumps({"seconds": time.monotonic() - start, "times": times, "fails": fails}))
"""

SERVER = r"""
import asyncio, sys
async def handle(r, w):
    await r.readline(); w.write(b"pong\n"); await w.drain(); w.close()
async def main():
    s = await asyncio.start_server(handle, sys.argv[1], int(sys.argv[2]), backlog=4096,
                                   reuse_address=True)
    print("ready", flush=True)
    await s.serve_forever()
asyncio.run(main())
"""

HOLD = r"""
import resource, socket, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=30) for _ in range(n)]
print("held", len(socks), flush=True)
sys.stdin.readline()
"""


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True,
                          timeout=600)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tag = uuid.uuid4().hex[:6]
        self.ns = f"bsbench{tag}"
        self.tag = tag
        self.tmp = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
        self.procs: list[subprocess.Popen] = []
        # bpfsync variant name -> (environment and options, pin root, data path)
        self.variants: dict[str, dict[str, str]] = dict(args.variant)
        self.roots: dict[str, Path] = {}
        self.dps: dict[str, subprocess.Popen] = {}
        for i, name in enumerate(self.variants):
            BACKEND[name], FRONT[name] = f"192.0.2.{10 + i}", f"203.0.113.{10 + i}"
            self.roots[name] = Path(f"/sys/fs/bpf/bpfsync-bench-{tag}-{i}")
        self.paths = ("direct", "haproxy", *self.variants)
        self.base: dict[str, str] = {}  # IPv6 twin -> its IPv4 path
        if args.ipv6:
            self.paths = add_twins(self.paths)
            self.base = {f"{p}6": p for p in self.paths[::2]}
        self.haproxy: subprocess.Popen | None = None
        self.iperf3 = tools.tool("iperf3")
        self.log = open(self.tmp / "datapath.log", "wb")  # noqa: SIM115 - closed in cleanup

    def spawn(self, *cmd: str, stdin: int | None = None) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=stdin, text=True)
        self.procs.append(p)
        return p

    def setup(self) -> None:
        sh(f"ip netns add {self.ns}")
        sh(f"ip -n {self.ns} link set lo up")
        sh(f"ip -n {self.ns} route add local 203.0.113.0/24 dev lo")
        sh(f"ip -n {self.ns} -6 route add local 2001:db8:7::/48 dev lo")
        haproxies = [p for p in self.paths if p.startswith("haproxy")]
        backends = [BACKEND[p] for p in self.paths]
        for ip in {*backends, *(FRONT[p] for p in haproxies)}:  # IPv6 binds need the address
            sh(f"ip -n {self.ns} addr add {ip}/{128 if ':' in ip else 32} dev lo nodad")
        for ip in backends:  # each path its own servers
            srv = self.spawn(sys.executable, "-c", SERVER, ip, str(RR_PORT))
            assert srv.stdout and srv.stdout.readline().strip() == "ready"
        self._start_haproxy(haproxies)
        for name in self.variants:
            self._start_bpfsync(name)
        self._wait_listening({hostport(FRONT[p], port) for p in haproxies
                              for port in (RR_PORT, IPERF_PORT)}
                             | {hostport(ip, RR_PORT) for ip in backends})

    def _wait_listening(self, want: set[str]) -> None:
        deadline = time.monotonic() + 60
        while not want <= self._listening():  # the servers (and HAProxy) have bound
            if time.monotonic() > deadline:
                raise RuntimeError(f"not listening: {sorted(want - self._listening())}")
            time.sleep(0.05)

    def _listening(self) -> set[str]:
        out = sh(f"ip netns exec {self.ns} ss -Hltn").stdout
        return {line.split()[3] for line in out.splitlines() if len(line.split()) > 3}

    def _start_haproxy(self, paths: list[str]) -> None:
        """One HAProxy for its paths (haproxy, and haproxy6 with --ipv6)."""
        cfg = self.tmp / "haproxy.cfg"
        text = """global
    maxconn 9000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
"""
        for p in paths:
            front, back = FRONT[p], BACKEND[p]
            for svc, port in (("rr", RR_PORT), ("iperf", IPERF_PORT)):
                text += f"""frontend fe_{svc}_{p}
    bind {hostport(front, port)}
    default_backend be_{svc}_{p}
backend be_{svc}_{p}
    balance roundrobin
    server b1 {hostport(back, port)}
"""
        cfg.write_text(text)
        self.haproxy = self.spawn(tools.tool("haproxy"), "-db", "-f", str(cfg))

    def _start_bpfsync(self, name: str) -> None:
        """One data path for the variant and, with --ipv6, its twin (two more Proxies)."""
        root = self.roots[name]
        desired = self.tmp / f"desired-{name}"
        desired.mkdir()
        settings = dict(self.variants[name])
        workers = settings.pop("workers", None)
        tree = settings.pop("tree", str(ROOT))  # another checkout's code: before and after
        ahead = settings.pop("preconnect", None)  # the request/response Proxy's preconnect
        extra = f"  preconnect: {ahead}\n" if ahead else ""
        docs = []
        for i, path in enumerate(p for p in (name, f"{name}6") if p in self.paths):
            front, back = FRONT[path], BACKEND[path]
            plen = 128 if ":" in front else 32
            docs.append(f"""apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: {path}}}
spec:
  id: {2 * i + 1}
  netns: {self.ns}
  ports: [{RR_PORT}]
  destinations: ["{front}/{plen}"]
  backends: ["{hostport(back, RR_PORT)}"]
  maxConnections: 20000
  healthCheck: {{enabled: false}}
{extra}---
apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: {path}-iperf}}
spec:
  id: {2 * i + 2}
  netns: {self.ns}
  ports: [{IPERF_PORT}]
  destinations: ["{front}/{plen}"]
  backends: ["{hostport(back, IPERF_PORT)}"]
  healthCheck: {{enabled: false}}  # as HAProxy's (no check): iperf3 takes a check for a test
""")
        (desired / "proxy.yaml").write_text("---\n".join(docs))
        env = {**os.environ, "BPFSYNC_PIN_ROOT": str(root), "PYTHONPATH": tree}
        subprocess.run([sys.executable, "-m", "reconciler", "apply", "-q", str(desired)],
                       check=True, env=env, capture_output=True, cwd=tree)
        env = {**os.environ, **settings, "PYTHONPATH": tree}
        self.dps[name] = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "--pin-root", str(root), "datapath",
             "--netns", self.ns, *(["--workers", workers] if workers else [])],
            stdout=self.log, stderr=self.log, env=env, start_new_session=True, cwd=tree)
        deadline = time.monotonic() + 60
        while not self._ready(name):  # both proxies serve, on every worker
            if time.monotonic() > deadline:
                self.log.flush()
                raise RuntimeError("bpfsync's data path did not come up within 60 s:\n"
                                   + (self.tmp / "datapath.log").read_text()[-2000:])
            time.sleep(0.2)

    def _ready(self, name: str) -> bool:
        from reconciler.datapath.supervisor import read_datapath_status

        doc = read_datapath_status(self.roots[name])
        sup = self.supervisor(name)
        return bool(doc and sup and all(sup["workerPids"]) and
                    len(doc["workers"]) == len(sup["workerPids"]) and
                    len(doc["proxies"]) == (4 if self.args.ipv6 else 2) and
                    all(p["backends"] for p in doc["proxies"].values()))

    def supervisor(self, name: str) -> dict | None:
        try:
            return json.loads((run_dir(self.roots[name]) / "supervisor.json").read_text())
        except (OSError, ValueError):
            return None

    def pids(self, path: str) -> list[int]:
        """The processes that do the proxying of path (none for direct); an IPv6 twin's are
        its IPv4 path's."""
        path = self.base.get(path, path)
        if path == "haproxy":
            assert self.haproxy is not None
            return [self.haproxy.pid]  # ip netns exec and the tools wrapper exec: its pid
        if path in self.variants:
            sup = self.supervisor(path) or {}
            return [p for p in [sup.get("pid"), *sup.get("workerPids", [])] if p]
        return []

    def iperf(self, path: str, streams: int) -> tuple[float, float]:
        """(Gbit/s, bytes) received. Each run gets a fresh one-test iperf3 server (-1): a
        server that lingers in its last test refuses the next one."""
        server = self.spawn(self.iperf3, "-s", "-1", "-B", BACKEND[path], "-p",
                            str(IPERF_PORT))
        self._wait_listening({hostport(BACKEND[path], IPERF_PORT)})
        r = sh(f"ip netns exec {self.ns} {self.iperf3} -c {FRONT[path]} -p {IPERF_PORT} "
               f"-t {self.args.seconds} -P {streams} -J", check=False)
        doc = json.loads(r.stdout)
        server.communicate(timeout=60)
        if "error" in doc:
            raise RuntimeError(f"iperf3 via {path}: {doc['error']}")
        received = doc["end"]["sum_received"]
        return received["bits_per_second"] / 1e9, received["bytes"]

    def conn_rate(self, path: str) -> tuple[float, int]:
        per = self.args.connections // self.args.clients
        ps = [self.spawn(sys.executable, "-c", CLIENT, FRONT[path], str(RR_PORT), str(per))
              for _ in range(self.args.clients)]
        t0 = time.monotonic()
        outs = [json.loads(p.communicate(timeout=300)[0]) for p in ps]
        wall = time.monotonic() - t0
        return per * self.args.clients / wall, sum(o["fails"] for o in outs)

    def latency(self, path: str) -> tuple[float, float, int]:
        p = self.spawn(sys.executable, "-c", CLIENT, FRONT[path], str(RR_PORT),
                       str(self.args.requests), str(self.args.rate))
        doc = json.loads(p.communicate(timeout=600)[0])
        times = sorted(doc["times"])
        if not times:
            raise RuntimeError(f"no request through {path} succeeded")
        return (times[len(times) // 2] * 1e3, times[min(len(times) - 1,
                                                        int(len(times) * 0.99))] * 1e3,
                doc["fails"])

    def idle_rss(self, path: str, n: int) -> float:
        """RSS (MiB) of path's processes while n idle connections are held through it."""
        hold = self.spawn(sys.executable, "-c", HOLD, FRONT[path], str(RR_PORT), str(n),
                          stdin=subprocess.PIPE)
        assert hold.stdout is not None
        line = hold.stdout.readline()
        if not line.startswith("held"):
            raise RuntimeError(f"holding {n} connections via {path}: {hold.stderr.read()}")
        time.sleep(1.0)  # a measuring pause: the proxies finish setting their ends up
        rss = sum(_rss_mib(p) for p in self.pids(path))
        hold.communicate("\n", timeout=120)
        return rss

    def cleanup(self) -> None:
        for dp in self.dps.values():
            if dp.poll() is None:
                dp.send_signal(signal.SIGTERM)
                try:
                    dp.wait(30)
                except subprocess.TimeoutExpired:
                    owned.kill_process_group(dp.pid)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        self.log.close()
        sh(f"ip netns del {self.ns}", check=False)
        for root in self.roots.values():
            shutil.rmtree(root, ignore_errors=True)
            shutil.rmtree(run_dir(root), ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def _rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pids: list[int]) -> float:
    """CPU time pids have used; one gone meanwhile counts nothing."""
    total = 0.0
    for pid in pids:
        with suppress(OSError):
            total += cpu_seconds(pid)
    return total


def variant(text: str) -> tuple[str, dict[str, str]]:
    """NAME[:K=V,...]: workers=N is the data path's option, preconnect=N the request/response
    Proxy's, tree=PATH the checkout whose code runs it (a `git worktree` of an earlier
    commit: before and after in one run), the rest its environment."""
    name, _, rest = text.partition(":")
    settings = dict(kv.split("=", 1) for kv in rest.split(",") if kv)
    if not name.replace("-", "").isalnum() or name in ("direct", "haproxy"):
        raise argparse.ArgumentTypeError(f"bad variant name {name!r}")
    return name, settings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration per run")
    p.add_argument("--connections", type=int, default=4000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--requests", type=int, default=1000, help="latency probe requests")
    p.add_argument("--rate", type=float, default=200.0, help="latency probe requests/s")
    p.add_argument("--idle", type=int, default=4000,
                   help="idle connections held through each proxy for RSS (HAProxy, one "
                        "process, needs two descriptors each)")
    p.add_argument("--idle-bpfsync", type=int, default=10000,
                   help="idle connections held through bpfsync alone for RSS")
    p.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    p.add_argument("--variant", type=variant, action="append", metavar="NAME[:K=V,...]",
                   help="a bpfsync data path to measure beside the others, e.g. "
                        "uvloop:BPFSYNC_EVENT_LOOP=uvloop, copy:BPFSYNC_RELAY=copy, "
                        "one:workers=1 (default: one, \"bpfsync\", as installed)")
    p.add_argument("--ipv6", action="store_true",
                   help="measure an IPv6 twin of every path in the same rounds")
    p.add_argument("--smoke", action="store_true", help="one short round (CI)")
    p.add_argument("--connections-only", action="store_true",
                   help="only conn/s, p50/p99 and CPU per connection (no iperf3, no idle RSS): "
                        "before and after runs of the connection path")
    args = p.parse_args()
    if args.smoke:
        args.seconds, args.connections, args.clients = 1, 200, 2
        args.requests, args.rate, args.rounds = 40, 100.0, 1
        args.idle, args.idle_bpfsync = 100, 200
    args.variant = args.variant or [("bpfsync", {})]
    owned.private_state_dir()  # the history of its pin roots goes with it
    b = Bench(args)
    paths = b.paths
    figures: dict[str, dict[str, list[float]]] = {k: {} for k in paths}
    fails = dict.fromkeys(paths, 0)

    def add(path: str, name: str, value: float) -> None:
        figures[path].setdefault(name, []).append(value)

    try:
        b.setup()
        for r in range(args.rounds):  # interleaved, the order rotating each round
            turn = r % len(paths)
            for path in paths[turn:] + paths[:turn]:
                if args.connections_only:  # not measured: shown as nan
                    for name in ("gbps1", "gbps8", "cpu_per_gb"):
                        add(path, name, math.nan)
                else:
                    add(path, "gbps1", b.iperf(path, 1)[0])
                    cpu = _cpu_seconds(b.pids(path))
                    gbps, moved = b.iperf(path, 8)
                    add(path, "gbps8", gbps)
                    add(path, "cpu_per_gb", (_cpu_seconds(b.pids(path)) - cpu) / (moved / 1e9))
                cpu = _cpu_seconds(b.pids(path))
                rate, failed = b.conn_rate(path)
                add(path, "cps", rate)
                add(path, "cpu_per_conn", (_cpu_seconds(b.pids(path)) - cpu) * 1e6
                    / (args.connections // args.clients * args.clients))
                p50, p99, lost = b.latency(path)
                add(path, "p50", p50)
                add(path, "p99", p99)
                fails[path] += failed + lost
        first = next(iter(b.variants))
        rss = ({} if args.connections_only else
               {path: b.idle_rss(path, args.idle) for path in ("haproxy", first)})
        rss_alone = 0.0 if args.connections_only else b.idle_rss(first, args.idle_bpfsync)
        workers = {name: len((b.supervisor(name) or {}).get("workerPids", []))
                   for name in b.variants}
    finally:
        b.cleanup()
    med = {path: {k: statistics.median(v) for k, v in f.items()} for path, f in
           figures.items()}
    print(f"rounds: {args.rounds} (medians), iperf3 {args.seconds} s, {args.connections} "
          f"connections from {args.clients} clients, {args.requests} requests at "
          f"{args.rate:g}/s; {os.cpu_count()} CPUs")
    for name, settings in b.variants.items():
        print(f"  {name}: {workers[name]} workers"
              + "".join(f", {k}={v}" for k, v in settings.items() if k != "workers"))
    width = max(8, *map(len, paths))
    print(f"{'path':{width}} {'Gbit/s 1':>9} {'Gbit/s 8':>9} {'conn/s':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'CPU s/GB':>9} {'CPU us/conn':>11} {'failed':>7}")
    for path in paths:
        m = med[path]
        proxied = b.base.get(path, path) != "direct"
        cpu = f"{m['cpu_per_gb']:9.2f}" if proxied else f"{'-':>9}"
        per_conn = f"{m['cpu_per_conn']:11.0f}" if proxied else f"{'-':>11}"
        print(f"{path:{width}} {m['gbps1']:9.2f} {m['gbps8']:9.2f} {m['cps']:8.0f} "
              f"{m['p50']:7.3f} {m['p99']:7.3f} {cpu} {per_conn} {fails[path]:7d}")
    for name in (n for n in (*b.variants, *(f"{v}6" for v in b.variants)) if n in med):
        peer = "haproxy" if name in b.variants else "haproxy6"
        s, h = med[name], med[peer]
        print(f"{name} / {peer}: single stream {s['gbps1'] / h['gbps1']:.2f}x, 8 streams "
              f"{s['gbps8'] / h['gbps8']:.2f}x, connection rate {s['cps'] / h['cps']:.2f}x, "
              f"p50 {s['p50'] / h['p50']:.2f}x, p99 {s['p99'] / h['p99']:.2f}x, CPU per GB "
              f"{s['cpu_per_gb'] / h['cpu_per_gb']:.2f}x, CPU per connection "
              f"{s['cpu_per_conn'] / h['cpu_per_conn']:.2f}x")
    if rss:
        print(f"RSS with {args.idle} idle connections: haproxy {rss['haproxy']:.1f} MiB, "
              f"{first} {rss[first]:.1f} MiB (supervisor and workers); {first} with "
              f"{args.idle_bpfsync}: {rss_alone:.1f} MiB")
    for path, base in b.base.items():
        s, f = med[path], med[base]
        print(f"{path} / {base} (IPv6 / IPv4): single stream "
              f"{s['gbps1'] / f['gbps1']:.2f}x, 8 streams {s['gbps8'] / f['gbps8']:.2f}x, "
              f"connection rate {s['cps'] / f['cps']:.2f}x, p50 {s['p50'] / f['p50']:.2f}x")
    return 1 if any(fails.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
