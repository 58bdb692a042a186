"""GUE data-path benchmark: TCP throughput and small-UDP packet rate through the tunnel versus
the same veth path without any program, alternating in one run.

    .venv/bin/python bench/bench_gue.py [--rounds 3] [--seconds 5] [--ipv6]

Topology (tests/kernel/topology.py): client -> gateway -> node over veths, in namespaces.
Baseline: the client talks to the backend address directly (routed over the same veths, no
TC program anywhere). Tunnel: the client talks to the Service's proxy endpoint; the gateway
encapsulates, the node decapsulates and rewrites to the same backend, replies come back
through the tunnel (standard mode). Each round detaches (apply without the Interface),
measures the baseline, attaches (apply), measures the tunnel. iperf3 from Debian, bounded by
--seconds per measurement. With --ipv6, every round measures IPv6 inside the same IPv4 tunnel
too (IPv6 Services to an IPv6 backend, the dual-stack topology), right after IPv4, and then
both again through the same tunnel moved to an IPv6 underlay (endpoints 2001:db8:1::1 and
::2, zeroChecksum).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import tools  # noqa: E402

from tests.kernel import owned  # noqa: E402
from tests.kernel.topology import (  # noqa: E402
    BACKEND,
    BACKEND6,
    KEYS,
    PROXY,
    PROXY6,
    gue_topology,
    service_doc,
    tunnel6_doc,
    write_gateway,
    write_node,
)

PORT = 5201


def bpfsync(*args: str, root: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "reconciler", "--pin-root", str(root), *args],
                       capture_output=True, text=True, env={**KEYS, "PATH": "/usr/bin:/bin"},
                       cwd=ROOT, timeout=120)
    if r.returncode != 0:
        raise SystemExit(f"bpfsync {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def iperf(ns: str, target: str, seconds: float, udp: bool) -> float:
    """Receiver-side Gbit/s (TCP) or packets per second (UDP, 64-byte payloads)."""
    cmd = ["ip", "netns", "exec", ns, tools.tool("iperf3"), "-c", target, "-p", str(PORT), "-t",
           str(seconds), "-J"]
    if udp:
        cmd += ["-u", "-l", "64", "-b", "0"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True,
                                    timeout=seconds + 30).stdout)
    if udp:
        s = out["end"]["sum"]
        return (s["packets"] - s["lost_packets"]) / s["seconds"]
    return out["end"]["sum_received"]["bits_per_second"] / 1e9


def prepare(d: Path, write, net, ipv6: bool, **kw) -> Path:
    """One end's directory with a TCP and a UDP Service on the iperf3 port (and their IPv6
    twins where ipv6)."""
    write(d, net, **kw)
    (d / "service.yaml").write_text(service_doc(proxy_port=PORT, backend_port=PORT))
    (d / "udp.yaml").write_text(service_doc("iperf-udp", sid=2, protocol="udp", proxy_port=PORT,
                                            backend_port=PORT))
    if ipv6:
        (d / "service6.yaml").write_text(service_doc("iperf6", sid=6, proxy_port=PORT,
                                                     backend_port=PORT, ipv6=True))
        (d / "udp6.yaml").write_text(service_doc("iperf6-udp", sid=7, protocol="udp",
                                                 proxy_port=PORT, backend_port=PORT, ipv6=True))
    return d


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--smoke", action="store_true", help="one round of 1 s runs (CI)")
    ap.add_argument("--ipv6", action="store_true", help="IPv6 inside the tunnel too")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds = 1, 1
    owned.private_state_dir()  # the history of its pin roots goes with it
    tag = uuid.uuid4().hex[:8]
    gw_root, node_root = (Path(f"/sys/fs/bpf/bpfsync-bench-{x}-{tag}") for x in ("gw", "node"))
    tmp = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
    families = {"IPv4": (BACKEND[0], PROXY[0])}
    if args.ipv6:
        families["IPv6"] = (BACKEND6[0], PROXY6[0])
    underlays = ["IPv4", "IPv6"] if args.ipv6 else ["IPv4"]
    results: dict[str, list[float]] = {f"{f} {k}": [] for f in families for k in (
        "tcp_base", "udp_base")}
    results.update({f"{f} {k} {u}": [] for f in families for u in underlays
                    for k in ("tcp_tun", "udp_tun")})
    try:
        with gue_topology(args.ipv6) as net:
            net.run(net.gw, f"ip route add {BACKEND[0]}/32 via 192.0.2.2 dev g1")
            if args.ipv6:
                net.run(net.gw, f"ip -6 route add {BACKEND6[0]}/128 via 2001:db8:1::2 dev g1")
            gdir = prepare(tmp / "gw", write_gateway, net, args.ipv6,
                           remote="{address: 192.0.2.2, port: 6080}")
            ndir = prepare(tmp / "node", write_node, net, args.ipv6)
            tunnels = [{"IPv4": (gdir / "tunnel.yaml").read_text(),  # fixed remotes both
                        "IPv6": tunnel6_doc(False, "{address: '2001:db8:1::2'}")},
                       {"IPv4": (ndir / "tunnel.yaml").read_text(), "IPv6": tunnel6_doc(True)}]
            servers = [net.spawn(net.node, [tools.tool("iperf3"), "-s", "-B", backend, "-p",
                                            str(PORT)]) for backend, _ in families.values()]
            for _ in range(args.rounds):
                for d, root in ((gdir, gw_root), (ndir, node_root)):
                    (d / "interface.yaml").rename(d / "interface.off")
                    bpfsync("apply", "-q", str(d), root=root)  # detached: baseline path
                for f, (backend, _) in families.items():
                    results[f"{f} tcp_base"].append(iperf(net.client, backend, args.seconds, False))
                    results[f"{f} udp_base"].append(iperf(net.client, backend, args.seconds, True))
                for u in underlays:
                    for d, root, tunnel in ((gdir, gw_root, tunnels[0]),
                                            (ndir, node_root, tunnels[1])):
                        if (d / "interface.off").exists():
                            (d / "interface.off").rename(d / "interface.yaml")
                        (d / "tunnel.yaml").write_text(tunnel[u])
                        bpfsync("apply", "-q", str(d), root=root)
                    for f, (_, proxy) in families.items():
                        results[f"{f} tcp_tun {u}"].append(
                            iperf(net.client, proxy, args.seconds, False))
                        results[f"{f} udp_tun {u}"].append(
                            iperf(net.client, proxy, args.seconds, True))
            stats = json.loads(bpfsync("get", "stats", "-o", "json", root=gw_root))
            for server in servers:
                net.stop(server)
    finally:
        shutil.rmtree(gw_root, ignore_errors=True)
        shutil.rmtree(node_root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"rounds: {args.rounds} x {args.seconds:g} s per measurement")
    print("| inside | path | TCP Gbit/s (median; all) | UDP 64-byte packets/s (median; all) |")
    print("|---|---|---:|---:|")
    for f in families:
        rows = [("veth path, no program", f"{f} tcp_base", f"{f} udp_base")]
        rows += [(f"GUE tunnel, {u} underlay", f"{f} tcp_tun {u}", f"{f} udp_tun {u}")
                 for u in underlays]
        for label, t, u in rows:
            print(f"| {f} | {label} | {med[t]:.2f} ({', '.join(f'{x:.2f}' for x in results[t])})"
                  f" | {med[u]:,.0f} ({', '.join(f'{x:,.0f}' for x in results[u])}) |")
        for u in underlays:
            print(f"| {f} | tunnel ({u} underlay) / no program | "
                  f"**{med[f'{f} tcp_tun {u}'] / med[f'{f} tcp_base']:.2f}** | "
                  f"**{med[f'{f} udp_tun {u}'] / med[f'{f} udp_base']:.2f}** |")
    print("gateway counters: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))


if __name__ == "__main__":
    main()
