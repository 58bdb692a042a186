"""Daemon benchmark: file-save -> kernel-updated latency of `bpfsync run` at 1k and 100k
services, side by side with what a user without the daemon does (save, then run
`bpfsync apply`), plus the daemon's idle CPU and RSS, and the time and size of a /metrics
scrape (the daemon runs with --metrics; its size must not grow with the number of Services).

    .venv/bin/python bench/bench_daemon.py [--sizes 1000,100000] [--edits 200] [--idle 60]
        [--apply-edits N]
    .venv/bin/python bench/bench_daemon.py --smoke     # 200 services, 3 edits (CI)

Each edit rewrites one file of 100 services (temp file + rename, as Ansible does), changing
one backend; latency is from the rename to the moment the new backend is read back from the
pinned ti_verify map (polled every 1 ms). Debounce is the default (0.1 s) and included.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.core import registry  # noqa: E402
from reconciler.datapath.supervisor import run_dir  # noqa: E402
from reconciler.gue import tables as gt  # noqa: E402
from reconciler.kernel import libbpf  # noqa: E402
from tests.kernel import owned  # noqa: E402
from tests.kernel.daemonkit import RunningDaemon, cpu_seconds, wait_for  # noqa: E402
from tests.kernel.desired import KEY_ENV, PER_FILE, service_doc, write_services  # noqa: E402

BPFFS = Path("/sys/fs/bpf")


def backend_port(root: Path, i: int) -> int | None:
    fd = libbpf.obj_get(str(root / "maps" / gt.VERIFY.name))
    try:
        raw = libbpf.lookup_elem(fd, gt.sid_key(*divmod(i, 65536)), gt.VERIFY.value_size)
    finally:
        os.close(fd)
    return None if raw is None else int(registry.decode_value(gt.VERIFY.name, raw)["backend"].split(":")[1])


def edit(directory: Path, i: int, port: int) -> None:
    start = i - i % PER_FILE
    path = directory / f"services-{start // PER_FILE:05d}.yaml"
    text = "---\n".join(service_doc(j, port if j == i else 8080)
                        for j in range(start, start + PER_FILE))
    tmp = path.with_name(f".ansible_tmp{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def measure(directory: Path, root: Path, edits: int, apply_each: bool, size: int) -> list[float]:
    out = []
    for n in range(edits):
        i = (n * 7919) % size
        port = 10000 + n
        began = time.monotonic()
        edit(directory, i, port)
        if apply_each:
            subprocess.run([sys.executable, "-m", "reconciler", "--pin-root", str(root),
                            "apply", "-q", str(directory)], check=True, env={**os.environ,
                                                                            **KEY_ENV},
                           capture_output=True)
        wait_for(lambda i=i, p=port: backend_port(root, i) == p, 60, 0.001)
        out.append(time.monotonic() - began)
        edit(directory, i, 8080)  # put it back (its own reconcile happens before the next)
        if apply_each:
            subprocess.run([sys.executable, "-m", "reconciler", "--pin-root", str(root),
                            "apply", "-q", str(directory)], check=True, env={**os.environ,
                                                                            **KEY_ENV},
                           capture_output=True)
        wait_for(lambda i=i: backend_port(root, i) == 8080, 60, 0.001)
    return sorted(out)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))]


def scrape(where: str, rounds: int = 20) -> dict[str, float]:
    """Median time of a /metrics scrape, and the size of the body (bytes)."""
    times, size = [], 0
    for _ in range(rounds):
        t0 = time.perf_counter()
        body = urllib.request.urlopen(f"http://{where}/metrics", timeout=60).read()
        times.append(time.perf_counter() - t0)
        size = len(body)
    return {"scrape_ms": statistics.median(times) * 1000, "metrics_bytes": size}


def run(size: int, edits: int, idle: float, apply_edits: int | None) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-daemon-"))
    root = BPFFS / f"bpfsync-bench-daemon-{os.getpid()}-{size}"
    directory = write_services(work / "desired", size)
    daemon = RunningDaemon(directory, root, work / "daemon.log", "--metrics", "127.0.0.1:0",
                           env=KEY_ENV)
    result: dict[str, float] = {}
    try:
        began = time.monotonic()
        daemon.start()
        result["first_reconcile_s"] = time.monotonic() - began
        lat = measure(directory, root, edits, False, size)
        result.update(daemon_p50=statistics.median(lat), daemon_p99=pct(lat, 0.99),
                      daemon_max=lat[-1])
        assert daemon.proc is not None
        pid = daemon.proc.pid
        worker = daemon.status()["dataPath"].get("workerPid")
        result["rss_mib"] = rss_mib(pid)
        result.update(scrape(daemon.status()["daemon"]["metrics"]))
        c0, w0, t0 = cpu_seconds(pid), cpu_seconds(worker) if worker else 0.0, time.monotonic()
        time.sleep(idle)
        elapsed = time.monotonic() - t0
        result["idle_cpu_pct"] = 100 * (cpu_seconds(pid) - c0) / elapsed
        if worker:
            result["worker_idle_cpu_pct"] = 100 * (cpu_seconds(worker) - w0) / elapsed
            result["worker_rss_mib"] = rss_mib(worker)
        daemon.stop()
        # without the daemon: save, then `bpfsync apply` (a fresh process parses everything)
        n = apply_edits or (max(3, edits // 10) if size > 10_000 else edits)
        lat = measure(directory, root, n, True, size)
        result.update(apply_p50=statistics.median(lat), apply_p99=pct(lat, 0.99))
    finally:
        daemon.cleanup()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(run_dir(root), ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,100000")
    ap.add_argument("--edits", type=int, default=200,
                    help="saves measured per size (p99 needs >= 100 to be more than the "
                         "maximum)")
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--apply-edits", type=int, default=None,
                    help="saves measured with `bpfsync apply` instead of the daemon (default: "
                         "a tenth of --edits above 10k services, each takes seconds there)")
    ap.add_argument("--smoke", action="store_true", help="200 services, 3 edits, 1 s idle")
    args = ap.parse_args()
    owned.private_state_dir()  # the history of its pin roots goes with it
    if args.smoke:
        args.sizes, args.edits, args.idle = "200", 3, 1.0
    tail = "p99" if args.edits >= 100 else "max"  # the 99th of fewer than 100 is the max
    print(f"| services | daemon p50 | daemon {tail} ({args.edits} saves) "
          "| save + `bpfsync apply` p50 | ratio (p50) "
          "| first reconcile | idle CPU (daemon / worker) | RSS (daemon / worker) "
          "| scrape p50 | /metrics |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        r = run(size, args.edits, args.idle, args.apply_edits)
        print(f"| {size:,} | {r['daemon_p50'] * 1000:.0f} ms | {r['daemon_p99'] * 1000:.0f} ms "
              f"| {r['apply_p50'] * 1000:.0f} ms | {r['apply_p50'] / r['daemon_p50']:.1f}x "
              f"| {r['first_reconcile_s']:.1f} s "
              f"| {r['idle_cpu_pct']:.2f} % / {r.get('worker_idle_cpu_pct', 0):.2f} % "
              f"| {r['rss_mib']:.0f} / {r.get('worker_rss_mib', 0):.0f} MiB "
              f"| {r['scrape_ms']:.1f} ms | {r['metrics_bytes'] / 1024:.1f} KiB |", flush=True)


if __name__ == "__main__":
    main()
