"""The same work done by two commits of bpfsync, side by side in one run: what a refactoring
costs or saves. Each round runs both trees in turn (the order alternates), on the same
directory, each into a pin root of its own; medians over the rounds.

    .venv/bin/python bench/bench_versions.py --old REV [--sizes 10000,100000] [--rounds 5]
    .venv/bin/python bench/bench_versions.py --smoke     # CI: 200 services, HEAD vs HEAD

Measured per size, as a user runs it (a fresh process, Python start-up included):
(a) cold `apply` into an empty pin root, (b) no-op `diff`, (c) `apply` after one service's
backend changed, (v) `validate`.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.kernel import owned  # noqa: E402
from tests.kernel.desired import KEY_ENV, write_services  # noqa: E402

PIN_PARENT = Path("/sys/fs/bpf")


def _timed(tree: Path, args: list[str], pin_root: Path) -> float:
    env = {**os.environ, **KEY_ENV, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "reconciler", "--pin-root", str(pin_root), *args],
                   env=env, cwd=tree, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _round(tree: Path, directory: Path, changed: Path, tag: str) -> dict[str, float]:
    pin_root = PIN_PARENT / f"bpfsync-test-versions-{os.getpid()}-{tag}"
    try:
        return {"(a) cold apply": _timed(tree, ["apply", str(directory)], pin_root),
                "(b) no-op diff": _timed(tree, ["diff", str(directory)], pin_root),
                "(c) one change": _timed(tree, ["apply", str(changed)], pin_root),
                "(v) validate": _timed(tree, ["validate", str(directory)], pin_root)}
    finally:
        shutil.rmtree(pin_root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--old", default="HEAD", help="the commit to compare the working tree with")
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    owned.private_state_dir()  # the history of its pin roots goes with it
    sizes = [200] if args.smoke else [int(s) for s in args.sizes.split(",")]
    rounds = 1 if args.smoke else args.rounds
    old_rev = "HEAD" if args.smoke else args.old
    with tempfile.TemporaryDirectory(prefix="bpfsync-test-versions-") as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old),
                        old_rev], check=True)
        try:
            commit = subprocess.run(["git", "-C", str(old), "rev-parse", "--short", "HEAD"],
                                    check=True, capture_output=True, text=True).stdout.strip()
            print(f"old: {old_rev} ({commit}); new: the working tree; {rounds} rounds, medians")
            print("| services | measure | old | new | new ÷ old |\n|---:|---|---:|---:|---:|")
            for n in sizes:
                directory = write_services(Path(tmp) / f"d{n}", n)
                changed = write_services(Path(tmp) / f"c{n}", n, {n // 2: 9090})
                times: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
                for r in range(rounds):
                    order = [("old", old), ("new", ROOT)]
                    for name, tree in (order if r % 2 == 0 else order[::-1]):
                        for k, v in _round(tree, directory, changed, f"{name}{r}").items():
                            times[name].setdefault(k, []).append(v)
                for k in times["old"]:
                    a, b = statistics.median(times["old"][k]), statistics.median(times["new"][k])
                    print(f"| {n:,} | {k} | {a:.2f} s | {b:.2f} s | {b / a:.2f} |")
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           check=False)


if __name__ == "__main__":
    main()
