"""Transparent-proxy benchmark, side by side in one run: the same client, the same server,
direct (the client's cgroup is not intercepted) and intercepted (its cgroup is: connect4
sends it to the data path's proxy, which asks SO_ORIGINAL_DST and connects on).

    client netns 203.0.113.1 ──veth── 203.0.113.2 server netns
                 2001:db8::1            2001:db8::2   (--ipv6: native IPv6 rows too)

  setup latency: sequential short connections (connect, one line each way, close), p50/p99
  throughput:    one download of --bytes, single stream, the median of --rounds rounds
                 (direct and intercepted interleaved, the order rotating), with the CPU
                 seconds the whole machine was busy per GB moved, and the data path's
                 workers' share of them

    .venv/bin/python bench/bench_transparent.py [--connections 3000] [--bytes 2G] [--rounds 3]
                                                [--ipv6]

Needs root. Everything it creates (namespaces, cgroups, pins, processes) is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from tools import byte_size  # noqa: E402

from reconciler.datapath.supervisor import read_datapath_status  # noqa: E402
from reconciler.kernel import cgroups  # noqa: E402
from reconciler.tproxy.cgroups import DATAPATH_PARENT, datapath_cgroup  # noqa: E402
from tests.kernel import owned  # noqa: E402
from tests.kernel.daemonkit import RunningDaemon, cpu_seconds, wait_for  # noqa: E402

TPKIT = str(ROOT / "tests" / "kernel" / "tpkit.py")
SERVER = "203.0.113.2"
SERVER6 = "2001:db8::2"


def busy_seconds() -> float:
    """CPU seconds every CPU of the machine has been busy (not idle, not waiting for I/O):
    the client, the server, the proxy and the kernel's work for them, wherever it ran."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True,
                          timeout=900).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=3000)
    ap.add_argument("--bytes", default="2G")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ipv6", action="store_true",
                    help="native IPv6 direct and intercepted rows in the same run")
    ap.add_argument("--smoke", action="store_true", help="100 connections, 16 MiB (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.connections, args.bytes, args.rounds = 100, "16M", 1
    owned.private_state_dir()  # the history of its pin roots goes with it
    tag = uuid.uuid4().hex[:6]
    ns, sns = f"bbt-{tag}-c", f"bbt-{tag}-s"
    base, apps = f"/bpfsync-bench-{tag}", f"/bpfsync-bench-{tag}/apps"
    pin_root = Path(f"/sys/fs/bpf/bpfsync-bench-{tag}")
    work = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
    servers: list[subprocess.Popen[str]] = []
    daemon = None
    try:
        for n in (ns, sns):
            sh(f"ip netns add {n} && ip -n {n} link set lo up")
        # made inside the namespaces: nothing appears in the host's, even for a moment
        sh(f"ip link add bbt{tag}c netns {ns} type veth peer name bbt{tag}s netns {sns}")
        sh(f"ip -n {ns} addr add 203.0.113.1/24 dev bbt{tag}c && ip -n {ns} link set bbt{tag}c up")
        sh(f"ip -n {sns} addr add {SERVER}/24 dev bbt{tag}s && ip -n {sns} link set bbt{tag}s up")
        sh(f"ip -n {ns} -6 addr add 2001:db8::1/64 dev bbt{tag}c nodad")
        sh(f"ip -n {sns} -6 addr add {SERVER6}/64 dev bbt{tag}s nodad")
        cgroups.fs_path(apps).mkdir(parents=True)
        for addr in (SERVER, SERVER6):
            servers.append(subprocess.Popen(["ip", "netns", "exec", sns, sys.executable, TPKIT,
                                             "server", addr, "80"], stdout=subprocess.PIPE,
                                            text=True))
            out = servers[-1].stdout
            assert out is not None and out.readline().strip() == "listening"
        desired = work / "desired"
        desired.mkdir()
        (desired / "tp.yaml").write_text(
            "apiVersion: bpfsync/v1\nkind: Proxy\nmetadata: {name: egress}\n"
            f"spec:\n  id: 4\n  netns: {ns}\n---\n"
            "apiVersion: bpfsync/v1\nkind: TransparentProxy\nmetadata: {name: apps}\nspec:\n"
            f"  id: 3\n  cgroup: {apps}\n  proxy: egress\n"
            f"  intercept:\n    - destinations: [203.0.113.0/24, '{SERVER6}/128']\n"
            "      ports: [80]\n")
        daemon = RunningDaemon(desired, pin_root, work / "daemon.log").start()
        wait_for(lambda: (s := read_datapath_status(pin_root)) and "egress" in s["proxies"], 60)

        def client(cgroup: str | None, *argv: object) -> dict:
            run = f"ip netns exec {ns} {sys.executable} {TPKIT} " + " ".join(map(str, argv))
            if cgroup:
                run = f"sh -c 'echo $$ > {cgroups.fs_path(cgroup)}/cgroup.procs && exec {run}'"
            return json.loads(sh(run))

        rows: dict[str, dict[str, float]] = {}
        paths = [("direct", None, SERVER), ("intercepted", apps, SERVER)]
        if args.ipv6:
            paths += [("direct6", None, SERVER6), ("intercepted6", apps, SERVER6)]
        for label, cg, host in paths:
            conn = client(cg, "many", host, 80, args.connections, 600)
            assert conn["failed"] == 0, conn
            rows[label] = {"p50": conn["p50Ms"], "p99": conn["p99Ms"],
                           "rate": conn["done"] / max(conn["seconds"], 1e-3)}
        downs: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in paths}
        for r in range(args.rounds):  # interleaved, the order rotating each round
            for label, cg, host in paths[r % len(paths):] + paths[:r % len(paths)]:
                # the workers' CPU time includes the kernel's work in their context (the
                # loopback delivery of what they send)
                workers = [w["pid"] for w in read_datapath_status(pin_root)["workers"]]
                busy, proxy = busy_seconds(), sum(map(cpu_seconds, workers))
                down = client(cg, "down", host, 80, byte_size(args.bytes))
                busy, proxy = busy_seconds() - busy, sum(map(cpu_seconds, workers)) - proxy
                assert down["bytes"] == byte_size(args.bytes), down
                gb = down["bytes"] / 1e9
                downs[label].append((down["bytes"] * 8 / down["seconds"] / 1e9, busy / gb,
                                     proxy / gb))
        for label, got in downs.items():
            for k, name in enumerate(("gbps", "cpu", "proxy")):
                rows[label][name] = statistics.median(x[k] for x in got)
        # every intercepted connection reached the proxy (its workers report every 0.25 s)
        expected = (args.connections + args.rounds) * (2 if args.ipv6 else 1)
        wait_for(lambda: read_datapath_status(pin_root)["proxies"]["egress"][
            "originalDestination"] >= expected, 60)
        d, i = rows["direct"], rows["intercepted"]
        print(f"{'':12} {'setup p50':>10} {'setup p99':>10} {'conn/s':>8} {'Gbit/s':>8} "
              f"{'CPU s/GB':>9} {'proxy s/GB':>10}")
        for label, r in rows.items():
            print(f"{label:12} {r['p50']:>8.3f}ms {r['p99']:>8.3f}ms {r['rate']:>8.0f} "
                  f"{r['gbps']:>8.2f} {r['cpu']:>9.2f} {r['proxy']:>10.2f}")
        print(f"intercepted/direct: setup p50 x{i['p50'] / d['p50']:.2f}, p99 "
              f"x{i['p99'] / d['p99']:.2f}, throughput x{i['gbps'] / d['gbps']:.2f}, CPU per "
              f"GB x{i['cpu'] / d['cpu']:.2f} ({args.connections} connections; {args.bytes} "
              f"downloads, medians of {args.rounds} interleaved rounds; CPU: every CPU's busy "
              f"time, {os.cpu_count()} CPUs)")
        if args.ipv6:
            d6, i6 = rows["direct6"], rows["intercepted6"]
            print(f"intercepted6/direct6: setup p50 x{i6['p50'] / d6['p50']:.2f}, p99 "
                  f"x{i6['p99'] / d6['p99']:.2f}, throughput x{i6['gbps'] / d6['gbps']:.2f}")
        return 0
    finally:
        if daemon is not None:
            daemon.cleanup()
        for server in servers:
            server.kill()
            server.wait(10)
        for n in (ns, sns):
            subprocess.run(["ip", "netns", "del", n], check=False)
        shutil.rmtree(pin_root, ignore_errors=True)
        for cg in (apps, base, datapath_cgroup(pin_root), DATAPATH_PARENT):
            with suppress(OSError):
                cgroups.fs_path(cg).rmdir()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
