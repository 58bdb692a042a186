"""Fleet workflows, side by side in one run:

(a) `bpfsync validate DIR` versus `bpfsync validate --in DIR --as NAME FILE` (Ansible's
    `validate:`) on the same directory: what checking one file in context costs;
(b) a one-file change reaching the kernel: saved in a watched directory (`bpfsync run DIR`)
    versus committed and pushed to the branch a `bpfsync run --pull` daemon follows (file://
    remote): latency until the daemon reports it applied, and how many files it parsed again.

    .venv/bin/python bench/bench_fleet.py --services 10000 --runs 5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.kernel import owned
from tests.kernel.daemonkit import RunningDaemon, wait_for
from tests.kernel.desired import KEY_ENV, service_doc, write_services
from tests.scratch import IDENTITY, git

BPFFS = Path("/sys/fs/bpf")
CLI = [sys.executable, "-m", "reconciler"]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return time.perf_counter() - start


def bench_validate(directory: Path, runs: int, env: dict[str, str]) -> tuple[float, float]:
    candidate = directory.parent / "candidate"
    candidate.write_text((directory / "services-00000.yaml").read_text().replace(
        "port: 8080", "port: 8081", 1))
    whole = [timed([*CLI, "validate", str(directory)], env) for _ in range(runs)]
    one = [timed([*CLI, "validate", "--in", str(directory), "--as", "services-00000.yaml",
                  str(candidate)], env) for _ in range(runs)]
    return statistics.median(whole), statistics.median(one)


def parsed_last(log: str) -> str:
    for line in reversed(log.splitlines()):
        if line.startswith("{") and '"reconcile"' in line:
            return str(json.loads(line).get("parsed", "?"))
    return "?"


def change_latency(daemon: RunningDaemon, change, applied) -> float:
    before = daemon.reconciles()
    start = time.perf_counter()
    change()
    wait_for(lambda: daemon.reconciles() > before and applied(daemon.status()), 120, 0.01)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--pull", type=float, default=1.0)
    ap.add_argument("--smoke", action="store_true", help="100 services, one run (CI)")
    args = ap.parse_args()
    if args.smoke:
        args.services, args.runs = 100, 1
    owned.private_state_dir()  # the history of its pin roots goes with it
    env = {**__import__("os").environ, **KEY_ENV}
    tmp = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    roots: list[Path] = []
    daemons: list[RunningDaemon] = []
    try:
        plain = write_services(tmp / "plain" / "desired", args.services)
        whole, one = bench_validate(plain, args.runs, env)
        print(f"(a) validate DIR {whole:.2f} s, validate --in DIR --as NAME FILE {one:.2f} s "
              f"(x{one / whole:.2f}), {args.services} services")

        # the same tree, committed to a bare repository and cloned for the pull daemon
        dev = tmp / "dev"
        write_services(dev / "hosts" / "gw1", args.services)
        git(tmp, "init", "-q", "--bare", "-b", "main", str(tmp / "config.git"))
        git(dev, "init", "-q", "-b", "main")
        git(dev, "add", "-A")
        git(dev, *IDENTITY, "commit", "-q", "-m", "all")
        git(dev, "remote", "add", "origin", f"file://{tmp / 'config.git'}")
        git(dev, "push", "-q", "origin", "main")
        git(tmp, "clone", "-q", f"file://{tmp / 'config.git'}", str(tmp / "host"))

        results: dict[str, list[float]] = {"watch": [], "pull": []}
        parsed: dict[str, str] = {}
        for mode in ("watch", "pull"):
            root = BPFFS / f"bpfsync-bench-fleet-{uuid.uuid4().hex[:8]}"
            roots.append(root)
            directory = plain if mode == "watch" else tmp / "host" / "hosts" / "gw1"
            extra = ("--pull", str(args.pull)) if mode == "pull" else ()
            d = RunningDaemon(directory, root, tmp / f"{mode}.log", "--no-datapath",
                              "--log-format", "json", "--resync", "3600", *extra, env=KEY_ENV)
            daemons.append(d)
            d.start()
            wait_for(lambda d=d: d.status()["lastApplied"], 300)
            for run in range(args.runs):
                port = 9000 + run
                text = "---\n".join(service_doc(i, port if i == 0 else 8080) for i in range(100))
                if mode == "watch":
                    def change(text=text) -> None:
                        tmp_file = plain / ".services-00000.yaml.tmp"
                        tmp_file.write_text(text)
                        tmp_file.rename(plain / "services-00000.yaml")  # as Ansible does

                    def applied(s: dict) -> bool:
                        return s["lastReconcile"]["result"] == "applied"
                else:
                    def change(text=text, run=run) -> None:
                        (dev / "hosts" / "gw1" / "services-00000.yaml").write_text(text)
                        git(dev, *IDENTITY, "commit", "-qam", f"change {run}")
                        git(dev, "push", "-q", "origin", "main")

                    def applied(s: dict) -> bool:
                        return (s["lastReconcile"]["result"] == "applied"
                                and s["git"]["applied"] == git(dev, "rev-parse", "HEAD"))
                results[mode].append(change_latency(d, change, applied))
            parsed[mode] = parsed_last(d.log())
            d.stop()
        w, p = statistics.median(results["watch"]), statistics.median(results["pull"])
        print(f"(b) one changed service to applied: watch {w * 1000:.0f} ms (parsed "
              f"{parsed['watch']} file), pull every {args.pull:g}s {p * 1000:.0f} ms (parsed "
              f"{parsed['pull']} file) (x{p / w:.2f}); runs {args.runs}")
    finally:
        for d in daemons:
            d.cleanup()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
