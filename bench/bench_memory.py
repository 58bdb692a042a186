"""Where a large apply and diff hold their memory: the RSS of the bpfsync process at the end of
each phase its progress names (loading, checking, compiling, comparing, writing, reading
back), and the peak within it, for a cold apply and then a no-op diff of N Services.

    .venv/bin/python bench/bench_memory.py [--sizes 200000,1000000]

The command runs in a process of its own (the probe: this file with --probe), as the command
line runs it, with a Progress that records phases in place of the terminal's; a thread
samples RSS every 20 ms. The loader's worker process is not counted here (bench_apply.py
reports the whole tree).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.core.progress import Progress  # noqa: E402


def _rss_mib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 2**20


class PhaseRss(Progress):
    """Each phase's name, seconds, peak and end RSS (MiB), as the command reports phases."""

    def __init__(self) -> None:
        self.rows: list[dict[str, object]] = []
        self.name, self.started, self.peak = "starting", time.perf_counter(), _rss_mib()
        self.done = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, _rss_mib())

    def phase(self, what: str, total: int | None = None) -> None:
        self._close()
        self.name = what

    def end(self) -> None:
        self._close()
        self.name = "between phases"

    def _close(self) -> None:
        now, rss = time.perf_counter(), _rss_mib()
        self.rows.append({"phase": self.name, "seconds": round(now - self.started, 2),
                          "peak": max(self.peak, rss), "end": rss})
        self.started, self.peak = now, rss


def probe(argv: list[str]) -> None:
    """Run one bpfsync command line in this process; print its phases as JSON on stdout."""
    recorder = PhaseRss()  # (before the imports: its first row is theirs)
    from reconciler.cli import apply, diff
    from reconciler.cli.main import main as command_line

    apply.progress_for = diff.progress_for = lambda stream=sys.stderr: recorder
    code = 0
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # its own output
        try:
            command_line(argv)
        except SystemExit as exc:
            code = int(exc.code or 0)
    recorder.end()
    recorder.done.set()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({"code": code, "maxrss": peak, "phases": recorder.rows}))


def measure(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "--probe", "--", *argv], env=env,
                         capture_output=True, text=True, timeout=3600, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"probe failed: {out.stderr[-2000:]}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        raise SystemExit(f"{argv[2]} exited {result['code']}: {out.stderr[-2000:]}")
    return result


def report(n: int, runs: dict[str, dict[str, object]]) -> str:
    lines = [f"{n:,} Services", "", "| command | phase | seconds | peak MiB | end MiB |",
             "|---|---|---:|---:|---:|"]
    for command, result in runs.items():
        for row in result["phases"]:  # type: ignore[attr-defined]
            phase = {"starting": "starting (imports, arguments)",
                     "between phases": "no phase (output, history)"}.get(row["phase"], row["phase"])
            lines.append(f"| {command} | {phase} | {row['seconds']} | {row['peak']:,} "
                         f"| {row['end']:,} |")
        lines.append(f"| {command} | **peak of the process** | | **{result['maxrss']:,}** | |")
    return "\n".join(lines)


def main() -> None:
    from bench.bench_apply import capacity_for, capacity_text
    from tests.kernel import owned
    from tests.kernel.desired import KEY_ENV, write_services

    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="200000")
    p.add_argument("--smoke", action="store_true", help="200 Services (CI: every path, seconds)")
    args = p.parse_args()
    if args.smoke:
        args.sizes = "200"
    owned.private_state_dir()  # the history of its pin roots goes with it
    with tempfile.TemporaryDirectory(prefix="bpfsync-bench-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            directory = write_services(Path(tmp) / f"d{n}", n)
            pin = Path(f"/sys/fs/bpf/bpfsync-bench-{os.getpid()}-{n}")
            env = {**os.environ, **KEY_ENV,
                   "BPFSYNC_CAPACITY": capacity_text(capacity_for(n, {}))}
            base = ["--pin-root", str(pin)]
            try:
                runs = {"cold apply": measure([*base, "apply", "-q", str(directory)], env),
                        "no-op diff": measure([*base, "diff", str(directory)], env)}
            finally:
                subprocess.run([sys.executable, "-m", "reconciler", *base, "destroy", "--yes"],
                               env=env, capture_output=True, cwd=ROOT, check=False)
                shutil.rmtree(pin, ignore_errors=True)
            print(report(n, runs))
            print()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--probe"]:
        probe(sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:])
    else:
        main()
