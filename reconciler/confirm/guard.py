"""The process that reverts a change nobody confirmed: `apply --confirm-within` starts it
before executing anything, in a session of its own, so that neither the apply's terminal
(a dropped SSH connection hangs it up) nor a SIGKILL of the apply stops the revert.

It watches the record (re-read only when the file changes) and, once the record is due
(confirm/revert.due: the deadline passed, or the apply died while executing), reverts it
under the pin root's lock and exits. It exits at once when the record is confirmed,
reverted by someone else, or replaced. Should the guard die too, the next apply, the
daemon's next reconcile or `bpfsync confirm` reverts the change once it is due.

    python -m reconciler.confirm.guard PIN_ROOT RECORD_ID
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from reconciler.confirm import store
from reconciler.confirm.record import Process
from reconciler.confirm.revert import applier_reverts, due, run_directory
from reconciler.core.errors import KernelStateError

log = logging.getLogger("bpfsync.confirm")
POLL = 0.1  # seconds between looks at the record: a revert starts this late at most
APPEAR = 120.0  # seconds the applier has to write the record before the guard gives up
LOG = "confirm.log"  # in the run directory: what guards did


def spawn(pin_root: Path, record_id: str) -> Process | None:
    """Start the guard of record_id; the process it is (None if it ended at once)."""
    directory = run_directory(pin_root)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        p = subprocess.Popen([sys.executable, "-m", "reconciler.confirm.guard", str(pin_root),
                              record_id], stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                             start_new_session=True, close_fds=True)
    finally:
        os.close(fd)
    p.returncode = 0  # never waited for: it outlives the apply by design
    return store.process(p.pid)


def watch(pin_root: Path, record_id: str) -> int:
    from reconciler import engine

    follower = store.Follower(run_directory(pin_root))
    give_up = time.monotonic() + APPEAR
    while True:
        try:
            record = follower.read()
        except KernelStateError as exc:
            log.error("%s", exc)
            return 1
        if record is None or record.id != record_id:  # not written yet (an older one)
            if time.monotonic() > give_up:
                return 0  # never written: the apply ended before it executed anything
        elif not record.pending:
            return 0
        elif (why := due(record, time.time())) is not None and not applier_reverts(record, time.time()):
            try:
                reverted = engine.revert_pending(pin_root, why, only=record_id, wait=60)
            except KernelStateError as exc:
                log.error("reverting %s failed: %s", record_id, exc)
                return 1
            if reverted is not None:
                log.warning("reverted the change applied from %s: %s", record.directory,
                            reverted.record.outcome)
            return 0
        time.sleep(POLL)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    return watch(Path(argv[0]), argv[1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
