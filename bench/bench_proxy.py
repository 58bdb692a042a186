"""Proxy benchmark, side by side in one run, inside a scratch network namespace:

  (a) direct to the backend, (b) HAProxy (Debian's, mode tcp, roundrobin, one backend),
  (c) bpfsync's steered proxy (sk_lookup -> `bpfsync datapath`).

Measures one large transfer (iperf3, single stream) and the connection rate of short
request/response exchanges (a fixed number of connections from several client processes),
then the data-path worker's RSS with 1,000 idle connections. Ratios are against HAProxy.

    .venv/bin/python bench/bench_proxy.py [--seconds 5] [--connections 4000] [--clients 4]

Needs root, iperf3 and haproxy (installed on first run if missing, its service left off).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BACKEND, BACKEND_IP = ("192.0.2.1", 9000), "192.0.2.1"
HAPROXY_VIP, STEERED_VIP = "203.0.113.8", "203.0.113.7"

CLIENT = r"""
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
t0 = time.monotonic(); fails = 0
for _ in range(n):
    try:
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"ping\n")
        while s.recv(64):
            pass
        s.close()
    except OSError:
        fails += 1
print(time.monotonic() - t0, fails)
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
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = [socket.create_connection((host, port), timeout=10) for _ in range(n)]
print("held", len(socks), flush=True)
time.sleep(float(sys.argv[4]))
"""


def sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True,
                          timeout=600)


def ensure_tools() -> None:
    if shutil.which("iperf3") is None or shutil.which("haproxy") is None:
        print("installing iperf3 and haproxy (service left disabled)", file=sys.stderr)
        Path("/usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
        os.chmod("/usr/sbin/policy-rc.d", 0o755)
        try:
            sh("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
               "iperf3 haproxy")
        finally:
            Path("/usr/sbin/policy-rc.d").unlink()


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        tag = uuid.uuid4().hex[:6]
        self.ns = f"bsbench{tag}"
        self.root = Path(f"/sys/fs/bpf/bpfsync-bench-{tag}")
        self.tmp = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
        self.procs: list[subprocess.Popen] = []
        self.dp: subprocess.Popen | None = None

    def spawn(self, *cmd: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        return p

    def setup(self) -> None:
        sh(f"ip netns add {self.ns}")
        sh(f"ip -n {self.ns} link set lo up")
        sh(f"ip -n {self.ns} route add local 203.0.113.0/24 dev lo")
        sh(f"ip -n {self.ns} addr add {BACKEND_IP}/32 dev lo")
        sh(f"ip -n {self.ns} addr add {HAPROXY_VIP}/32 dev lo")
        srv = self.spawn(sys.executable, "-c", SERVER, *map(str, BACKEND))
        assert srv.stdout and srv.stdout.readline().strip() == "ready"
        self.spawn("iperf3", "-s", "-B", BACKEND_IP, "-p", "5201")
        cfg = self.tmp / "haproxy.cfg"
        cfg.write_text(f"""global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend fe_rr
    bind {HAPROXY_VIP}:9000
    default_backend be_rr
frontend fe_iperf
    bind {HAPROXY_VIP}:5201
    default_backend be_iperf
backend be_rr
    balance roundrobin
    server b1 {BACKEND_IP}:9000
backend be_iperf
    balance roundrobin
    server b1 {BACKEND_IP}:5201
""")
        self.spawn("haproxy", "-db", "-f", str(cfg))
        desired = self.tmp / "desired"
        desired.mkdir()
        (desired / "proxy.yaml").write_text(f"""apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: bench}}
spec:
  id: 1
  netns: {self.ns}
  ports: [9000]
  destinations: [{STEERED_VIP}/32]
  backends: ["{BACKEND_IP}:9000"]
  maxConnections: 20000
---
apiVersion: bpfsync/v1
kind: Proxy
metadata: {{name: bench-iperf}}
spec:
  id: 2
  netns: {self.ns}
  ports: [5201]
  destinations: [{STEERED_VIP}/32]
  backends: ["{BACKEND_IP}:5201"]
