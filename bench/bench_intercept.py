"""Intercept rule-lookup cost, side by side in one run: the same ic_egress program with 10
rules and with 10,000 rules compiled into ic_rules (applied by `bpfsync apply` from YAML).

  per packet: BPF_PROG_TEST_RUN of the attached (pinned) program on a UDP packet that the
              last rule decides (drop) and on one no rule matches, --repeat times: ns/packet
  on a veth:  UDP packets sent by a bounded sender in a namespace out of the veth with the
              program on its egress; the drop rule decides each: packets/s counted by the
              program (ic_stats), so the sender's speed bounds it; same sender for both

    .venv/bin/python bench/bench_intercept.py [--repeat 2000000] [--seconds 3] [--ipv6]

With --ipv6 every rule names an IPv6 prefix too (2001:db8:I::/64, compiled into ic_rules6)
and the per-packet cost is measured for IPv6 packets as well, in the same run.

Needs root. Everything it creates (namespaces, pins, processes) is removed at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler import engine  # noqa: E402
from reconciler.intercept.counters import intercept_counters  # noqa: E402
from reconciler.kernel import libbpf  # noqa: E402
from tests.kernel import owned  # noqa: E402

SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
end = time.monotonic() + float(sys.argv[3])
n, payload, dest = 0, b"x" * 18, (sys.argv[1], int(sys.argv[2]))
while time.monotonic() < end:
    for _ in range(1000):
        try:
            s.sendto(payload, dest)
        except OSError:
            pass
    n += 1000
print(n)
"""


class TestRunOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True,
                          timeout=900).stdout


def udp_packet(dst: str, dport: int) -> bytes:
    payload = b"x" * 18
    udp = struct.pack("!HHHH", 40000, dport, 8 + len(payload), 0) + payload
    if ":" in dst:
        ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                          socket.inet_pton(socket.AF_INET6, "2001:db8::1"),
                          socket.inet_pton(socket.AF_INET6, dst))
        return b"\x02" * 6 + b"\x04" * 6 + b"\x86\xdd" + ip6 + udp
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton("192.0.2.1"), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def test_run(prog_fd: int, packet: bytes, repeat: int) -> tuple[int, float]:
    buf = ctypes.create_string_buffer(packet)
    out = ctypes.create_string_buffer(len(packet) + 256)
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts), data_in=ctypes.addressof(buf),
                       data_out=ctypes.addressof(out), data_size_in=len(packet),
                       data_size_out=len(out), repeat=repeat)
    fn = libbpf.lib().bpf_prog_test_run_opts
    fn.argtypes = [ctypes.c_int, ctypes.POINTER(TestRunOpts)]
    rc = fn(prog_fd, ctypes.byref(opts))
    if rc != 0:
        raise OSError(-rc, f"BPF_PROG_TEST_RUN failed: {os.strerror(-rc)}")
    return opts.retval, float(opts.duration)  # duration: average ns per run


def rules_yaml(n: int, ipv6: bool = False) -> str:
    """n rules; rule i drops UDP to 10.(i / 256).(i % 256).0/24 (and, with ipv6,
    2001:db8:i::/64) on port 1000 + i, so every rule is its own trie entry (per family) and
    the benchmark's packets meet the last one."""
    lines = []
    for i in range(n):
        six = f", '2001:db8:{i:x}::/64'" if ipv6 else ""
        lines.append(f"    - {{priority: {i + 1}, action: drop, protocol: udp, destinations: "
                     f"[10.{i // 256}.{i % 256}.0/24{six}], ports: [{1000 + i}]}}")
    return "\n".join(lines) + "\n"


def last_rule(n: int, ipv6: bool = False) -> tuple[str, int]:
    i = n - 1
    return (f"2001:db8:{i:x}::9" if ipv6 else f"10.{i // 256}.{i % 256}.9"), 1000 + i


