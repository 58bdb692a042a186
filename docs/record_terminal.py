"""Record what an operator sees on a terminal — a 100,000-service apply, a diff with
nothing to do, a destroy — and write it as plain text to docs/terminal-100k.txt.

Each command runs on a pseudo-terminal (script(1)), so the progress line on stderr is
drawn as it is for a person; in the text, its states are lines marked ⟳ (the first and last
state of each phase; on the terminal they are one line, rewritten in place and erased when
the phase ends). Root, BCC and bpffs needed; everything goes into a pin root of its own.

    .venv/bin/python docs/record_terminal.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHOWN_PIN_ROOT = "/sys/fs/bpf/bpfsync-demo"


def _lines(raw: str, pin: str) -> list[str]:
    out: list[str] = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        parts = [re.sub(r"\x1b\[K", "", p) for p in line.split("\r")]
        phases: list[list[str]] = []  # [phase, first state, last state]
        for state in (p for p in parts[:-1] if p.strip()):
            phase = state.split(":")[0].split(",")[0]
            if phases and phases[-1][0] == phase:
                phases[-1][2] = state
            else:
                phases.append([phase, state, state])
        out += [f"  ⟳ {first}" + (f"  …  {last}" if last != first else "")
                for _, first, last in phases]
        if parts[-1].strip() or not phases:
            out.append(parts[-1].replace(pin, SHOWN_PIN_ROOT))
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from tests.kernel.desired import write_services

    directory = Path("/tmp/bpfsync-record-100k")
    if not directory.exists():
        write_services(directory, 100_000)
    pin = f"/sys/fs/bpf/bpfsync-test-record-{os.getpid()}"
    env = {**os.environ, "BPFSYNC_TEST_KEY": "kernel-test-key!", "TERM": "xterm"}
    bpfsync = ROOT / ".venv" / "bin" / "bpfsync"
    out: list[str] = []
    for args in (f"apply {directory}", f"diff {directory}", "destroy --yes"):
        cmd = f"{bpfsync} --pin-root {pin} {args}"
        raw = subprocess.run(["script", "-q", "-e", "-c", cmd, "/dev/null"], env=env,
                             capture_output=True, check=False).stdout.decode()
        out.append(f"$ bpfsync --pin-root {SHOWN_PIN_ROOT} {args}")
        out += _lines(raw, pin)
        out.append("")
    (ROOT / "docs" / "terminal-100k.txt").write_text(
        "# What an operator sees on a terminal: a 100,000-service apply, then diff and destroy\n"
        "# (recorded by docs/record_terminal.py; lines marked ⟳ are the progress line on\n"
        "# stderr, rewritten in place and erased when its phase ends: its first and last\n"
        "# state are shown).\n\n" + "\n".join(out))


if __name__ == "__main__":
    main()
