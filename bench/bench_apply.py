"""Foundation benchmark: bpfsync apply/diff versus a bpftool loop, the kernel floor and the parse
floor, for 1k/10k/100k services (300k and 1M too), side by side in one run.

    .venv/bin/python bench/bench_apply.py [--sizes 1000,10000,100000] [--bpftool-sample 1000]

A size beyond the default Service capacity (131,072) gets a pin root made for it, as an
operator would: `--capacity services=N` (here $BPFSYNC_CAPACITY) at its first apply.

Every figure except (e) is the wall time of a fresh process, as a user would run it.
(d) runs `bpftool map update` for a bounded sample of entries and extrapolates per entry.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.core import capacity, registry  # noqa: E402
from reconciler.core.capacity import Capacities  # noqa: E402
from reconciler.core.compile import compile_tables  # noqa: E402
from reconciler.engine import open_pinned  # noqa: E402
from reconciler.kernel import libbpf  # noqa: E402
from reconciler.kernel.maps import ReadOnDemand  # noqa: E402
from reconciler.load.directory import load_directory  # noqa: E402
from tests.kernel import owned  # noqa: E402
from tests.kernel.desired import KEY_ENV, PER_FILE, write_services  # noqa: E402

PARSE_FLOOR = """
import sys, yaml
from pathlib import Path
for f in sorted(Path(sys.argv[1]).glob("*.yaml")):
    list(yaml.load_all(f.read_text(), Loader=yaml.CSafeLoader))
