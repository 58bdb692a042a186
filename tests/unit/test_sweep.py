"""The kernel suite's start-of-session sweep (tests/kernel/owned.py) removes the state
directories of killed sessions, found by the PID in their names, and nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.kernel import owned


def test_only_the_state_directories_of_dead_sessions_are_swept(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = tmp_path / f"{owned.STATE_PREFIX}{gone.stdout.strip()}-abc"
    live = tmp_path / f"{owned.STATE_PREFIX}{os.getppid()}-def"  # pytest's parent runs
    mine = tmp_path / f"{owned.STATE_PREFIX}{os.getpid()}-ghi"
    unnamed = tmp_path / f"{owned.STATE_PREFIX}xyz"  # an older layout: whose, unknown
    other = tmp_path / "bpfsync-bench-state-123-x"
    for d in (dead, live, mine, unnamed, other):
        d.mkdir()
    assert owned.dead_sessions_state_dirs(tmp_path) == [dead]


def test_this_session_names_its_state_directory_after_itself() -> None:
    name = Path(os.environ["BPFSYNC_STATE_DIR"]).name
    assert name.startswith(f"{owned.STATE_PREFIX}{os.getpid()}-")
