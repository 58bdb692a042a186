"""What `apply --confirm-within` does once the change is applied: wait until it is confirmed
(`bpfsync confirm` from any shell, Enter on this terminal, or a passing --probe) or reverted
(the deadline, ^C, and with --verify: the kernel no longer holding what was written, read
again every second and before a confirmation here), and say which. The guard process
(confirm/guard.py) reverts it too, should this process die."""

from __future__ import annotations

import argparse
import select
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from reconciler import engine, render
from reconciler.cli.common import EXIT_ERROR, EXIT_OK, EXIT_REVERTED, pin_root_named
from reconciler.confirm import guard, store
from reconciler.confirm.record import CONFIRMED, REVERTED, Pending
from reconciler.confirm.revert import Reverted, run_directory

POLL = 0.2
PROBE_EVERY = 1.0  # seconds between probe runs
PROBE_TIMEOUT = 30.0
VERIFY_EVERY = 1.0  # seconds between --verify's readings of what the apply wrote


def confirm_for(args: argparse.Namespace, root: Path) -> engine.Confirm | None:
    """What apply_state is given for --confirm-within (None without it): the guard that
    reverts should this process die is started before anything is executed."""
    if args.confirm_within is None:
        return None
    return engine.Confirm(args.confirm_within, lambda record: guard.spawn(root, record.id))


def confirm_command(args: argparse.Namespace, root: Path) -> str:
    named = f" --pin-root {shlex.quote(str(root))}" if pin_root_named(args) else ""
    return f"bpfsync{named} confirm"


def sentence(outcome: str) -> str:
    """A record's outcome ("reverted: ...", "confirmed by ...") as a line of its own."""
    return f"{outcome[:1].upper()}{outcome[1:]}."


def print_reverted(r: Reverted) -> None:
    print(sentence(r.record.outcome))
    if not r.plan.in_sync:
        print(render.plan_text(r.plan, "the state before the apply"))
    for line in r.changed:
        print(f"  ! {line}")


def wait(args: argparse.Namespace, root: Path, record: Pending) -> int:
    assert record.deadline is not None
    at = datetime.fromtimestamp(record.deadline).strftime("%H:%M:%S")
    tty = sys.stdin.isatty()
    how = [f"`{confirm_command(args, root)}` from any shell"]
    if tty:
        how.append("Enter here")
    if args.probe:
        how.append("a passing --probe")
    print(f"Awaiting confirmation: {' or '.join(how)} keeps this change; otherwise it "
          f"reverts at {at} ({record.within:g} s).", flush=True)
    next_probe, last_probe, next_check = 0.0, None, 0.0
    follower = store.Follower(run_directory(root))
    try:
        while True:
            now = follower.read()
            if now is None or now.id != record.id:
                print("bpfsync: the pending-change record is gone; the change stays as it is",
                      file=sys.stderr)
                return EXIT_ERROR
            if now.state in (CONFIRMED, REVERTED):
                print(sentence(now.outcome))
                return EXIT_OK if now.state == CONFIRMED else EXIT_REVERTED
            if time.time() >= record.deadline:
                return _revert(root, record, f"not confirmed within {record.within:g} s")
            if args.verify and time.monotonic() >= next_check:
                differences = engine.pending_differences(root, record)
                if differences:
                    return _revert(root, record, "it did not verify: " + differences[0] + (
                        f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""))
                next_check = time.monotonic() + VERIFY_EVERY
            if args.probe and time.monotonic() >= next_probe:
                code = _probe(args.probe, record.deadline - time.time())
                if code == 0:
                    return _confirm(root, "--probe", record, args.verify)
                if code != last_probe:
                    print(f"probe: exit {code}; retrying until {at}", file=sys.stderr)
                    last_probe = code
                next_probe = time.monotonic() + PROBE_EVERY
            if tty and select.select([sys.stdin], [], [], POLL)[0]:
                if sys.stdin.readline() == "":
                    tty = False  # end of input: only the other ways remain
                else:
                    return _confirm(root, "Enter on the terminal", record, args.verify)
            elif not tty:
                time.sleep(POLL)
    except KeyboardInterrupt:
        return _revert(root, record, "interrupted (^C) before it was confirmed")


def _probe(command: str, left: float) -> int:
    try:
        return subprocess.run(command, shell=True, stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              timeout=max(0.1, min(left, PROBE_TIMEOUT))).returncode
    except subprocess.TimeoutExpired:
        return 124


def _confirm(root: Path, how: str, record: Pending, verify: bool) -> int:
    differences = engine.pending_differences(root, record) if verify else []
    if differences:  # --verify: nothing is confirmed that is not there any more
        return _revert(root, record, f"it did not verify: {differences[0]}")
    out = engine.confirm_pending(root, how)
    if isinstance(out, Reverted):
        print_reverted(out)
        return EXIT_REVERTED
    print(sentence(out.outcome))
    return EXIT_OK


def _revert(root: Path, record: Pending, why: str) -> int:
    reverted = engine.revert_pending(root, why, only=record.id)
    if reverted is None:  # settled meanwhile by someone else: say how
        now = engine.read_pending(root)
        if now is None or now.id != record.id:
            print("bpfsync: the pending-change record is gone", file=sys.stderr)
            return EXIT_ERROR
        print(sentence(now.outcome))
        return EXIT_OK if now.state == CONFIRMED else EXIT_REVERTED
    print_reverted(reverted)
    return EXIT_REVERTED