"""


def _tree_rss_kib(root: int) -> int:
    """Summed RSS of a process and all its descendants (workers included)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE") // 1024
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """(seconds, exit code, peak RSS of the process tree in MiB, sampled every 50 ms)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, _tree_rss_kib(proc.pid))
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    return elapsed, proc.returncode, peak // 1024


def capacity_for(n: int, asked: dict[str, int]) -> dict[str, int]:
    """The --capacity of the pin root for n Services: asked, with room for n Services ({}
    when the defaults hold them)."""
    services = asked.get("services", registry.default_capacities().of("services"))
    return {**asked, "services": n} if n > services else asked


def capacity_text(requested: dict[str, int]) -> str:
    return ",".join(f"{group}={size}" for group, size in requested.items())


def bpftool_loop(pin_root: Path, entries: list[tuple[str, bytes, bytes]], sample: int,
                 requested: dict[str, int]) -> float:
    """Seconds per entry of one `bpftool map update` process per entry (the seeds' CLIs)."""
    tables = open_pinned(pin_root, create=True, capacity=requested)
    tables.close()
    chosen = entries[:sample]
    started = time.perf_counter()
    for table, key, value in chosen:
        subprocess.run(["bpftool", "map", "update", "pinned", str(pin_root / "maps" / table),
                        "key", "hex", *(f"{b:02x}" for b in key),
                        "value", "hex", *(f"{b:02x}" for b in value)], check=True)
    return (time.perf_counter() - started) / len(chosen)


def kernel_floor(pin_root: Path, desired: dict[str, dict[bytes, bytes]],
                 requested: dict[str, int]) -> float:
    """Seconds for one libbpf batch update per table of the already-encoded entries."""
    tables = open_pinned(pin_root, create=True, capacity=requested)
    try:
        buffers = [(tables.fds[name], b"".join(e), b"".join(e.values()), len(e))
                   for name, e in desired.items() if e]
        started = time.perf_counter()
        for fd, keys, values, n in buffers:
            libbpf.update_batch(fd, keys, values, n)
        return time.perf_counter() - started
    finally:
        tables.close()


def phases(directory: Path, pin_root: Path, capacities: Capacities) -> dict[str, float]:
    """In-process split of a no-op diff, to show what share is parsing."""
    from reconciler.core.planning import compute_plan
    from reconciler.load import directory as load
    from reconciler.load import files as per_file
    from reconciler.load import source
    from reconciler.load.scan import scan
    from reconciler.load.schema import Schemas

    out: dict[str, float] = {}
    schemas = Schemas()
    t0 = time.perf_counter()
    files, _ = scan(directory)
    docs = []
    for f in files:
        src, _ = source.read(f)
        parsed, _ = source.parse(src)
        docs += parsed
    t1 = time.perf_counter()
    keys = per_file.KeyCache()
    results = [per_file.FileResult("", [], [per_file.check_document(d, schemas, keys)
                                             for d in docs])]
    state, invalid, _ = load.assemble(results)
    load.cross_check(state, invalid, capacities)
    t2 = time.perf_counter()
    tables = open_pinned(pin_root, create=False)
    try:  # as the command does it: the compile reads the names table, the rest is compared
        observed = ReadOnDemand(tables, registry.ENTRY_TABLES)  # as it is read
        desired = compile_tables(state, None, None, pin_root, observed)
        t3 = time.perf_counter()
        compute_plan(desired, observed, None, observed.entries)
        t4 = time.perf_counter()
    finally:
        tables.close()
    out.update(parse=t1 - t0, validate_build_check=t2 - t1, compile=t3 - t2, compare=t4 - t3)
    return out


def bench(n: int, sample: int, work: Path, asked: dict[str, int]) -> dict[str, float]:
    requested = capacity_for(n, asked)
    capacities = capacity.settle(registry.default_capacities().sizes, requested, {})
    env = {**os.environ, **KEY_ENV, "BPFSYNC_CAPACITY": capacity_text(requested)}
    os.environ.update(KEY_ENV)
    directory = write_services(work / f"d{n}", n)
    pin = Path(f"/sys/fs/bpf/bpfsync-bench-{os.getpid()}-{n}")
    scratch = Path(f"/sys/fs/bpf/bpfsync-bench-{os.getpid()}-{n}-scratch")
    bpfsync = [sys.executable, "-m", "reconciler", "--pin-root", str(pin)]
    r: dict[str, float] = {"n": n, "capacity": capacities.of("services")}
    try:
        r["a_cold_apply"], code, r["a_rss_mib"] = run([*bpfsync, "apply", "-q", str(directory)], env)
        assert code == 0, code
        sized = open_pinned(pin, create=False)
        try:  # the pin root has the capacities asked for
            assert sized.capacities == capacities, (sized.capacities, capacities)
        finally:
            sized.close()
        r["b_noop_diff"], code, r["b_rss_mib"] = run([*bpfsync, "diff", str(directory)], env)
        assert code == 0, code
        write_services(directory, n, changed={n // 2: 9999})
        r["c_one_change"], code, _ = run([*bpfsync, "apply", "-q", str(directory)], env)
        assert code == 0, code
        desired = compile_tables(load_directory(directory, capacities=capacities)).entries
        entries = [(name, k, v) for name, e in desired.items() for k, v in e.items()]
        r["entries"] = len(entries)
        per_entry = bpftool_loop(scratch, entries, min(sample, len(entries)), requested)
        shutil.rmtree(scratch)
        r["d_bpftool_loop"] = per_entry * len(entries)
        r["d_per_entry_ms"] = per_entry * 1000
        r["e_kernel_floor"] = kernel_floor(scratch, desired, requested)
        r["f_parse_floor"], _, _ = run([sys.executable, "-c", PARSE_FLOOR, str(directory)], env)
        r.update({f"phase_{k}": v for k, v in phases(directory, pin, capacities).items()})
    finally:
        shutil.rmtree(pin, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return r


def report(results: list[dict[str, float]]) -> str:
    lines = [
        "| services | capacity | entries | (a) cold apply | (b) no-op diff | (c) one change | "
        "(d) bpftool loop | (e) kernel floor | (f) parse floor | a ÷ d | a ÷ (e+f) | b ÷ f | "
        "peak RSS a / b |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {r['capacity']:,} | {r['entries']:,} | {r['a_cold_apply']:.2f} s | "
            f"{r['b_noop_diff']:.2f} s"
            f" | {r['c_one_change']:.2f} s | {r['d_bpftool_loop']:.1f} s "
            f"({r['d_per_entry_ms']:.2f} ms/entry) | {r['e_kernel_floor'] * 1000:.1f} ms | "
            f"{r['f_parse_floor']:.2f} s | {r['a_cold_apply'] / r['d_bpftool_loop']:.3f} | "
            f"{r['a_cold_apply'] / (r['e_kernel_floor'] + r['f_parse_floor']):.2f} | "
            f"{r['b_noop_diff'] / r['f_parse_floor']:.2f} | "
            f"{r['a_rss_mib']:.0f} / {r['b_rss_mib']:.0f} MiB |")
    lines += ["", "Split of a no-op diff measured in one process without workers (seconds; parse = "
              "read + libyaml + PyYAML's constructor):", "",
              "| services | parse | validate+build+check | compile (names read) | "
              "compare with the kernel (read as compared) | parse share |",
              "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['n']:,} | {r['phase_parse']:.2f} | {r['phase_validate_build_check']:.2f} | "
            f"{r['phase_compile']:.2f} | {r['phase_compare']:.2f} | "
            f"{r['phase_parse'] / sum(v for k, v in r.items() if k.startswith('phase_')):.0%} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--bpftool-sample", type=int, default=1000)
    p.add_argument("--capacity", default="", help="the pin roots' --capacity (GROUP=N,...); "
                   "a size beyond it gets a Service capacity of that size")
    p.add_argument("--smoke", action="store_true",
                   help="200 services in tables sized 2,048 (CI: every path, seconds)")
    args = p.parse_args()
    if args.smoke:
        args.sizes, args.bpftool_sample, args.capacity = "200", 50, "services=2048"
    asked = capacity.parse(args.capacity, registry.CAPACITY_GROUPS)
    owned.private_state_dir()  # the history of its pin roots goes with it
    with tempfile.TemporaryDirectory(prefix="bpfsync-bench-") as tmp:
        results = [bench(int(n), args.bpftool_sample, Path(tmp), asked)
                   for n in args.sizes.split(",")]
    print(f"{PER_FILE} services per file; {os.cpu_count()} CPUs")
    print(report(results))


if __name__ == "__main__":
    main()
