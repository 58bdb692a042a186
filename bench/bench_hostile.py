"""The error path at scale: `bpfsync validate` of 100k Services when all are valid, when one
document has an error, and when 1,000 have one — time and peak RSS side by side, rounds
interleaved, medians. Target: with errors <= 2x valid in both.

    .venv/bin/python bench/bench_hostile.py [--services 100000] [--rounds 3] [--smoke]

Each run is a fresh `bpfsync validate` process (its own peak RSS, read from getrusage at its
exit); keys come from the environment, as in production directories.
--smoke: 1,000 Services, one round (CI runs it: the benchmark must not rot).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kernel.desired import KEY_ENV, PER_FILE, write_services  # noqa: E402

CHILD = r"""
import resource, sys, json
from reconciler.cli import main
try:
    main(["validate", sys.argv[1]])
except SystemExit as exc:
    code = exc.code
print(json.dumps({"exit": code, "rssMiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                  / 1024}), file=sys.stderr)
"""


def spoil(directory: Path, files: int) -> None:
    """One bad port in each of the first `files` files."""
    for f in sorted(directory.glob("services-*.yaml"))[:files]:
        f.write_text(f.read_text().replace("port: 8080", "port: 99999", 1))


def run(directory: Path) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", CHILD, str(directory)], capture_output=True,
                       text=True, env={**os.environ, **KEY_ENV}, cwd=ROOT, timeout=1800)
    took = time.perf_counter() - t0
    doc = json.loads(r.stderr.strip().splitlines()[-1])
    return took, doc["rssMiB"], doc["exit"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--services", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    services, rounds = (1000, 1) if args.smoke else (args.services, args.rounds)
    errors = min(1000, services // PER_FILE)
    with tempfile.TemporaryDirectory(prefix="bpfsync-bench-") as tmp:
        dirs = {}
        for label, bad in (("valid", 0), ("1 error", 1), (f"{errors} errors", errors)):
            d = write_services(Path(tmp) / label.replace(" ", "-"), services)
            spoil(d, bad)
            dirs[label] = d
        results: dict[str, list[tuple[float, float]]] = {k: [] for k in dirs}
        for _ in range(rounds):
            for label, d in dirs.items():
                took, rss, code = run(d)
                assert code == (0 if label == "valid" else 1), (label, code)
                results[label].append((took, rss))
    print(f"{services:,} Services in {services // PER_FILE} files, {rounds} rounds (medians)")
    base_t = statistics.median(t for t, _ in results["valid"])
    base_m = statistics.median(m for _, m in results["valid"])
    for label, rows in results.items():
        t, m = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
        print(f"  {label:>12}: {t:7.2f} s (x{t / base_t:.2f})   peak RSS {m:7.1f} MiB "
              f"(x{m / base_m:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