def run(ns: str, device: str, work: Path, pin_root: Path, n: int, repeat: int,
        seconds: float, ipv6: bool) -> dict[str, float]:
    directory = work / f"rules-{n}"
    directory.mkdir()
    (directory / "intercept.yaml").write_text(
        "apiVersion: bpfsync/v1\nkind: Intercept\nmetadata: {name: bench}\nspec:\n  id: 1\n"
        f"  device: {device}\n  netns: {ns}\n  rules:\n" + rules_yaml(n, ipv6))
    t0 = time.perf_counter()
    sh(f"{sys.executable} -m reconciler --pin-root {pin_root} apply {directory}")
    apply_s = time.perf_counter() - t0
    entries = len(json.loads(sh(f"bpftool -j map dump pinned {pin_root}/maps/ic_rules")))
    pin = next(p for p in (pin_root / "progs").iterdir() if p.name.startswith(device))
    fd = libbpf.obj_get(str(pin))
    try:
        dst, port = last_rule(n)
        verdict, hit_ns = test_run(fd, udp_packet(dst, port), repeat)
        assert verdict == 2, verdict  # TC_ACT_SHOT: the last rule decided
        verdict, miss_ns = test_run(fd, udp_packet("198.51.100.7", 9), repeat)
        assert verdict == 0, verdict  # TC_ACT_OK: no rule
        six = {}
        if ipv6:
            verdict, six["hit6Ns"] = test_run(fd, udp_packet(*last_rule(n, True)), repeat)
            assert verdict == 2, verdict
            verdict, six["miss6Ns"] = test_run(fd, udp_packet("2001:db8:ffff::7", 9), repeat)
            assert verdict == 0, verdict
    finally:
        os.close(fd)
    before = stats_dropped(pin_root)
    sent = int(sh(f"ip netns exec {ns} {sys.executable} -c '{SENDER}' {dst} {port} {seconds}"))
    dropped = stats_dropped(pin_root) - before
    return {"rules": n, "entries": entries, "applySeconds": round(apply_s, 2),
            "hitNs": hit_ns, "missNs": miss_ns, "sent": sent,
            "droppedPps": round(dropped / seconds), **six}


def stats_dropped(pin_root: Path) -> int:
    return engine.read_pinned(pin_root, intercept_counters).get(1, {}).get("dropped", 0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2_000_000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--ipv6", action="store_true",
                    help="IPv6 prefixes in every rule, IPv6 packets measured too")
    ap.add_argument("--smoke", action="store_true", help="a few runs of the program (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.repeat, args.seconds = 10_000, 0.3
    owned.private_state_dir()  # the history of its pin roots goes with it
    tag = uuid.uuid4().hex[:6]
    ns, device = f"bbi-{tag}", f"bbi{tag}"
    work = Path(tempfile.mkdtemp(prefix="bpfsync-bench-"))
    results = []
    try:
        sh(f"ip netns add {ns}")
        sh(f"ip -n {ns} link set lo up")
        sh(f"ip -n {ns} link add {device} type veth peer name {device}p")
        sh(f"ip -n {ns} addr add 192.0.2.1/24 dev {device}")
        sh(f"ip -n {ns} link set {device} up")
        sh(f"ip -n {ns} link set {device}p up")
        sh(f"ip -n {ns} route add 10.0.0.0/8 via 192.0.2.2")
        sh(f"ip -n {ns} neigh add 192.0.2.2 lladdr 02:00:00:00:00:02 dev {device}")
        for n in (10, 10_000):
            pin_root = Path(f"/sys/fs/bpf/bpfsync-bench-{tag}-{n}")
            try:
                results.append(run(ns, device, work, pin_root, n, args.repeat, args.seconds,
                                   args.ipv6))
            finally:
                # the next size starts from scratch: filters and pins of this one go
                with suppress(subprocess.CalledProcessError):
                    sh(f"ip netns exec {ns} tc qdisc del dev {device} clsact")
                with suppress(subprocess.CalledProcessError):
                    sh(f"ip netns exec {ns} tc qdisc del dev lo clsact")
                shutil.rmtree(pin_root, ignore_errors=True)
    finally:
        subprocess.run(f"ip netns del {ns}", shell=True, check=False)
        shutil.rmtree(work, ignore_errors=True)
    small, large = results
    print(json.dumps(results, indent=2))
    print("\nrules        entries  ns/packet (last rule)  ns/packet (no rule)  "
          "veth drops/s (sender-bound)")
    for r in results:
        print(f"{r['rules']:>6}  {r['entries']:>9}  {r['hitNs']:>20.0f}  {r['missNs']:>19.0f}  "
              f"{r['droppedPps']:>12,}")
    print(f"ratio 10k/10: per packet x{large['hitNs'] / max(small['hitNs'], 1):.2f} (last rule), "
          f"x{large['missNs'] / max(small['missNs'], 1):.2f} (no rule); "
          f"veth x{large['droppedPps'] / max(small['droppedPps'], 1):.2f}")
    if args.ipv6:
        print("\nrules  IPv6 ns/packet (last rule)  IPv6 ns/packet (no rule)")
        for r in results:
            print(f"{r['rules']:>6}  {r['hit6Ns']:>26.0f}  {r['miss6Ns']:>24.0f}")
        print(f"IPv6/IPv4 at 10k: last rule x{large['hit6Ns'] / max(large['hitNs'], 1):.2f}, "
              f"no rule x{large['miss6Ns'] / max(large['missNs'], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