""")
        env = {**os.environ, "BPFSYNC_PIN_ROOT": str(self.root),  # its history: in tmp
               "BPFSYNC_STATE_DIR": os.environ.get("BPFSYNC_STATE_DIR") or str(self.tmp)}
        subprocess.run([sys.executable, "-m", "reconciler", "apply", "-q", str(desired)],
                       check=True, env=env, capture_output=True)
        self.dp = subprocess.Popen([sys.executable, "-m", "reconciler", "--pin-root",
                                    str(self.root), "datapath", "--netns", self.ns],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)

    def worker_pid(self) -> int:
        from reconciler.datapath.supervisor import run_dir

        return json.loads((run_dir(self.root) / "supervisor.json").read_text())["workerPid"]

    def iperf(self, host: str) -> float:
        r = sh(f"ip netns exec {self.ns} iperf3 -c {host} -p 5201 -t {self.args.seconds} -J",
               check=False)
        doc = json.loads(r.stdout)
        if "error" in doc:
            raise RuntimeError(f"iperf3 to {host}: {doc['error']}")
        return doc["end"]["sum_received"]["bits_per_second"] / 1e9

    def conn_rate(self, host: str, port: int) -> tuple[float, int]:
        per = self.args.connections // self.args.clients
        ps = [self.spawn(sys.executable, "-c", CLIENT, host, str(port), str(per))
              for _ in range(self.args.clients)]
        t0 = time.monotonic()
        outs = [p.communicate(timeout=300)[0].split() for p in ps]
        wall = time.monotonic() - t0
        fails = sum(int(o[1]) for o in outs)
        return per * self.args.clients / wall, fails

    def idle_rss(self, n: int = 1000) -> tuple[float, float]:
        pid = self.worker_pid()
        before = _rss_mib(pid)
        hold = self.spawn(sys.executable, "-c", HOLD, STEERED_VIP, "9000", str(n), "5")
        assert hold.stdout and hold.stdout.readline().startswith("held")
        time.sleep(1.5)
        after = _rss_mib(pid)
        hold.wait(30)
        return before, after

    def cleanup(self) -> None:
        if self.dp and self.dp.poll() is None:
            self.dp.send_signal(signal.SIGTERM)
            self.dp.wait(20)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
        sh(f"ip netns del {self.ns}", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        from reconciler.datapath.supervisor import run_dir

        shutil.rmtree(run_dir(self.root), ignore_errors=True)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=int, default=5, help="iperf3 duration per run")
    p.add_argument("--connections", type=int, default=4000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3, help="median of this many rounds")
    args = p.parse_args()
    ensure_tools()
    b = Bench(args)
    targets = {"direct": (BACKEND_IP, 9000), "haproxy": (HAPROXY_VIP, 9000),
               "bpfsync": (STEERED_VIP, 9000)}
    try:
        b.setup()
        gbps: dict[str, list[float]] = {k: [] for k in targets}
        rate: dict[str, list[float]] = {k: [] for k in targets}
        fails = dict.fromkeys(targets, 0)
        for _ in range(args.rounds):  # interleaved, so drift hits every target alike
            for name, (host, port) in targets.items():
                gbps[name].append(b.iperf(host) if name != "direct" else b.iperf(BACKEND_IP))
                r, f = b.conn_rate(host, port)
                rate[name].append(r)
                fails[name] += f
        before, after = b.idle_rss()
    finally:
        b.cleanup()
    med = {k: statistics.median(v) for k, v in gbps.items()}
    cps = {k: statistics.median(v) for k, v in rate.items()}
    print(f"rounds: {args.rounds} (median), iperf3 {args.seconds}s single stream, "
          f"{args.connections} connections from {args.clients} clients per rate run")
    print(f"{'path':10} {'Gbit/s':>8} {'conn/s':>8} {'failed':>7}")
    for k in targets:
        print(f"{k:10} {med[k]:8.2f} {cps[k]:8.0f} {fails[k]:7d}")
    print(f"bpfsync / haproxy: throughput {med['bpfsync'] / med['haproxy']:.2f}x, "
          f"connection rate {cps['bpfsync'] / cps['haproxy']:.2f}x")
    print(f"worker RSS: {before:.1f} MiB idle, {after:.1f} MiB with 1000 idle connections")


if __name__ == "__main__":
    main()
