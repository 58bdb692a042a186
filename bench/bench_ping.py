"""What a GUE ping's MAC costs the receiving program, per packet, side by side in one run:
BPF_PROG_TEST_RUN of the attached (pinned) gateway ingress program (bpf/trueingress.c) on

  pass          a UDP datagram that is not for the tunnel (the floor: parse and one lookup)
  ping          an authentic ping (SipHash-2-4 verified; after the first run every repeat is
                a replay, refused after the MAC and the clock check: the full verification)
  forged        a ping with a wrong MAC (one SipHash; two on a tunnel holding a nextKey)

Data packets carry no MAC (bench_gue.py measures them with real traffic); decapsulation also
changes the packet the repeats of one BPF_PROG_TEST_RUN would run on.

    .venv/bin/python bench/bench_ping.py [--repeat 1000000] [--smoke]

Needs root. Everything it creates (a namespace, pins) is removed at the end.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_intercept import test_run  # noqa: E402
from reconciler.datapath.pinger import ping_payload  # noqa: E402
from reconciler.kernel import libbpf  # noqa: E402
from reconciler.load.secrets import Secret  # noqa: E402
from tests.kernel import owned  # noqa: E402
from tests.kernel.guekit import ipv4_udp  # noqa: E402

KEY, NEXT = "tunnel-key-0001", "tunnel-key-0002"
SERVICE_KEY = "service-key-01"
REMOTE = "192.0.2.2"

CONFIG = """\
apiVersion: bpfsync/v1
kind: Tunnel
metadata: {{name: t{tid}}}
spec:
  id: {tid}
  local: {{address: 192.0.2.1, port: {port}}}
  remote: learn
  key: {key}
{extra}---
"""
SERVICE = """\
apiVersion: bpfsync/v1
kind: Service
metadata: {name: dns}
spec:
  groupId: 1
  serviceId: 2
  protocol: udp
  proxy: {address: 203.0.113.10, port: 53}
  backend: {address: 203.0.113.100, port: 5353}
  tunnel: t100
  key: service-key-01
---
apiVersion: bpfsync/v1
kind: Interface
metadata: {name: wire}
spec:
  device: DEVICE
  netns: NETNS
  role: gateway
"""


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True,
                          timeout=600).stdout


def frame(payload: bytes, port: int = 6080) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ipv4_udp(REMOTE, 6080, "192.0.2.1", port,
                                                               payload)


def packets() -> dict[str, tuple[bytes, int]]:
    """name -> (frame, expected verdict: 0 TC_ACT_OK, 2 TC_ACT_SHOT)."""
    key = Secret(KEY.encode().ljust(16, b"\0"))
    wrong = Secret(b"guessed".ljust(16, b"\0"))
    return {
        "pass": (frame(b"x" * 24, port=9), 0),
        "ping (1 key)": (frame(ping_payload(101, key), port=6081), 2),
        "ping (2 keys)": (frame(ping_payload(100, key)), 2),
        "forged (1 key)": (frame(ping_payload(101, wrong), port=6081), 2),
        "forged (2 keys)": (frame(ping_payload(100, wrong)), 2),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--smoke", action="store_true", help="one short round (CI)")
    args = ap.parse_args()
    owned.private_state_dir()  # the history of its pin roots goes with it
    if args.smoke:
        args.repeat, args.rounds = 1000, 1
    tag = uuid.uuid4().hex[:6]
    ns, device = f"bpfsync-bench-ping-{tag}", f"bbp{tag}"
    pin_root = Path(f"/sys/fs/bpf/bpfsync-bench-ping-{tag}")
    work = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
    results: dict[str, list[float]] = {}
    try:
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link add {device} type veth peer name {device}p")
        sh(f"ip -n {ns} addr add 192.0.2.1/24 dev {device}")
        sh(f"ip -n {ns} link set {device} up")
        sh(f"ip -n {ns} link set {device}p up")
        (work / "all.yaml").write_text(
            CONFIG.format(tid=100, port=6080, key=KEY, extra=f"  nextKey: {NEXT}\n")
            + CONFIG.format(tid=101, port=6081, key=KEY, extra="")
            + SERVICE.replace("DEVICE", device).replace("NETNS", ns))
        sh(f"{sys.executable} -m reconciler --pin-root {pin_root} apply -q {work}")
        pin = next(p for p in (pin_root / "progs").iterdir() if "ingress" in p.name)
        fd = libbpf.obj_get(str(pin))
        try:
            cases = packets()
            # the first authentic pings are accepted; every repeat after them is a replay
            for name in ("ping (2 keys)", "ping (1 key)"):
                test_run(fd, cases[name][0], 1)
            for _ in range(args.rounds):  # interleaved rounds, medians
                for name, (pkt, verdict) in cases.items():
                    got, ns_per = test_run(fd, pkt, args.repeat)
                    assert got == verdict, (name, got)
                    results.setdefault(name, []).append(ns_per)
        finally:
            os.close(fd)
        stats = json.loads(sh(f"{sys.executable} -m reconciler --pin-root {pin_root} "
                              "get stats -o json"))
    finally:
        subprocess.run(f"ip netns del {ns}", shell=True, check=False)
        shutil.rmtree(pin_root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"repeat {args.repeat} x {args.rounds} rounds (BPF_PROG_TEST_RUN, ns per packet)")
    print("| packet | ns (median; all) | over pass |")
    print("|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {med[name]:.0f} ({', '.join(f'{v:.0f}' for v in values)}) | "
              f"{med[name] - med['pass']:+.0f} |")
    print("counters: " + ", ".join(f"{k}={v}" for k, v in stats.items() if v))
    assert stats["ping"] == 2 and stats["ping_replay"] > 0 and stats["ping_bad_key"] > 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
